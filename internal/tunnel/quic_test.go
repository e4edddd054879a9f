package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func TestMain(m *testing.M) {
	// quic-go logs to stderr when it cannot enlarge a UDP socket's buffers;
	// the sockets here are the tests' own.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	os.Exit(m.Run())
}

// quicTransport runs sessions over QUIC on loopback; it has no conn pair.
var quicTransport = transport{name: "quic"}

// sessionTransports are the transports of the session tests: the byte
// streams under yamux, and QUIC.
var sessionTransports = append(transports[:len(transports):len(transports)], quicTransport)

// quicPair connects an agent and a gateway over QUIC on loopback with
// QUICConfig(cfg), through via when it is set (via returns the address to
// dial instead of the gateway's). closeAll closes both connections, the
// listener and the UDP sockets; it also runs at cleanup.
func quicPair(tb testing.TB, cfg *Config, via func(tb testing.TB, gateway net.Addr) net.Addr) (agent, gateway *quic.Conn, closeAll func()) {
	tb.Helper()
	cert, err := testCert()
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	var closers []func() error
	var once sync.Once
	closeAll = func() {
		once.Do(func() {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		})
	}
	tb.Cleanup(closeAll)
	udp := func() *quic.Transport {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			tb.Fatal(err)
		}
		tr := &quic.Transport{Conn: c}
		closers = append(closers, c.Close, tr.Close)
		return tr
	}
	gtr, atr := udp(), udp()
	ln, err := gtr.Listen(&tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13,
	}, QUICConfig(cfg, true))
	if err != nil {
		tb.Fatal(err)
	}
	closers = append(closers, ln.Close)
	addr := ln.Addr()
	if via != nil {
		addr = via(tb, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   *quic.Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept(ctx)
		accepted <- res{c, err}
	}()
	a, err := atr.Dial(ctx, addr, &tls.Config{
		RootCAs: roots, ServerName: "gateway.test", NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13,
	}, QUICConfig(cfg, false))
	if err != nil {
		closeAll()
		tb.Fatalf("quic dial: %v", err)
	}
	closers = append(closers, func() error { return a.CloseWithError(0, "") })
	r := <-accepted
	if r.err != nil {
		closeAll()
		tb.Fatalf("quic accept: %v", r.err)
	}
	closers = append(closers, func() error { return r.c.CloseWithError(0, "") })
	return a, r.c, closeAll
}

// quicSessions runs an agent and a gateway session over quicPair.
func quicSessions(tb testing.TB, cfg *Config, via func(testing.TB, net.Addr) net.Addr) (agent, gateway *Session, closeAll func()) {
	tb.Helper()
	ac, gc, closeAll := quicPair(tb, cfg, via)
	agent, err := ClientQUIC(ac, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	gateway, err = ServerQUIC(gc, cfg)
	if err != nil {
		agent.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { gateway.Close(); agent.Close() })
	return agent, gateway, closeAll
}

// udpRelay forwards datagrams between one client and to, until drop is
// closed; from then on it drops every packet in both directions, as a
// network that silently went away.
type udpRelay struct {
	conn  *net.UDPConn // the address clients dial
	up    *net.UDPConn // toward to
	to    net.Addr
	drop  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	peer  net.Addr // the client; guarded by mu
	wg    sync.WaitGroup
	close sync.Once
}

func newUDPRelay(tb testing.TB, to net.Addr) *udpRelay {
	tb.Helper()
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	c, err := net.ListenUDP("udp", lo)
	if err != nil {
		tb.Fatal(err)
	}
	up, err := net.ListenUDP("udp", lo)
	if err != nil {
		c.Close()
		tb.Fatal(err)
	}
	r := &udpRelay{conn: c, up: up, to: to, drop: make(chan struct{})}
	r.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.peer = from
			r.mu.Unlock()
			if !r.dropping() {
				up.WriteTo(buf[:n], to)
			}
		}
	})
	r.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, _, err := up.ReadFrom(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			peer := r.peer
			r.mu.Unlock()
			if peer != nil && !r.dropping() {
				c.WriteTo(buf[:n], peer)
			}
		}
	})
	tb.Cleanup(r.Close)
	return r
}

func (r *udpRelay) Addr() net.Addr { return r.conn.LocalAddr() }
func (r *udpRelay) Drop()          { r.once.Do(func() { close(r.drop) }) }

