package proxyproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"

	pp "github.com/pires/go-proxyproto"
)

func tcp(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

// parse reads b back with go-proxyproto's reader and checks it is all header.
func parse(t *testing.T, b []byte) *pp.Header {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(b))
	h, err := pp.Read(r)
	if err != nil {
		t.Fatalf("pp.Read(%q): %v", b, err)
	}
	if r.Buffered() != 0 {
		t.Fatalf("%d bytes left after the header", r.Buffered())
	}
	return h
}

func unmapped(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := addrPort(a)
	if err != nil {
		t.Fatalf("address %v: %v", a, err)
	}
	return ap
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		v        Version
		src, dst string
		proto    pp.AddressFamilyAndProtocol
		v1Prefix string
	}{
		{"v1 ipv4", V1, "203.0.113.7:4711", "198.51.100.1:443", pp.TCPv4, "PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n"},
		{"v1 ipv6", V1, "[2001:db8::7]:4711", "[2001:db8::1]:443", pp.TCPv6, "PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n"},
		{"v1 mixed", V1, "203.0.113.7:4711", "[2001:db8::1]:443", pp.TCPv6, "PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 4711 443\r\n"},
		{"v1 mapped ipv4", V1, "[::ffff:203.0.113.7]:1", "198.51.100.1:2", pp.TCPv4, "PROXY TCP4 203.0.113.7 198.51.100.1 1 2\r\n"},
		{"v2 ipv4", V2, "203.0.113.7:4711", "198.51.100.1:443", pp.TCPv4, ""},
		{"v2 ipv6", V2, "[2001:db8::7]:4711", "[2001:db8::1]:443", pp.TCPv6, ""},
		{"v2 mixed", V2, "[2001:db8::7]:4711", "198.51.100.1:443", pp.TCPv6, ""},
		{"v2 zone dropped", V2, "[fe80::1%eth0]:5", "[fe80::2%eth0]:6", pp.TCPv6, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Header(tc.v, tcp(tc.src), tcp(tc.dst))
			if err != nil {
				t.Fatal(err)
			}
			if tc.v1Prefix != "" && string(b) != tc.v1Prefix {
				t.Errorf("header %q, want %q", b, tc.v1Prefix)
			}
			h := parse(t, b)
			if h.Version != byte(tc.v) || h.Command != pp.PROXY || h.TransportProtocol != tc.proto {
				t.Errorf("version %d command %v transport %v, want %d PROXY %v", h.Version, h.Command, h.TransportProtocol, tc.v, tc.proto)
			}
			src, dst, ok := h.TCPAddrs()
			if !ok {
				t.Fatalf("not TCP addresses: %v %v", h.SourceAddr, h.DestinationAddr)
			}
			want := func(s string) netip.AddrPort {
				ap := netip.MustParseAddrPort(s)
				return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
			}
			if got := unmapped(t, src); got != want(tc.src) {
				t.Errorf("source %v, want %v", got, want(tc.src))
			}
			if got := unmapped(t, dst); got != want(tc.dst) {
				t.Errorf("destination %v, want %v", got, want(tc.dst))
			}
		})
	}
}

func TestHeaderUDPRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		src, dst string
		proto    pp.AddressFamilyAndProtocol
	}{
		{"203.0.113.7:53", "198.51.100.1:5353", pp.UDPv4},
		{"[2001:db8::7]:53", "[2001:db8::1]:5353", pp.UDPv6},
		{"203.0.113.7:53", "[2001:db8::1]:5353", pp.UDPv6},
	} {
		src := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.src))
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.dst))
		b, err := HeaderUDP(src, dst)
		if err != nil {
			t.Fatal(err)
		}
		h, payload, err := pp.ParseUDPDatagram(append(b, "query"...))
		if err != nil {
			t.Fatalf("%s -> %s: %v", tc.src, tc.dst, err)
		}
		if string(payload) != "query" || h.Version != 2 || h.TransportProtocol != tc.proto {
			t.Errorf("%s -> %s: payload %q version %d transport %v", tc.src, tc.dst, payload, h.Version, h.TransportProtocol)
		}
		hs, hd, ok := h.UDPAddrs()
		if !ok || unmapped(t, hs) != unmapped(t, src) || unmapped(t, hd) != unmapped(t, dst) {
			t.Errorf("%s -> %s: parsed %v -> %v", tc.src, tc.dst, h.SourceAddr, h.DestinationAddr)
		}
	}
}

// strAddr is a net.Addr of another type than TCPAddr.
type strAddr string

func (a strAddr) Network() string { return "test" }
func (a strAddr) String() string  { return string(a) }

func TestHeaderAddresses(t *testing.T) {
	good := tcp("192.0.2.1:80")
	for _, tc := range []struct {
		name     string
		v        Version
		src, dst net.Addr
		ok       bool
	}{
		{"other addr type", V1, strAddr("192.0.2.9:1234"), good, true},
		{"udp addr for tcp", V2, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 1}, good, true},
		{"version 0", 0, good, good, false},
		{"version 3", 3, good, good, false},
		{"nil source", V1, nil, good, false},
		{"typed nil destination", V2, good, (*net.TCPAddr)(nil), false},
		{"no ip", V2, &net.TCPAddr{Port: 80}, good, false},
		{"unix", V2, &net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, good, false},
		{"hostname", V1, strAddr("example.com:80"), good, false},
	} {
		_, err := Header(tc.v, tc.src, tc.dst)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, err := HeaderUDP(nil, good); err == nil {
		t.Error("HeaderUDP with nil source: no error")
	}
}

// countWriter records its Write calls and accepts at most limit bytes each.
type countWriter struct {
	writes int
	buf    bytes.Buffer
	limit  int
}

func (w *countWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.limit > 0 && len(b) > w.limit {
		b = b[:w.limit]
	}
	return w.buf.Write(b)
}

func TestWriteHeader(t *testing.T) {
	for _, v := range []Version{V1, V2} {
		var w countWriter
		if err := WriteHeader(&w, v, tcp("203.0.113.7:4711"), tcp("[2001:db8::1]:443")); err != nil {
			t.Fatal(err)
		}
		if w.writes != 1 {
			t.Errorf("v%d: %d writes, want 1", v, w.writes)
		}
		if h := parse(t, w.buf.Bytes()); h.Version != byte(v) {
			t.Errorf("v%d: wrote version %d", v, h.Version)
		}
	}
	w := countWriter{limit: 3}
	if err := WriteHeader(&w, V2, tcp("203.0.113.7:4711"), tcp("198.51.100.1:443")); !errors.Is(err, io.ErrShortWrite) {
		t.Errorf("short write: err %v, want io.ErrShortWrite", err)
	}
	if err := WriteHeader(&w, 7, tcp("203.0.113.7:4711"), tcp("198.51.100.1:443")); err == nil {
		t.Error("version 7: no error")
	}
}
