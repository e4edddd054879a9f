package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
)

// MaxMessageLen bounds one control message.
const MaxMessageLen = 64 << 10

// Message types on the control stream.
const (
	MsgHello   = "hello"   // agent -> gateway, first message
	MsgWelcome = "welcome" // gateway -> agent, answer to hello
	MsgDrain   = "drain"   // agent -> gateway: send no new streams, I am stopping
	// MsgGateways is gateway -> agent, after the welcome, to an agent whose
	// hello set Cluster: the cluster's live gateways changed; the full new
	// list is in Message.Gateways.
	MsgGateways = "gateways"
)

// Message is one control message: a type and the body for that type.
type Message struct {
	Type    string   `json:"type"`
	Hello   *Hello   `json:"hello,omitempty"`
	Welcome *Welcome `json:"welcome,omitempty"`
	// Gateways is the body of MsgGateways: the cluster's live gateways,
	// the sender included. An empty list carries no news.
	Gateways []GatewayInfo `json:"gateways,omitempty"`
}

// GatewayInfo is one live gateway of a cluster, as agents see it.
type GatewayInfo struct {
	// ID names the gateway in the cluster: 1-MaxGatewayIDLen visible ASCII
	// characters (no space); Welcome.GatewayID of its sessions.
	ID string `json:"id"`
	// Addr is HOST:PORT agents dial for the tunnel (TLS on TCP, QUIC on
	// the UDP port of the same number).
	Addr string `json:"addr"`
	// Region is where the gateway runs, for logs; at most MaxRegionLen bytes.
	Region string `json:"region,omitempty"`
}

// Limits of a gateway list (Welcome.Gateways, Message.Gateways).
const (
	// MaxGateways bounds the entries of one list.
	MaxGateways = 64
	// MaxGatewayIDLen bounds GatewayInfo.ID.
	MaxGatewayIDLen = 64
	// MaxRegionLen bounds GatewayInfo.Region.
	MaxRegionLen = 64
	// maxGatewayHostLen bounds the host of GatewayInfo.Addr (a DNS name's length).
	maxGatewayHostLen = 253
)

// Hello is the agent's first message: who it is and what it serves.
type Hello struct {
	// Version is the control protocol version the agent speaks (ProtocolVersion).
	Version int `json:"version"`
	// Token authenticates a tenant; empty asks for an anonymous quick tunnel.
	Token string `json:"token,omitempty"`
	// AgentID identifies the agent process (random per start) in logs and status.
	AgentID string `json:"agent_id"`
	// AgentVersion is the agent's software version, for logs.
	AgentVersion string `json:"agent_version,omitempty"`
	// Conn numbers this connection among the agent's connections to one
	// gateway (0 to N-1): sessions with the same agent id and another Conn
	// are siblings serving side by side; the same Conn again replaces a
	// stale session.
	Conn int `json:"conn,omitempty"`
	// Transport is "tcp" or "quic", for logs and status.
	Transport string `json:"transport,omitempty"`
	// Datagrams says the agent takes and sends the datagrams of udp
	// streams as QUIC datagrams too (spec.md section 5.4).
	Datagrams bool `json:"datagrams,omitempty"`
	// Cluster says the agent follows the cluster: the gateway may send it
	// MsgGateways after the welcome (spec.md section 4.2).
	Cluster  bool          `json:"cluster,omitempty"`
	Services []ServiceSpec `json:"services"`
}

// ServiceSpec asks for one service.
type ServiceSpec struct {
	// Name is the wanted service name; empty asks for a random free one.
	Name string `json:"name,omitempty"`
	// Protocol is "http", "h2c", "tls", "tcp" or "udp".
	Protocol string `json:"protocol"`
	// Weight is this agent's load-balancing weight for the service; 0 means 1.
	Weight int `json:"weight,omitempty"`
	// Port is the public port wanted for a tcp or udp service; 0 lets the
	// gateway pick one (or keep the one the service holds).
	Port int `json:"port,omitempty"`
	// ProxyProtocol, 1 or 2, asks the gateway to send the backend a PROXY
	// header of that version first on each connection; 0 leaves the
	// service's own setting.
	ProxyProtocol int `json:"proxy_protocol,omitempty"`
}

// Welcome answers Hello.
type Welcome struct {
	// Error, when set, refuses the whole session (e.g. a bad token).
	Error string `json:"error,omitempty"`
	// Permanent says retrying with the same Hello cannot succeed.
	Permanent bool `json:"permanent,omitempty"`
	// GatewayID names the gateway, for logs.
	GatewayID string `json:"gateway_id,omitempty"`
	// Datagrams says QUIC datagrams are on for this session's udp streams
	// (the hello asked for them and the session is over QUIC).
	Datagrams bool `json:"datagrams,omitempty"`
	// Services answers each ServiceSpec, in order.
	Services []ServiceGrant `json:"services,omitempty"`
	// Gateways lists the cluster's live gateways, this one (GatewayID)
	// included, when the gateway is part of a cluster; empty otherwise.
	Gateways []GatewayInfo `json:"gateways,omitempty"`
}

