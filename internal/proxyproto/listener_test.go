package proxyproto

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// Clients dial from 127.0.0.1 (trusted) or 127.0.0.2 (not trusted); Linux
// routes all of 127/8 to the loopback interface.
const (
	trustedIP   = "127.0.0.1"
	untrustedIP = "127.0.0.2"
)

func listen(t *testing.T, timeout time.Duration) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(ln, []netip.Prefix{netip.MustParsePrefix(trustedIP + "/32")}, timeout)
	t.Cleanup(func() { l.Close() })
	return l
}

func dial(t *testing.T, ln net.Listener, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		if from == untrustedIP {
			t.Skipf("cannot dial from %s: %v", from, err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// acceptAsync runs one Accept; the listener's cleanup Close ends it.
func acceptAsync(ln net.Listener) <-chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	return ch
}

func acceptWithin(t *testing.T, ln net.Listener, d time.Duration) net.Conn {
	t.Helper()
	return waitAccept(t, acceptAsync(ln), d)
}

func waitAccept(t *testing.T, ch <-chan accepted, d time.Duration) net.Conn {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("accept: %v", a.err)
		}
		t.Cleanup(func() { a.conn.Close() })
		return a.conn
	case <-time.After(d):
		t.Fatalf("no connection accepted within %v", d)
		return nil
	}
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed checks that the server closes c within d, without sending.
func expectClosed(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if n != 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read: %d bytes, %v; want the connection closed", n, err)
	}
}

func TestListenerTrustedHeader(t *testing.T) {
	for _, tc := range []struct {
		name     string
		v        Version
		src, dst string
	}{
		{"v1 ipv4", V1, "203.0.113.7:4711", "198.51.100.1:443"},
		{"v1 ipv6", V1, "[2001:db8::7]:4711", "[2001:db8::1]:443"},
		{"v2 ipv4", V2, "203.0.113.7:4711", "198.51.100.1:443"},
		{"v2 ipv6", V2, "[2001:db8::7]:4711", "[2001:db8::1]:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, 0)
			c := dial(t, ln, trustedIP)
			if err := WriteHeader(c, tc.v, tcp(tc.src), tcp(tc.dst)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			s := acceptWithin(t, ln, 5*time.Second)
			if got := s.RemoteAddr().String(); got != tc.src {
				t.Errorf("RemoteAddr %s, want %s", got, tc.src)
			}
			if got := s.LocalAddr().String(); got != tc.dst {
				t.Errorf("LocalAddr %s, want %s", got, tc.dst)
			}
			if got := readN(t, s, 5); string(got) != "hello" {
				t.Errorf("data %q, want hello", got)
			}
			if _, err := s.Write([]byte("ok")); err != nil {
				t.Fatal(err)
			}
			if got := readN(t, c, 2); string(got) != "ok" {
				t.Errorf("reply %q, want ok", got)
			}
		})
	}
}

// A LOCAL header (a balancer's health check) is accepted and leaves the
// socket's addresses.
func TestListenerTrustedLocal(t *testing.T) {
	ln := listen(t, 0)
	c := dial(t, ln, trustedIP)
	b, err := (&pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(append(b, "ping"...)); err != nil {
		t.Fatal(err)
	}
	s := acceptWithin(t, ln, 5*time.Second)
	if s.RemoteAddr().String() != c.LocalAddr().String() {
		t.Errorf("RemoteAddr %v, want the peer %v", s.RemoteAddr(), c.LocalAddr())
	}
	if got := readN(t, s, 4); string(got) != "ping" {
		t.Errorf("data %q, want ping", got)
	}
}

// A trusted source without a valid header is closed and never returned by
// Accept: the next connection Accept returns is the one after it.
func TestListenerTrustedWithoutHeader(t *testing.T) {
	udp, err := HeaderUDP(&net.UDPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 53}, &net.UDPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"tls client hello", []byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5}},
		{"malformed v1", []byte("PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n")},
		{"truncated v2", udp[:14]},
		{"udp over tcp", udp},
		{"eof", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, 0)
			ch := acceptAsync(ln)
			bad := dial(t, ln, trustedIP)
			if _, err := bad.Write(tc.data); err != nil {
				t.Fatal(err)
			}
			if tc.data == nil || tc.name == "truncated v2" {
				bad.(*net.TCPConn).CloseWrite()
			}
			expectClosed(t, bad, 5*time.Second)
			good := dial(t, ln, untrustedIP)
			s := waitAccept(t, ch, 5*time.Second)
			if s.RemoteAddr().String() != good.LocalAddr().String() {
				t.Errorf("accepted %v, want the next connection %v", s.RemoteAddr(), good.LocalAddr())
			}
		})
	}
}

