package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/webgw/webgw/internal/agent"
	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// ctlGateway is the tunnel side of a gateway only: a TLS listener handing
// agent connections to a control.Server, whose routing table the test reads
// and dials streams from directly.
type ctlGateway struct {
	addr   string
	caFile string
	table  *route.Table
	srv    *control.Server
	// stop closes the listeners and ends every session, as a gateway that
	// goes down; the test's cleanup calls it too.
	stop func()
}

// tunnelListener listens on loopback with TLS for agents: a certificate for
// 127.0.0.1 from a fresh local CA, whose PEM file it returns with the TLS config.
func tunnelListener(t *testing.T, st store.Store) (net.Listener, *tls.Config, string) {
	t.Helper()
	ca, err := certs.LoadOrCreateCA(t.Context(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return tunnelListenerOf(t, ca, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
}

// tunnelListenerOf is tunnelListener with a certificate from ca for names and ips.
func tunnelListenerOf(t *testing.T, ca *certs.LocalCA, names []string, ips []net.IP) (net.Listener, *tls.Config, string) {
	t.Helper()
	cert, err := ca.ServerIdentity(t.Context(), names, ips)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, tc, caFile
}

func openStore(t *testing.T) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func startCtlGateway(t *testing.T) *ctlGateway { return startCtlGatewayOn(t, true, false) }

// startCtlGatewayOn serves agents over TLS on TCP, QUIC on the UDP port of
// the same number, or both.
func startCtlGatewayOn(t *testing.T, tcp, udp bool) *ctlGateway {
	t.Helper()
	st := openStore(t)
	ln, tc, caFile := tunnelListener(t, st)
	return serveCtl(t, st, ln, tc, caFile, tcp, udp, nil)
}

// serveCtl serves agents from ln (TLS on TCP, unless tcp is false) and on
// the UDP port of the same number (QUIC, when udp is true) with a
// control.Server over st, which configure may change before it serves.
func serveCtl(t *testing.T, st store.Store, ln net.Listener, tc *tls.Config, caFile string, tcp, udp bool, configure func(*control.Server)) *ctlGateway {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr := ln.Addr().String()
	table := route.NewTable(nil)
	srv := &control.Server{Store: st, Table: table, Open: true, GatewayID: "ctl-test",
		URL: func(name string, _ model.Protocol) string { return "https://" + name + ".localhost" }}
	if configure != nil {
		configure(srv)
	}
	var wg sync.WaitGroup
	if udp {
		ql, err := quic.ListenAddr(addr, tc, tunnel.QUICConfig(nil, true))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ql.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ql.Accept(ctx)
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					srv.ServeQUIC(ctx, c)
				}()
			}
		}()
	}
	if !tcp {
		ln.Close()
	}
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
				tc := c.(*tls.Conn)
				if err := tc.HandshakeContext(ctx); err != nil {
					c.Close()
					return
				}
				srv.ServeConn(ctx, tc)
			}()
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ln.Close()
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return &ctlGateway{addr: addr, caFile: caFile, table: table, srv: srv, stop: stop}
}

// sessions waits until name has n attached agent sessions and returns them.
func (g *ctlGateway) sessions(t *testing.T, name string, n int) []*route.Agent {
	t.Helper()
	var got []*route.Agent
	deadline := time.Now().Add(waitFor)
	for {
		got = nil
		if svc := g.table.Lookup(name); svc != nil {
			got = svc.Agents()
		}
		if len(got) == n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q has %d agent sessions, want %d", name, len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// open opens a data stream of kind to one agent session.
func openStream(t *testing.T, a *route.Agent, kind tunnel.Kind, service string) net.Conn {
	t.Helper()
	st, err := a.Session.Open()
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	if err := tunnel.WriteHeader(st, &tunnel.Header{Kind: kind, Service: service}); err != nil {
		t.Fatalf("write header: %v", err)
	}
	return st
}

// probeAnswer opens a probe stream to a and returns the agent's answer.
func probeAnswer(t *testing.T, a *route.Agent, service string) []byte {
	t.Helper()
	st := openStream(t, a, tunnel.KindProbe, service)
	defer st.Close()
	st.(interface{ CloseWrite() error }).CloseWrite() // the gateway sends nothing
	st.SetReadDeadline(time.Now().Add(waitFor))
	b, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read probe answer: %v", err)
	}
	return b
}

// echoServer accepts TCP connections and echoes each line back.
func echoServer(t *testing.T) (addr string, accepted <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan struct{}, 100)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			acc <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String(), acc
}