// ServiceGrant is the gateway's answer for one ServiceSpec.
type ServiceGrant struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	// URL is the public address of the service: a URL, or HOST:PORT for
	// tcp and udp.
	URL string `json:"url,omitempty"`
	// Port is the public port of a tcp or udp service.
	Port int `json:"port,omitempty"`
	// Error is set when this service was refused.
	Error     string `json:"error,omitempty"`
	Permanent bool   `json:"permanent,omitempty"`
}

// maxHelloServices bounds the services one hello may ask for.
const maxHelloServices = 256

// ErrMessage wraps every error about a malformed control message, whether
// read or about to be written.
var ErrMessage = errors.New("bad control message")

// WriteMessage writes m as a 4-byte big-endian length and a JSON body, in
// one Write call. It refuses a message that ReadMessage would reject.
func WriteMessage(w io.Writer, m *Message) error {
	if err := m.check(); err != nil {
		return fmt.Errorf("encode control message: %w", err)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode control message: %w", err)
	}
	if len(body) > MaxMessageLen {
		return fmt.Errorf("encode control message: %w: %d bytes, at most %d", ErrMessage, len(body), MaxMessageLen)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err = w.Write(buf)
	return err
}

// ReadMessage reads one message written by WriteMessage. At a clean end of
// the stream (no byte of a next message) it returns io.EOF itself; a
// malformed or truncated message gives an error wrapping ErrMessage.
func ReadMessage(r io.Reader) (*Message, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: length: %w", ErrMessage, err)
		}
		return nil, err // io.EOF stays recognisable
	}
	n := binary.BigEndian.Uint32(l[:])
	if n == 0 || n > MaxMessageLen {
		return nil, fmt.Errorf("%w: length %d, want 1-%d", ErrMessage, n, MaxMessageLen)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	m := new(Message)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

// check says whether m is a message of a known type with the body it needs.
func (m *Message) check() error {
	if m == nil {
		return fmt.Errorf("%w: no message", ErrMessage)
	}
	switch m.Type {
	case MsgHello:
		if m.Hello == nil {
			return fmt.Errorf("%w: hello without body", ErrMessage)
		}
		if len(m.Hello.Services) > maxHelloServices {
			return fmt.Errorf("%w: %d services in hello, at most %d", ErrMessage, len(m.Hello.Services), maxHelloServices)
		}
	case MsgWelcome:
		if m.Welcome == nil {
			return fmt.Errorf("%w: welcome without body", ErrMessage)
		}
		if err := checkGateways(m.Welcome.Gateways); err != nil {
			return fmt.Errorf("%w: welcome: %w", ErrMessage, err)
		}
	case MsgGateways:
		if err := checkGateways(m.Gateways); err != nil {
			return fmt.Errorf("%w: gateways: %w", ErrMessage, err)
		}
	case MsgDrain:
	default:
		return fmt.Errorf("%w: unknown type %q", ErrMessage, m.Type)
	}
	return nil
}

// checkGateways says whether list is a valid gateway list: at most
// MaxGateways entries, each id given once, each entry valid.
func checkGateways(list []GatewayInfo) error {
	if len(list) > MaxGateways {
		return fmt.Errorf("%d gateways, at most %d", len(list), MaxGateways)
	}
	for i := range list {
		g := &list[i]
		if err := g.check(); err != nil {
			return fmt.Errorf("gateway %d: %w", i, err)
		}
		for j := range i {
			if list[j].ID == g.ID {
				return fmt.Errorf("gateway id %q listed twice", g.ID)
			}
		}
	}
	return nil
}

func (g *GatewayInfo) check() error {
	if len(g.ID) == 0 || len(g.ID) > MaxGatewayIDLen {
		return fmt.Errorf("id of %d bytes, want 1-%d", len(g.ID), MaxGatewayIDLen)
	}
	for i := 0; i < len(g.ID); i++ {
		if c := g.ID[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("id %q: only visible ASCII characters are allowed", g.ID)
		}
	}
	host, port, err := net.SplitHostPort(g.Addr)
	if err != nil || host == "" || len(host) > maxGatewayHostLen {
		return fmt.Errorf("addr %q is not HOST:PORT (a host of 1-%d bytes)", g.Addr, maxGatewayHostLen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return fmt.Errorf("addr %q: port %q, want 1-65535", g.Addr, port)
	}
	if len(g.Region) > MaxRegionLen {
		return fmt.Errorf("region of %d bytes, at most %d", len(g.Region), MaxRegionLen)
	}
	return nil
}
