package proxyproto

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// peerConn gives a pipe the socket addresses of a trusted TCP peer.
type peerConn struct {
	net.Conn
	remote, local net.Addr
}

func (c peerConn) RemoteAddr() net.Addr { return c.remote }
func (c peerConn) LocalAddr() net.Addr  { return c.local }

// FuzzInbound feeds arbitrary bytes as the start of a trusted connection
// through the Listener's header path: it must never panic, and either fail
// or yield a connection whose RemoteAddr is the header's TCP source or, for
// headers without an address, the real peer.
func FuzzInbound(f *testing.F) {
	for _, seed := range []struct {
		v        Version
		src, dst string
	}{
		{V1, "203.0.113.7:4711", "198.51.100.1:443"},
		{V1, "[2001:db8::7]:4711", "[2001:db8::1]:443"},
		{V2, "203.0.113.7:4711", "198.51.100.1:443"},
		{V2, "[2001:db8::7]:4711", "[2001:db8::1]:443"},
	} {
		b, err := Header(seed.v, tcp(seed.src), tcp(seed.dst))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(b, "GET / HTTP/1.1\r\n\r\n"...))
	}
	udp, _ := HeaderUDP(tcp("203.0.113.7:53"), tcp("198.51.100.1:53"))
	local, _ := (&pp.Header{Version: 2, Command: pp.LOCAL}).Format()
	for _, s := range [][]byte{udp, local, []byte("PROXY UNKNOWN\r\n"), []byte("PROXY TCP4 1.2.3.4"), []byte("\x16\x03\x01"), nil} {
		f.Add(s)
	}

	peer := tcp("192.0.2.1:40000")
	l := &Listener{
		policy:  trustPolicy([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}),
		timeout: time.Second,
		ctx:     context.Background(),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, cli := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			cli.Write(data) // ends with an error once srv is closed
			cli.Close()
		}()
		defer func() { srv.Close(); <-done }()

		conn, trusted := l.wrap(peerConn{srv, peer, tcp("192.0.2.2:443")})
		if !trusted {
			t.Fatal("trusted peer not trusted")
		}
		if err := l.readHeader(conn); err != nil {
			return
		}
		h := conn.(*pp.Conn).ProxyHeader()
		if h == nil {
			t.Fatal("no error and no header")
		}
		want := net.Addr(peer)
		if h.Command == pp.PROXY && (h.TransportProtocol == pp.TCPv4 || h.TransportProtocol == pp.TCPv6) {
			want = h.SourceAddr
		} else if err := validate(h); err != nil {
			t.Fatalf("header %v accepted: %v", h, err)
		}
		ra := conn.RemoteAddr()
		if _, ok := ra.(*net.TCPAddr); !ok || ra.String() != want.String() {
			t.Fatalf("RemoteAddr %v (%T), want %v", ra, ra, want)
		}
	})
}