func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConnectionsPerGateway(t *testing.T) {
	g := startCtlGateway(t)
	echo, _ := echoServer(t)
	r := runAgent(t, &agent.Config{
		Connections: 3,
		Gateways:    []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
		Services:    []agent.ServiceConfig{{Target: "https://" + echo, Weight: 5}},
	})
	name := r.grants(t)[0].Name
	// Every connection gets the same quick-tunnel name.
	for range 2 {
		if gs := r.grants(t); gs[0].Name != name {
			t.Errorf("a sibling connection got %q, want %q", gs[0].Name, name)
		}
	}
	sess := g.sessions(t, name, 3)
	for _, a := range sess {
		if a.ID != sess[0].ID {
			t.Errorf("agent ids %q and %q: want one id for all connections", a.ID, sess[0].ID)
		}
		// Each connection serves streams.
		st := openStream(t, a, tunnel.KindTLS, name)
		st.Write([]byte("ping\n"))
		st.SetReadDeadline(time.Now().Add(waitFor))
		line, err := bufio.NewReader(st).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Errorf("echo over one connection: %q %v", line, err)
		}
		st.Close()
	}
}

func TestProbeStream(t *testing.T) {
	g := startCtlGateway(t)
	echo, accepted := echoServer(t)
	dead := deadAddr(t)
	r := runAgent(t, &agent.Config{
		Connections: 1,
		Gateways:    []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
		Services: []agent.ServiceConfig{
			{Name: "up", Target: "http://" + echo},
			{Name: "down", Target: "http://" + dead},
		},
	})
	r.grants(t)
	up := g.sessions(t, "up", 1)[0]
	if got := probeAnswer(t, up, "up"); len(got) != 1 || got[0] != tunnel.ProbeOK {
		t.Errorf("probe of a live target answered %v, want [%d]", got, tunnel.ProbeOK)
	}
	select {
	case <-accepted:
	case <-time.After(waitFor):
		t.Error("the probe did not dial the target")
	}
	if got := probeAnswer(t, up, "down"); len(got) != 1 || got[0] != tunnel.ProbeFailed {
		t.Errorf("probe of a dead target answered %v, want [%d]", got, tunnel.ProbeFailed)
	}
	// An unknown service gets no answer, just the end of the stream.
	if got := probeAnswer(t, up, "nope"); len(got) != 0 {
		t.Errorf("probe of an unknown service answered %v, want nothing", got)
	}
}

// One connection dying is replaced within a second or so, and its sibling
// serves meanwhile.
func TestDeadConnectionReplaced(t *testing.T) {
	g := startCtlGateway(t)
	echo, _ := echoServer(t)
	r := runAgent(t, &agent.Config{
		Connections: 2,
		Gateways:    []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
		Services:    []agent.ServiceConfig{{Name: "svc", Target: "http://" + echo}},
	})
	r.grants(t)
	before := g.sessions(t, "svc", 2)
	killed := time.Now()
	before[0].Session.Close()
	// The survivor serves at once.
	if got := probeAnswer(t, before[1], "svc"); len(got) != 1 || got[0] != tunnel.ProbeOK {
		t.Errorf("the surviving connection answered %v", got)
	}
	deadline := time.Now().Add(waitFor)
	for {
		after := g.table.Lookup("svc").Agents()
		if len(after) == 2 && after[0] != before[0] && after[1] != before[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead connection was not replaced: %d sessions", len(after))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Since(killed); d > 3*time.Second {
		t.Errorf("replaced after %v, want promptly (backoff starts at 250 ms)", d)
	}
}

// On stop every connection drains at once: long-lived streams on all of
// them keep running, and the drain timeout is waited once, not once per
// connection.
func TestDrainAllConnections(t *testing.T) {
	for _, finish := range []string{"streams end", "drain timeout"} {
		t.Run(finish, func(t *testing.T) {
			g := startCtlGateway(t)
			echo, _ := echoServer(t)
			const n = 3
			drain := 30 * time.Second
			if finish == "drain timeout" {
				drain = 500 * time.Millisecond
			}
			r := runAgent(t, &agent.Config{
				Connections:  n,
				DrainTimeout: drain,
				Gateways:     []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
				Services:     []agent.ServiceConfig{{Name: "ws", Target: "https://" + echo}},
			})
			r.grants(t)
			sess := g.sessions(t, "ws", n)
			var streams []net.Conn
			var readers []*bufio.Reader
			for _, a := range sess {
				st := openStream(t, a, tunnel.KindTLS, "ws")
				defer st.Close()
				streams = append(streams, st)
				readers = append(readers, bufio.NewReader(st))
			}
			echoAll := func(msg string) {
				t.Helper()
				for i, st := range streams {
					st.SetDeadline(time.Now().Add(waitFor))
					if _, err := io.WriteString(st, msg); err != nil {
						t.Fatalf("stream %d: write: %v", i, err)
					}
					if line, err := readers[i].ReadString('\n'); err != nil || line != msg {
						t.Fatalf("stream %d: echo %q %v, want %q", i, line, err, msg)
					}
				}
			}
			echoAll("before\n")
			stopped := time.Now()
			r.cancel()
			deadline := time.Now().Add(waitFor)
			for _, a := range sess {
				for !a.Draining() {
					if time.Now().After(deadline) {
						t.Fatal("not every connection sent drain")
					}
					time.Sleep(time.Millisecond)
				}
			}
			if finish == "drain timeout" {
				if err := r.wait(t); err != nil {
					t.Fatalf("Run: %v", err)
				}
				if d := time.Since(stopped); d > drain*2 {
					t.Errorf("Run returned %v after stop with a %v drain timeout on %d connections: the drains ran one after the other", d, drain, n)
				}
				return
			}
			// The streams keep flowing while the agent drains.
			echoAll("during drain\n")
			select {
			case err := <-r.done:
				t.Fatalf("Run returned (%v) with streams in flight", err)
			default:
			}
			for _, st := range streams {
				st.Close()
			}
			if err := r.wait(t); err != nil {
				t.Errorf("Run after the drain: %v, want nil", err)
			}
		})
	}
}

// The hello carries the connection index, the transport and the weights.
func TestHelloFields(t *testing.T) {
	ln, _, caFile := tunnelListener(t, openStore(t))
	hellos := make(chan *tunnel.Hello, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sess, err := tunnel.Server(c, nil)
				if err != nil {
					return
				}
				defer sess.Close()
				ctrl, err := sess.Accept()
				if err != nil {
					return
				}
				m, err := tunnel.ReadMessage(ctrl)
				if err != nil {
					return
				}
				hellos <- m.Hello
				tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgWelcome, Welcome: &tunnel.Welcome{Error: "try later"}})
			}()
		}
	}()
	a, err := agent.New(&agent.Config{
		Connections: 2,
		Transport:   "tcp",
		Gateways:    []agent.GatewayConfig{{Addr: ln.Addr().String(), CA: caFile}},
		Services: []agent.ServiceConfig{
			{Name: "a", Target: "http://127.0.0.1:1", Weight: 7},
			{Name: "b", Target: "http://127.0.0.1:2"},
		},
	}, agent.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	conns := map[int]bool{}
	for len(conns) < 2 {
		var h *tunnel.Hello
		select {
		case h = <-hellos:
		case <-time.After(waitFor):
			t.Fatalf("got hellos for connections %v, want 0 and 1", conns)
		}
		conns[h.Conn] = true
		if h.Transport != "tcp" {
			t.Errorf("hello transport %q, want tcp", h.Transport)
		}
		if len(h.Services) != 2 || h.Services[0].Weight != 7 || h.Services[1].Weight != 1 {
			t.Errorf("hello services %+v, want weights 7 and 1", h.Services)
		}
	}
	if !conns[0] || !conns[1] {
		t.Errorf("connection indexes %v, want 0 and 1", conns)
	}
}

