package edge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// tcpBackend serves each connection of a loopback listener with handle,
// which owns it; it returns the listener's address.
func tcpBackend(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echoTCP echoes until EOF, then half-closes.
func echoTCP(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// spliceTo is a fake agent's serve function for KindTCP streams: it splices
// each stream to a new connection to addr, as an agent does.
func spliceTo(t *testing.T, addr string) func(*tunnel.Header, net.Conn) {
	return func(h *tunnel.Header, st net.Conn) {
		if h.Kind != tunnel.KindTCP {
			t.Errorf("stream kind %v, want tcp", h.Kind)
			st.Close()
			return
		}
		bc, err := net.Dial("tcp", addr)
		if err != nil {
			st.Close()
			return
		}
		proxy.Splice(st, bc, 0)
	}
}

// forwardService returns a service of a new table served by one fake agent
// with serve; a nil serve gives a service without upstreams.
func forwardService(t *testing.T, serve func(*tunnel.Header, net.Conn)) (*route.Service, *fakeAgent) {
	t.Helper()
	tab := route.NewTable(nil)
	svc := tab.Upsert("port", "", model.ProtoTCP, false)
	if serve == nil {
		return svc, nil
	}
	fa := newFakeAgent(t, serve)
	if err := tab.Attach("port", fa.agent); err != nil {
		t.Fatal(err)
	}
	return svc, fa
}

// startTCPForwarder serves f on a loopback port until the test ends and
// returns the port's address.
func startTCPForwarder(t *testing.T, f *TCPForwarder) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- f.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		sctx, scancel := context.WithTimeout(context.Background(), waitTimeout)
		defer scancel()
		if err := f.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		waitFor(t, "connections closed", func() bool { return f.Conns() == 0 })
	})
	return ln.Addr().String()
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitTimeout))
	return c.(*net.TCPConn)
}

func TestTCPForwarderEcho(t *testing.T) {
	svc, fa := forwardService(t, spliceTo(t, tcpBackend(t, echoTCP)))
	f := &TCPForwarder{Lookup: func() *route.Service { return svc }}
	addr := startTCPForwarder(t, f)
	c := dialTCP(t, addr)
	for _, msg := range []string{"hello", string(bytes.Repeat([]byte("x"), 100<<10))} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
	}
	h := <-fa.headers
	if h.Kind != tunnel.KindTCP || h.Service != "port" || h.Client != c.LocalAddr().String() {
		t.Errorf("header %+v, want kind tcp, service port, client %s", h, c.LocalAddr())
	}
	if n := f.Conns(); n != 1 {
		t.Errorf("Conns() = %d, want 1", n)
	}
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after half-close: %q, %v; want EOF", b, err)
	}
	waitFor(t, "Conns() = 0", func() bool { return f.Conns() == 0 })
}

func TestTCPForwarderHalfClose(t *testing.T) {
	// The backend answers only after it read the whole request.
	backend := tcpBackend(t, func(c net.Conn) {
		defer c.Close()
		req, err := io.ReadAll(c)
		if err != nil {
			return
		}
		c.Write(bytes.Repeat(req, 3))
	})
	svc, _ := forwardService(t, spliceTo(t, backend))
	addr := startTCPForwarder(t, &TCPForwarder{Lookup: func() *route.Service { return svc }})
	c := dialTCP(t, addr)
	req := bytes.Repeat([]byte("abc"), 20000)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat(req, 3)) {
		t.Fatalf("got %d bytes, want %d", len(got), 3*len(req))
	}
}

func TestTCPForwarderProxyProtocol(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			type seen struct {
				h    *pp.Header
				rest string
				err  error
			}
			got := make(chan seen, 1)
			backend := tcpBackend(t, func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				h, err := pp.Read(br)
				if err != nil {
					got <- seen{err: err}
					return
				}
				rest, err := io.ReadAll(br)
				got <- seen{h: h, rest: string(rest), err: err}
			})
			svc, _ := forwardService(t, spliceTo(t, backend))
			addr := startTCPForwarder(t, &TCPForwarder{Lookup: func() *route.Service { return svc }, ProxyProtocol: v})
			c := dialTCP(t, addr)
			c.Write([]byte("payload"))
			c.CloseWrite()
			var s seen
			select {
			case s = <-got:
			case <-time.After(waitTimeout):
				t.Fatal("backend saw nothing")
			}
			if s.err != nil {
				t.Fatal(s.err)
			}
			if int(s.h.Version) != v || s.h.Command != pp.PROXY {
				t.Errorf("version %d command %v, want %d PROXY", s.h.Version, s.h.Command, v)
			}
			if s.h.SourceAddr.String() != c.LocalAddr().String() {
				t.Errorf("source %v, want the client's %v", s.h.SourceAddr, c.LocalAddr())
			}
			if s.h.DestinationAddr.String() != addr {
				t.Errorf("destination %v, want the port's %v", s.h.DestinationAddr, addr)
			}
			if s.rest != "payload" {
				t.Errorf("after the header %q, want payload", s.rest)
			}
		})
	}
}