// An untrusted source's PROXY header is not interpreted: it stays data.
func TestListenerUntrustedHeaderIsData(t *testing.T) {
	ln := listen(t, 0)
	c := dial(t, ln, untrustedIP)
	var want []byte
	for _, v := range []Version{V1, V2} {
		b, err := Header(v, tcp("203.0.113.7:4711"), tcp("198.51.100.1:443"))
		if err != nil {
			t.Fatal(err)
		}
		want = append(append(want, b...), "hello"...)
	}
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	s := acceptWithin(t, ln, 5*time.Second)
	if s.RemoteAddr().String() != c.LocalAddr().String() {
		t.Errorf("RemoteAddr %v, want the real peer %v", s.RemoteAddr(), c.LocalAddr())
	}
	if s.LocalAddr().String() != ln.Addr().String() {
		t.Errorf("LocalAddr %v, want %v", s.LocalAddr(), ln.Addr())
	}
	if _, ok := s.(*net.TCPConn); !ok {
		t.Errorf("untrusted connection wrapped as %T", s)
	}
	if got := readN(t, s, len(want)); string(got) != string(want) {
		t.Errorf("data %q, want %q", got, want)
	}
}

// A trusted client that sends nothing does not stop other connections from
// being accepted and served, and is closed after the timeout.
func TestListenerSlowTrustedDoesNotBlock(t *testing.T) {
	const timeout = 2 * time.Second
	ln := listen(t, timeout)
	start := time.Now()
	silent := dial(t, ln, trustedIP)
	for _, from := range []string{trustedIP, untrustedIP} {
		c := dial(t, ln, from)
		if from == trustedIP {
			if err := WriteHeader(c, V2, tcp("203.0.113.7:4711"), tcp("198.51.100.1:443")); err != nil {
				t.Fatal(err)
			}
		}
		c.Write([]byte("ping"))
		s := acceptWithin(t, ln, timeout/2)
		if got := readN(t, s, 4); string(got) != "ping" {
			t.Fatalf("%s: data %q", from, got)
		}
		s.Write([]byte("pong"))
		if got := readN(t, c, 4); string(got) != "pong" {
			t.Fatalf("%s: reply %q", from, got)
		}
	}
	if d := time.Since(start); d >= timeout {
		t.Fatalf("serving took %v, not less than the header timeout", d)
	}
	expectClosed(t, silent, 3*timeout)
	if d := time.Since(start); d < timeout-100*time.Millisecond {
		t.Errorf("silent client closed after %v, before the timeout %v", d, timeout)
	}
}

// Close ends Accept and closes connections whose header is still awaited.
func TestListenerClose(t *testing.T) {
	ln := listen(t, time.Minute)
	silent := dial(t, ln, trustedIP)
	// The accept loop takes connections in order: once the next one is
	// accepted, the silent one is in its header reader.
	next := dial(t, ln, untrustedIP)
	s := acceptWithin(t, ln, 5*time.Second)
	if s.RemoteAddr().String() != next.LocalAddr().String() {
		t.Fatalf("accepted %v, want %v", s.RemoteAddr(), next.LocalAddr())
	}
	done := make(chan error, 1)
	go func() { done <- ln.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on the silent connection")
	}
	expectClosed(t, silent, 5*time.Second)
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

func TestTrustPolicy(t *testing.T) {
	policy := trustPolicy([]netip.Prefix{
		netip.MustParsePrefix("10.1.2.3/8"), // not masked
		netip.MustParsePrefix("2001:db8::/32"),
		{}, // invalid: matches nothing
	})
	for _, tc := range []struct {
		upstream net.Addr
		want     pp.Policy
	}{
		{tcp("10.200.0.1:1"), pp.REQUIRE},
		{tcp("[::ffff:10.200.0.1]:1"), pp.REQUIRE},
		{tcp("[2001:db8::5%eth0]:1"), pp.REQUIRE},
		{tcp("11.0.0.1:1"), pp.SKIP},
		{tcp("[2001:db9::5]:1"), pp.SKIP},
		{&net.UnixAddr{Name: "@x", Net: "unix"}, pp.SKIP},
		{nil, pp.SKIP},
	} {
		got, err := policy(pp.ConnPolicyOptions{Upstream: tc.upstream})
		if err != nil || got != tc.want {
			t.Errorf("%v: policy %v, %v; want %v", tc.upstream, got, err, tc.want)
		}
	}
}