func (r *udpRelay) dropping() bool {
	select {
	case <-r.drop:
		return true
	default:
		return false
	}
}

func (r *udpRelay) Close() {
	r.close.Do(func() {
		r.conn.Close()
		r.up.Close()
		r.wg.Wait()
	})
}

// holeConn passes bytes through until Freeze; then it swallows writes and
// reads nothing more (a read blocks until Close), as a peer whose process
// froze or a network that drops every packet.
type holeConn struct {
	net.Conn
	frozen    chan struct{}
	closed    chan struct{}
	freeze    sync.Once
	closeOnce sync.Once
}

func newHoleConn(c net.Conn) *holeConn {
	return &holeConn{Conn: c, frozen: make(chan struct{}), closed: make(chan struct{})}
}

func (h *holeConn) Freeze() { h.freeze.Do(func() { close(h.frozen) }) }

func (h *holeConn) isFrozen() bool {
	select {
	case <-h.frozen:
		return true
	default:
		return false
	}
}

func (h *holeConn) Read(p []byte) (int, error) {
	if !h.isFrozen() {
		n, err := h.Conn.Read(p)
		if !h.isFrozen() || err != nil {
			return n, err
		}
	}
	<-h.closed
	return 0, net.ErrClosed
}

func (h *holeConn) Write(p []byte) (int, error) {
	if h.isFrozen() {
		return len(p), nil
	}
	return h.Conn.Write(p)
}

func (h *holeConn) Close() error {
	h.closeOnce.Do(func() { close(h.closed) })
	return h.Conn.Close()
}

// TestSessionDeadPeer: when the peer stops answering (frozen, or every
// packet dropped), both sessions end within KeepAliveInterval+PingTimeout.
func TestSessionDeadPeer(t *testing.T) {
	cfg := &Config{KeepAliveInterval: 100 * time.Millisecond, PingTimeout: 200 * time.Millisecond}
	// Scheduling under -race on two cores adds latency; the bound is what
	// matters, not the exact figure.
	const slack = time.Second
	limit := cfg.KeepAliveInterval + cfg.PingTimeout + slack
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			var agent, gw *Session
			var freeze func()
			if tr.pair == nil {
				var relay *udpRelay
				agent, gw, _ = quicSessions(t, cfg, func(tb testing.TB, to net.Addr) net.Addr {
					relay = newUDPRelay(tb, to)
					return relay.Addr()
				})
				freeze = relay.Drop
			} else {
				ac, gc := tr.pair(t)
				hole := newHoleConn(gc)
				t.Cleanup(func() { hole.Close() })
				var err error
				if agent, err = Client(ac, cfg); err != nil {
					t.Fatal(err)
				}
				if gw, err = Server(hole, cfg); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { gw.Close(); agent.Close() })
				freeze = hole.Freeze
			}
			// The session works and keeps working over several keepalive periods.
			c, err := gw.Open()
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("x"))
			if _, err := agent.Accept(); err != nil {
				t.Fatal(err)
			}
			if closed(gw.CloseChan(), 3*cfg.KeepAliveInterval+cfg.PingTimeout) || agent.IsClosed() {
				t.Fatal("healthy session ended")
			}
			freeze()
			start := time.Now()
			for _, s := range []*Session{gw, agent} {
				if !closed(s.CloseChan(), limit+5*time.Second) {
					t.Fatalf("session still open %v after the peer went silent", time.Since(start))
				}
			}
			if d := time.Since(start); d > limit {
				t.Errorf("sessions ended %v after the peer went silent, want at most %v", d, limit)
			}
			for _, s := range []*Session{gw, agent} {
				_, err := s.Accept()
				if !errors.Is(err, ErrSessionClosed) {
					t.Errorf("Accept = %v, want ErrSessionClosed", err)
				}
				// The gateway, behind the hole, hears nothing and decides by
				// its keepalive; the agent may instead see the gateway's
				// conn close (a pipe passes that on).
				if tr.pair != nil && s == gw && !errors.Is(err, errPingTimeout) {
					t.Errorf("gateway Accept = %v, want it to wrap the keepalive's verdict", err)
				}
				if _, err := s.Open(); !errors.Is(err, ErrSessionClosed) {
					t.Errorf("Open = %v, want ErrSessionClosed", err)
				}
			}
		})
	}
}