// transports returns the transport of each session, sorted.
func transportsOf(sess []*route.Agent) []string {
	var out []string
	for _, a := range sess {
		out = append(out, a.Session.(*tunnel.Session).Transport())
	}
	slices.Sort(out)
	return out
}

func TestQUICTransport(t *testing.T) {
	g := startCtlGatewayOn(t, false, true)
	echo, _ := echoServer(t)
	r := runAgent(t, &agent.Config{
		Connections: 2,
		Transport:   agent.TransportQUIC,
		Gateways:    []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
		Services:    []agent.ServiceConfig{{Name: "q", Target: "https://" + echo}},
	})
	r.grants(t)
	sess := g.sessions(t, "q", 2)
	if got := transportsOf(sess); !slices.Equal(got, []string{"quic", "quic"}) {
		t.Fatalf("session transports %v, want quic for both", got)
	}
	for _, a := range sess {
		st := openStream(t, a, tunnel.KindTLS, "q")
		st.Write([]byte("over quic\n"))
		st.SetReadDeadline(time.Now().Add(waitFor))
		if line, err := bufio.NewReader(st).ReadString('\n'); err != nil || line != "over quic\n" {
			t.Errorf("echo over quic: %q %v", line, err)
		}
		st.Close()
		if got := probeAnswer(t, a, "q"); len(got) != 1 || got[0] != tunnel.ProbeOK {
			t.Errorf("probe over quic answered %v", got)
		}
	}
	// A dead QUIC connection is replaced too.
	sess[0].Session.Close()
	deadline := time.Now().Add(waitFor)
	for {
		after := g.table.Lookup("q").Agents()
		if len(after) == 2 && !slices.Contains(after, sess[0]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dead quic connection was not replaced")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAutoTransportLive(t *testing.T) {
	tests := []struct {
		name     string
		tcp, udp bool
		want     string
	}{
		{"both: tcp preferred", true, true, "tcp"},
		{"udp blocked: tcp", true, false, "tcp"},
		{"tcp blocked: quic", false, true, "quic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startCtlGatewayOn(t, tt.tcp, tt.udp)
			start := time.Now()
			r := runAgent(t, &agent.Config{
				Connections: 2,
				Gateways:    []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
				Services:    []agent.ServiceConfig{{Name: "auto", Target: "http://127.0.0.1:1"}},
			})
			r.grants(t)
			sess := g.sessions(t, "auto", 2)
			if got := transportsOf(sess); !slices.Equal(got, []string{tt.want, tt.want}) {
				t.Errorf("session transports %v, want %s", got, tt.want)
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("up after %v, want within about 2 s", d)
			}
		})
	}
}