func TestTCPForwarderNoUpstream(t *testing.T) {
	noAgent, _ := forwardService(t, nil)
	for _, tt := range []struct {
		name string
		svc  *route.Service
	}{
		{"no service", nil},
		{"no live upstream", noAgent},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &TCPForwarder{Lookup: func() *route.Service { return tt.svc }}
			c := dialTCP(t, startTCPForwarder(t, f))
			c.SetDeadline(time.Now().Add(time.Second))
			b, err := io.ReadAll(c)
			if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
				t.Fatalf("read: %v, want EOF promptly", err)
			}
			if len(b) != 0 {
				t.Fatalf("got %q", b)
			}
			waitFor(t, "Conns() = 0", func() bool { return f.Conns() == 0 })
		})
	}
}

func isReset(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && !ne.Timeout()
}

func TestTCPForwarderShutdown(t *testing.T) {
	svc, _ := forwardService(t, spliceTo(t, tcpBackend(t, echoTCP)))

	t.Run("deadline", func(t *testing.T) {
		f := &TCPForwarder{Lookup: func() *route.Service { return svc }}
		c := dialTCP(t, startTCPForwarder(t, f))
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		const grace = 200 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		start := time.Now()
		err := f.Shutdown(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d < grace {
			t.Errorf("Shutdown returned after %v, before the deadline %v", d, grace)
		}
		if b, err := io.ReadAll(c); len(b) != 0 || (err != nil && !isReset(err)) {
			t.Fatalf("after Shutdown: %q, %v; want the connection closed", b, err)
		}
		waitFor(t, "Conns() = 0", func() bool { return f.Conns() == 0 })
	})

	t.Run("ends in time", func(t *testing.T) {
		f := &TCPForwarder{Lookup: func() *route.Service { return svc }}
		addr := startTCPForwarder(t, f)
		c := dialTCP(t, addr)
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- f.Shutdown(ctx) }()
		// The open connection still works while Shutdown waits.
		c.Write([]byte("pong"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := <-done; err != nil {
			t.Fatalf("Shutdown = %v, want nil", err)
		}
		if n := f.Conns(); n != 0 {
			t.Errorf("Conns() = %d after Shutdown, want 0", n)
		}
		// The port no longer accepts.
		if c2, err := net.DialTimeout("tcp", addr, waitTimeout); err == nil {
			c2.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := c2.Read(make([]byte, 1)); err == nil {
				t.Error("a connection after Shutdown was served")
			}
			c2.Close()
		}
	})
}

// udpEcho starts a loopback UDP echo server and returns its address.
func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], addr)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// relayTo is a fake agent's serve function for KindUDP streams: it relays
// each stream to a new UDP socket connected to addr, as an agent does.
func relayTo(t *testing.T, addr string) func(*tunnel.Header, net.Conn) {
	return func(h *tunnel.Header, st net.Conn) {
		defer st.Close()
		if h.Kind != tunnel.KindUDP {
			t.Errorf("stream kind %v, want udp", h.Kind)
			return
		}
		uc, err := net.Dial("udp", addr)
		if err != nil {
			return
		}
		defer uc.Close()
		tunnel.RelayUDP(context.Background(), st, uc, 0)
	}
}

// startUDPForwarder serves f on a loopback port until the test ends and
// returns the port's address.
func startUDPForwarder(t *testing.T, f *UDPForwarder) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- f.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if n := f.Sessions(); n != 0 {
			t.Errorf("Sessions() = %d after Serve returned, want 0", n)
		}
	})
	return pc.LocalAddr().String()
}

func dialUDP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitTimeout))
	return c
}

// udpRoundTrip sends p on c and checks that the same datagram comes back.
func udpRoundTrip(t *testing.T, c net.Conn, p []byte) {
	t.Helper()
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("echo of %d bytes: %v", len(p), err)
	}
	if !bytes.Equal(buf[:n], p) {
		t.Fatalf("sent %d bytes, got back %d that differ", len(p), n)
	}
}

