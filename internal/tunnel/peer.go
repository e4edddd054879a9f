package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
)

// PeerALPN is the TLS application protocol of gateway-to-gateway (peer)
// sessions, on the same HTTPS port as agents (spec.md section 9): a
// gateway relays requests for names it holds no tunnel for to a gateway
// of its cluster that does.
const PeerALPN = "webgw-peer/1"

// PeerProtocolVersion is the version of the peer handshake in PeerHello.
const PeerProtocolVersion = 1

// MaxPeerMessageLen bounds one peer control message.
const MaxPeerMessageLen = 4 << 10

// MaxPeerIDLen bounds the gateway ids in a peer hello.
const MaxPeerIDLen = 64

// PeerMessage is one message on a peer session's control stream: a type
// (MsgHello or MsgWelcome) and the body for that type.
type PeerMessage struct {
	Type    string       `json:"type"`
	Hello   *PeerHello   `json:"hello,omitempty"`
	Welcome *PeerWelcome `json:"welcome,omitempty"`
}

// PeerHello is the dialling gateway's first message: who it is, whom it
// means to reach, and the proof that it belongs to the cluster.
type PeerHello struct {
	// Version is the peer protocol version the dialer speaks (PeerProtocolVersion).
	Version int `json:"version"`
	// From is the dialling gateway's id; To the id of the gateway it dialled.
	From string `json:"from"`
	To   string `json:"to"`
	// Token is PeerToken(cluster secret, From, To).
	Token string `json:"token"`
}

// PeerWelcome answers PeerHello.
type PeerWelcome struct {
	// Error, when set, refuses the session; the accepting gateway closes it.
	Error string `json:"error,omitempty"`
	// GatewayID names the accepting gateway, for logs.
	GatewayID string `json:"gateway_id,omitempty"`
}

// peerTokenLabel starts the MAC input, so the cluster secret's MACs for
// peer sessions can never be taken for MACs of anything else.
const peerTokenLabel = "webgw-peer"

// PeerToken is the token of a peer hello from gateway from to gateway to:
// HMAC-SHA256 keyed with the cluster secret over the label "webgw-peer",
// then from and to, each preceded by its length in one byte (so no two
// pairs of ids give the same input), as 64 lower-case hex digits. Ids are
// at most MaxPeerIDLen bytes.
func PeerToken(secret []byte, from, to string) string {
	m := hmac.New(sha256.New, secret)
	m.Write(peerTokenInput(from, to))
	return hex.EncodeToString(m.Sum(nil))
}

func peerTokenInput(from, to string) []byte {
	b := make([]byte, 0, len(peerTokenLabel)+2+len(from)+len(to))
	b = append(b, peerTokenLabel...)
	b = append(b, byte(len(from)))
	b = append(b, from...)
	b = append(b, byte(len(to)))
	return append(b, to...)
}

// CheckPeerToken reports whether token is PeerToken(secret, from, to), in
// time that does not depend on where a wrong token differs.
func CheckPeerToken(secret []byte, from, to, token string) bool {
	got, err := hex.DecodeString(token)
	if err != nil || len(from) > MaxPeerIDLen || len(to) > MaxPeerIDLen {
		return false
	}
	m := hmac.New(sha256.New, secret)
	m.Write(peerTokenInput(from, to))
	return hmac.Equal(got, m.Sum(nil))
}

// WritePeerMessage writes m as a 4-byte big-endian length and a JSON body,
// in one Write call. It refuses a message that ReadPeerMessage would reject.
func WritePeerMessage(w io.Writer, m *PeerMessage) error {
	if err := m.check(); err != nil {
		return fmt.Errorf("encode peer message: %w", err)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode peer message: %w", err)
	}
	if len(body) > MaxPeerMessageLen {
		return fmt.Errorf("encode peer message: %w: %d bytes, at most %d", ErrMessage, len(body), MaxPeerMessageLen)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err = w.Write(buf)
	return err
}

// ReadPeerMessage reads one message written by WritePeerMessage. At a clean
// end of the stream it returns io.EOF itself; a malformed or truncated
// message gives an error wrapping ErrMessage.
func ReadPeerMessage(r io.Reader) (*PeerMessage, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: length: %w", ErrMessage, err)
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n == 0 || n > MaxPeerMessageLen {
		return nil, fmt.Errorf("%w: peer message length %d, want 1-%d", ErrMessage, n, MaxPeerMessageLen)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	m := new(PeerMessage)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

// check says whether m is a peer message of a known type with the body it
// needs, ids of a valid length included.
func (m *PeerMessage) check() error {
	if m == nil {
		return fmt.Errorf("%w: no message", ErrMessage)
	}
	switch m.Type {
	case MsgHello:
		h := m.Hello
		if h == nil {
			return fmt.Errorf("%w: peer hello without body", ErrMessage)
		}
		for _, id := range []string{h.From, h.To} {
			if id == "" || len(id) > MaxPeerIDLen {
				return fmt.Errorf("%w: peer hello: gateway id of %d bytes, want 1-%d", ErrMessage, len(id), MaxPeerIDLen)
			}
		}
	case MsgWelcome:
		if m.Welcome == nil {
			return fmt.Errorf("%w: peer welcome without body", ErrMessage)
		}
	default:
		return fmt.Errorf("%w: unknown peer message type %q", ErrMessage, m.Type)
	}
	return nil
}