func TestQUICConfig(t *testing.T) {
	for _, cfg := range []*Config{nil, {}} {
		for _, server := range []bool{false, true} {
			q := QUICConfig(cfg, server)
			wantStreams := int64(1024)
			if server {
				wantStreams = 100
			}
			if q.KeepAlivePeriod != time.Second || q.MaxIdleTimeout != 4*time.Second ||
				q.MaxStreamReceiveWindow != 8<<20 || q.MaxConnectionReceiveWindow != 128<<20 ||
				q.InitialConnectionReceiveWindow != 128<<20 || q.InitialStreamReceiveWindow != 512<<10 || q.MaxIncomingStreams != wantStreams ||
				!q.EnableDatagrams {
				t.Errorf("QUICConfig(%#v, %v) = %+v", cfg, server, q)
			}
			if !server && q.MaxIncomingUniStreams >= 0 {
				t.Errorf("agent accepts unidirectional streams: %d", q.MaxIncomingUniStreams)
			}
		}
	}
	q := QUICConfig(&Config{KeepAliveInterval: time.Second, PingTimeout: 2 * time.Second, AcceptBacklog: 7, MaxStreamWindow: 1 << 20}, false)
	if q.KeepAlivePeriod != 200*time.Millisecond || q.MaxIdleTimeout != 1200*time.Millisecond || q.MaxIncomingStreams != 7 ||
		q.MaxStreamReceiveWindow != 1<<20 || q.InitialStreamReceiveWindow != 512<<10 || q.MaxConnectionReceiveWindow != 16<<20 {
		t.Errorf("overrides not applied: %+v", q)
	}
}

// TestQUICWrongALPN: a QUIC connection for another protocol (HTTP/3) is
// not a tunnel.
func TestQUICWrongALPN(t *testing.T) {
	cert, err := testCert()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h3"}}, QUICConfig(nil, true))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	c, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "gateway.test", NextProtos: []string{"h3"}}, QUICConfig(nil, false))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	if s, err := ClientQUIC(c, nil); err == nil {
		s.Close()
		t.Fatal("ClientQUIC accepted a connection with ALPN h3")
	}
}

// TestQUICStreamClose: over QUIC a stream's Close ends both directions.
// The peer still reads what was written, then EOF; its own writes then
// fail (STOP_SENDING), and the closer's Read fails at once.
func TestQUICStreamClose(t *testing.T) {
	agent, gw, _ := quicSessions(t, nil, nil)
	c, err := gw.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	s, err := agent.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(s); err != nil || string(b) != "request" {
		t.Fatalf("peer read %q, %v; want the request, then EOF", b, err)
	}
	if !waitFor(5*time.Second, func() bool {
		_, err := s.Write([]byte("answer"))
		return err != nil
	}) {
		t.Error("peer's Write still succeeds after the stream was closed")
	}
	s.Close()
	if !waitFor(5*time.Second, func() bool { return gw.NumStreams() == 0 && agent.NumStreams() == 0 }) {
		t.Errorf("streams left: gateway %d, agent %d", gw.NumStreams(), agent.NumStreams())
	}
}

// TestQUICSilentPeerDefaults: with the default settings a QUIC session
// whose peer falls silent (a killed agent: UDP carries no reset) ends in
// about 1.5 s, well before the 4 s idle timeout, while an idle healthy
// session lives on.
func TestQUICSilentPeerDefaults(t *testing.T) {
	var relay *udpRelay
	agent, gw, _ := quicSessions(t, nil, func(tb testing.TB, to net.Addr) net.Addr {
		relay = newUDPRelay(tb, to)
		return relay.Addr()
	})
	if closed(gw.CloseChan(), 3*time.Second) || agent.IsClosed() {
		t.Fatal("an idle healthy session ended")
	}
	relay.Drop()
	start := time.Now()
	if !closed(gw.CloseChan(), 5*time.Second) {
		t.Fatal("the gateway's session outlived its silent peer by 5 s")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the gateway noticed its silent peer after %v, want about 1.5 s (the idle timeout is 4 s)", d.Round(time.Millisecond))
	} else {
		t.Logf("silent peer noticed after %v", d.Round(time.Millisecond))
	}
}