func TestUDPForwarderEcho(t *testing.T) {
	svc, fa := forwardService(t, relayTo(t, udpEcho(t)))
	f := &UDPForwarder{Lookup: func() *route.Service { return svc }}
	c := dialUDP(t, startUDPForwarder(t, f))
	for _, size := range []int{1, 1200, 8000, 0} {
		p := bytes.Repeat([]byte{byte(size)}, size)
		for i := range p {
			p[i] += byte(i)
		}
		udpRoundTrip(t, c, p)
	}
	h := <-fa.headers
	if h.Kind != tunnel.KindUDP || h.Service != "port" || h.Client != c.LocalAddr().String() {
		t.Errorf("header %+v, want kind udp, service port, client %s", h, c.LocalAddr())
	}
	if n := f.Sessions(); n != 1 {
		t.Errorf("Sessions() = %d, want 1", n)
	}
}

func TestUDPForwarderClients(t *testing.T) {
	svc, fa := forwardService(t, relayTo(t, udpEcho(t)))
	f := &UDPForwarder{Lookup: func() *route.Service { return svc }}
	addr := startUDPForwarder(t, f)
	a, b := dialUDP(t, addr), dialUDP(t, addr)
	for i := range 3 {
		udpRoundTrip(t, a, []byte(fmt.Sprintf("a%d", i)))
		udpRoundTrip(t, b, []byte(fmt.Sprintf("b%d", i)))
	}
	if n := f.Sessions(); n != 2 {
		t.Errorf("Sessions() = %d, want 2", n)
	}
	clients := map[string]bool{}
	for range 2 {
		clients[(<-fa.headers).Client] = true
	}
	if !clients[a.LocalAddr().String()] || !clients[b.LocalAddr().String()] {
		t.Errorf("streams for %v, want one each for %v and %v", clients, a.LocalAddr(), b.LocalAddr())
	}
	select {
	case h := <-fa.headers:
		t.Errorf("a third stream, for %s", h.Client)
	default:
	}
}

func TestUDPForwarderIdle(t *testing.T) {
	svc, fa := forwardService(t, relayTo(t, udpEcho(t)))
	f := &UDPForwarder{Lookup: func() *route.Service { return svc }, IdleTimeout: 100 * time.Millisecond}
	c := dialUDP(t, startUDPForwarder(t, f))
	udpRoundTrip(t, c, []byte("one"))
	<-fa.headers
	waitFor(t, "the idle session to end", func() bool { return f.Sessions() == 0 })
	// The agent's side of the stream ends too.
	waitFor(t, "the agent's stream to close", func() bool { return fa.agent.Streams() == 0 })
	// The client's next datagram opens a new session.
	udpRoundTrip(t, c, []byte("two"))
	<-fa.headers
}

func TestUDPForwarderStreamEnds(t *testing.T) {
	// The agent answers one datagram, then closes the stream.
	svc, _ := forwardService(t, func(_ *tunnel.Header, st net.Conn) {
		defer st.Close()
		buf := make([]byte, tunnel.MaxDatagramLen)
		n, err := tunnel.NewDatagramReader(st).ReadDatagram(buf)
		if err == nil {
			tunnel.WriteDatagram(st, buf[:n])
		}
	})
	f := &UDPForwarder{Lookup: func() *route.Service { return svc }}
	c := dialUDP(t, startUDPForwarder(t, f))
	udpRoundTrip(t, c, []byte("only"))
	waitFor(t, "the session to end", func() bool { return f.Sessions() == 0 })
}

func TestUDPForwarderMaxSessions(t *testing.T) {
	svc, _ := forwardService(t, relayTo(t, udpEcho(t)))
	f := &UDPForwarder{Lookup: func() *route.Service { return svc }, MaxSessions: 1}
	addr := startUDPForwarder(t, f)
	a, b := dialUDP(t, addr), dialUDP(t, addr)
	udpRoundTrip(t, a, []byte("first"))
	if _, err := b.Write([]byte("over")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a drop", func() bool { return f.Drops() == 1 })
	if n := f.Sessions(); n != 1 {
		t.Errorf("Sessions() = %d, want 1", n)
	}
	udpRoundTrip(t, a, []byte("still served"))
}

func TestUDPForwarderNoService(t *testing.T) {
	noAgent, _ := forwardService(t, nil)
	for _, tt := range []struct {
		name string
		svc  *route.Service
	}{
		{"no service", nil},
		{"no live upstream", noAgent},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &UDPForwarder{Lookup: func() *route.Service { return tt.svc }}
			c := dialUDP(t, startUDPForwarder(t, f))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			// Whether or not the session was opened yet, it must end (dial
			// fails) and Serve must stop cleanly; nothing comes back.
			waitFor(t, "the session to end", func() bool { return f.Sessions() == 0 })
		})
	}
}
