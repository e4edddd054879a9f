package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderVersion is the first byte of every stream header this package writes.
const HeaderVersion = 1

// Kind says what a data stream carries.
type Kind uint8

// Stream kinds.
const (
	// KindHTTP carries cleartext HTTP/1.1 from the gateway's reverse proxy.
	KindHTTP Kind = 1
	// KindH2C carries cleartext HTTP/2 (prior knowledge) from the reverse proxy.
	KindH2C Kind = 2
	// KindTLS carries the client's raw TLS bytes (passthrough), ClientHello first.
	KindTLS Kind = 3
	// KindTCP carries raw TCP bytes.
	KindTCP Kind = 4
	// KindUDP carries framed datagrams.
	KindUDP Kind = 5
	// KindProbe asks the agent to dial the service's local target and answer
	// one byte: ProbeOK when it connected, ProbeFailed when not (a health check).
	KindProbe Kind = 6

	kindMax = KindProbe
)

// Answers to a KindProbe stream.
const (
	ProbeOK     byte = 0
	ProbeFailed byte = 1
)

func (k Kind) String() string {
	switch k {
	case KindHTTP:
		return "http"
	case KindH2C:
		return "h2c"
	case KindTLS:
		return "tls"
	case KindTCP:
		return "tcp"
	case KindUDP:
		return "udp"
	case KindProbe:
		return "probe"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Header starts every data stream the gateway opens to an agent.
type Header struct {
	Kind Kind
	// Service is the service name the stream is for (a DNS label).
	Service string
	// Client is the original client's address, "ip:port".
	Client string
	// Host is the TLS SNI or HTTP Host the client asked for; may be empty.
	Host string
}

// Limits of the header's fields.
const (
	maxServiceLen = 63
	maxClientLen  = 64
	maxHostLen    = 253
	maxExtLen     = 1024
	// MaxHeaderLen is the largest header a reader accepts.
	MaxHeaderLen = 3 + 1 + maxServiceLen + 1 + maxClientLen + 1 + maxHostLen + 2 + maxExtLen
)

// ErrHeader wraps every header decoding error.
var ErrHeader = errors.New("bad stream header")

// AppendHeader appends the encoding of h to b (see spec.md).
func AppendHeader(b []byte, h *Header) ([]byte, error) {
	if h.Kind < KindHTTP || h.Kind > kindMax {
		return b, fmt.Errorf("%w: unknown kind %d", ErrHeader, h.Kind)
	}
	if len(h.Service) == 0 || len(h.Service) > maxServiceLen {
		return b, fmt.Errorf("%w: service name length %d, want 1-%d", ErrHeader, len(h.Service), maxServiceLen)
	}
	if len(h.Client) > maxClientLen {
		return b, fmt.Errorf("%w: client address length %d, want at most %d", ErrHeader, len(h.Client), maxClientLen)
	}
	if len(h.Host) > maxHostLen {
		return b, fmt.Errorf("%w: host length %d, want at most %d", ErrHeader, len(h.Host), maxHostLen)
	}
	b = append(b, HeaderVersion, byte(h.Kind), 0)
	b = append(b, byte(len(h.Service)))
	b = append(b, h.Service...)
	b = append(b, byte(len(h.Client)))
	b = append(b, h.Client...)
	b = append(b, byte(len(h.Host)))
	b = append(b, h.Host...)
	b = append(b, 0, 0) // no extensions
	return b, nil
}

// WriteHeader writes h to w in one Write call.
func WriteHeader(w io.Writer, h *Header) error {
	var arr [3 + 1 + maxServiceLen + 1 + maxClientLen + 1 + maxHostLen + 2]byte
	b, err := AppendHeader(arr[:0], h)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadHeader reads one header from r, reading no byte past it.
func ReadHeader(r io.Reader) (*Header, error) {
	var fixed [3]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHeader, err)
	}
	if fixed[0] != HeaderVersion {
		return nil, fmt.Errorf("%w: version %d, this agent speaks %d", ErrHeader, fixed[0], HeaderVersion)
	}
	h := &Header{Kind: Kind(fixed[1])}
	if h.Kind < KindHTTP || h.Kind > kindMax {
		return nil, fmt.Errorf("%w: unknown kind %d", ErrHeader, fixed[1])
	}
	// fixed[2] holds flags; version 1 defines none and readers ignore them.
	var err error
	if h.Service, err = readString(r, 1, maxServiceLen, "service"); err != nil {
		return nil, err
	}
	if h.Client, err = readString(r, 0, maxClientLen, "client"); err != nil {
		return nil, err
	}
	if h.Host, err = readString(r, 0, maxHostLen, "host"); err != nil {
		return nil, err
	}
	var extLen [2]byte
	if _, err := io.ReadFull(r, extLen[:]); err != nil {
		return nil, fmt.Errorf("%w: extensions: %w", ErrHeader, err)
	}
	n := binary.BigEndian.Uint16(extLen[:])
	if n > maxExtLen {
		return nil, fmt.Errorf("%w: extensions length %d, at most %d", ErrHeader, n, maxExtLen)
	}
	if n > 0 {
		// Version 1 readers skip extensions they do not know.
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return nil, fmt.Errorf("%w: extensions: %w", ErrHeader, err)
		}
	}
	return h, nil
}

func readString(r io.Reader, minLen, maxLen int, field string) (string, error) {
	var l [1]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", fmt.Errorf("%w: %s length: %w", ErrHeader, field, err)
	}
	n := int(l[0])
	if n < minLen || n > maxLen {
		return "", fmt.Errorf("%w: %s length %d, want %d-%d", ErrHeader, field, n, minLen, maxLen)
	}
	if n == 0 {
		return "", nil
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrHeader, field, err)
	}
	return string(buf), nil
}
