package agent_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/agent"
	"github.com/webgw/webgw/internal/tunnel"
)

// grantGateway is the tunnel side of a gateway that grants every service an
// agent asks for, whatever its protocol, with a public "127.0.0.1:PORT" for
// tcp and udp (the port asked for, or 40000 and up). The test gets each
// session with its hello, and opens streams on it as the gateway would.
type grantGateway struct {
	addr   string
	caFile string
	conns  chan *grantedConn
}

// grantedConn is one agent session the grantGateway accepted.
type grantedConn struct {
	hello *tunnel.Hello
	sess  *tunnel.Session
	ctrl  net.Conn // the control stream: the agent's drain message arrives here
}

func startGrantGateway(t *testing.T) *grantGateway {
	t.Helper()
	ln, _, caFile := tunnelListener(t, openStore(t))
	g := &grantGateway{addr: ln.Addr().String(), caFile: caFile, conns: make(chan *grantedConn, 16)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		sesss []*tunnel.Session // closed on cleanup; guarded by mu
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, s := range sesss {
			s.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
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
				if err := c.(*tls.Conn).HandshakeContext(t.Context()); err != nil {
					c.Close()
					return
				}
				sess, err := tunnel.Server(c, nil)
				if err != nil {
					c.Close()
					return
				}
				mu.Lock()
				sesss = append(sesss, sess)
				mu.Unlock()
				ctrl, err := sess.Accept()
				if err != nil {
					return
				}
				m, err := tunnel.ReadMessage(ctrl)
				if err != nil || m.Type != tunnel.MsgHello {
					sess.Close()
					return
				}
				w := &tunnel.Welcome{GatewayID: "grant-test"}
				for i, s := range m.Hello.Services {
					gr := tunnel.ServiceGrant{Name: s.Name, Protocol: s.Protocol}
					if gr.Name == "" {
						gr.Name = fmt.Sprintf("svc%d", i)
					}
					switch s.Protocol {
					case "tcp", "udp":
						gr.Port = s.Port
						if gr.Port == 0 {
							gr.Port = 40000 + i
						}
						gr.URL = net.JoinHostPort("127.0.0.1", strconv.Itoa(gr.Port))
					default:
						gr.URL = "https://" + gr.Name + ".localhost"
					}
					w.Services = append(w.Services, gr)
				}
				if err := tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgWelcome, Welcome: w}); err != nil {
					sess.Close()
					return
				}
				g.conns <- &grantedConn{hello: m.Hello, sess: sess, ctrl: ctrl}
			}()
		}
	}()
	return g
}

// conn waits for the next agent session.
func (g *grantGateway) conn(t *testing.T) *grantedConn {
	t.Helper()
	select {
	case c := <-g.conns:
		return c
	case <-time.After(waitFor):
		t.Fatal("no agent session")
	}
	return nil
}

// runForward runs an agent with one tunnel connection to g serving svcs,
// and returns it with its session once the services are granted.
func runForward(t *testing.T, g *grantGateway, svcs ...agent.ServiceConfig) (*running, *grantedConn) {
	t.Helper()
	r := runAgent(t, &agent.Config{
		Connections: 1,
		Transport:   "tcp",
		Gateways:    []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
		Services:    svcs,
	})
	r.grants(t)
	return r, g.conn(t)
}

// open opens a stream of kind for service, as the gateway does for a client
// at 192.0.2.1:5555; it is closed when the test ends.
func (c *grantedConn) open(t *testing.T, kind tunnel.Kind, service string) net.Conn {
	t.Helper()
	st, err := c.sess.Open()
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	if err := tunnel.WriteHeader(st, &tunnel.Header{Kind: kind, Service: service, Client: "192.0.2.1:5555"}); err != nil {
		t.Fatalf("write header: %v", err)
	}
	st.SetDeadline(time.Now().Add(waitFor))
	return st
}

// eofServer accepts TCP connections, reads each until EOF, and only then
// answers "got N bytes" and closes it: a backend that needs half-close.
func eofServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitFor))
				n, err := io.Copy(io.Discard, c)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "got %d bytes", n)
			}()
		}
	}()
	return ln.Addr().String()
}

// udpEcho answers every datagram with the same bytes, to its sender.
func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, tunnel.MaxDatagramLen)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

func TestTCPStream(t *testing.T) {
	g := startGrantGateway(t)
	echo, accepted := echoServer(t)
	_, c := runForward(t, g, agent.ServiceConfig{Name: "ssh", Target: "tcp://" + echo, Port: 2222})
	if s := c.hello.Services; len(s) != 1 || s[0].Protocol != "tcp" || s[0].Port != 2222 {
		t.Errorf("hello services %+v, want one tcp service asking for port 2222", s)
	}
	st := c.open(t, tunnel.KindTCP, "ssh")
	for _, msg := range []string{"ping\n", "SSH-2.0-test\r\n"} {
		if _, err := io.WriteString(st, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(st, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo: %q %v, want %q", buf, err, msg)
		}
	}
	if n := len(accepted); n != 1 {
		t.Errorf("the target accepted %d connections, want 1", n)
	}
}

// The gateway half-closes the stream after the client's last byte; the
// agent passes the EOF on to the target and the target's answer back.
func TestTCPHalfClose(t *testing.T) {
	g := startGrantGateway(t)
	_, c := runForward(t, g, agent.ServiceConfig{Name: "db", Target: "tcp://" + eofServer(t)})
	st := c.open(t, tunnel.KindTCP, "db")
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	if _, err := st.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := st.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(st)
	if want := fmt.Sprintf("got %d bytes", len(data)); err != nil || string(got) != want {
		t.Fatalf("answer after half-close: %q %v, want %q", got, err, want)
	}
}

func TestUDPStream(t *testing.T) {
	g := startGrantGateway(t)
	_, c := runForward(t, g, agent.ServiceConfig{Name: "resolver", Target: "udp://" + udpEcho(t)})
	if s := c.hello.Services; len(s) != 1 || s[0].Protocol != "udp" || s[0].Port != 0 {
		t.Errorf("hello services %+v, want one udp service with no port", s)
	}
	st := c.open(t, tunnel.KindUDP, "resolver")
	sent := [][]byte{
		[]byte("a"),
		bytes.Repeat([]byte("m"), 1400),
		bytes.Repeat([]byte("L"), 9000),
	}
	for _, d := range sent {
		if err := tunnel.WriteDatagram(st, d); err != nil {
			t.Fatal(err)
		}
	}
	dr := tunnel.NewDatagramReader(st)
	buf := make([]byte, tunnel.MaxDatagramLen)
	for i, want := range sent {
		n, err := dr.ReadDatagram(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram %d: %d bytes %.8q..., want %d bytes %.8q...", i, n, buf[:n], len(want), want)
		}
	}
	// The agent ends the session when the gateway closes the stream.
	if err := st.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := dr.ReadDatagram(buf); !errors.Is(err, io.EOF) {
		t.Errorf("after the gateway's close: %d bytes, %v; want EOF", n, err)
	}
}

// A UDP session idle for udp_idle_timeout is ended by the agent.
func TestUDPIdle(t *testing.T) {
	g := startGrantGateway(t)
	r := runAgent(t, &agent.Config{
		Connections:    1,
		Transport:      "tcp",
		UDPIdleTimeout: 50 * time.Millisecond,
		Gateways:       []agent.GatewayConfig{{Addr: g.addr, CA: g.caFile}},
		Services:       []agent.ServiceConfig{{Name: "resolver", Target: "udp://" + udpEcho(t)}},
	})
	r.grants(t)
	c := g.conn(t)
	st := c.open(t, tunnel.KindUDP, "resolver")
	if err := tunnel.WriteDatagram(st, []byte("x")); err != nil {
		t.Fatal(err)
	}
	dr := tunnel.NewDatagramReader(st)
	buf := make([]byte, 16)
	if n, err := dr.ReadDatagram(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("echo: %q %v", buf[:n], err)
	}
	start := time.Now()
	if _, err := dr.ReadDatagram(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("idle session: %v, want EOF", err)
	}
	if d := time.Since(start); d > waitFor/2 {
		t.Errorf("idle session ended after %v, want about 50ms", d)
	}
}

// A stream whose kind is not the service's protocol is closed unserved,
// without dialling the target.
func TestStreamKindMismatch(t *testing.T) {
	g := startGrantGateway(t)
	echo, accepted := echoServer(t)
	udp := udpEcho(t)
	_, c := runForward(t, g,
		agent.ServiceConfig{Name: "web", Target: "http://" + echo},
		agent.ServiceConfig{Name: "grpc", Target: "h2c://" + echo},
		agent.ServiceConfig{Name: "tls", Target: "https://" + echo},
		agent.ServiceConfig{Name: "raw", Target: "tcp://" + echo},
		agent.ServiceConfig{Name: "dgram", Target: "udp://" + udp},
	)
	tests := []struct {
		service string
		kind    tunnel.Kind
	}{
		{"web", tunnel.KindTCP},
		{"web", tunnel.KindH2C},
		{"grpc", tunnel.KindHTTP},
		{"tls", tunnel.KindTCP},
		{"raw", tunnel.KindHTTP},
		{"raw", tunnel.KindTLS},
		{"raw", tunnel.KindUDP},
		{"dgram", tunnel.KindTCP},
		{"dgram", tunnel.KindHTTP},
	}
	for _, tt := range tests {
		st := c.open(t, tt.kind, tt.service)
		st.Write([]byte("ping\n"))
		if got, err := io.ReadAll(st); len(got) != 0 || err != nil {
			t.Errorf("%s stream to %s: read %q, %v; want the stream closed unanswered", tt.kind, tt.service, got, err)
		}
		st.Close()
	}
	// The right kind is served; it is the only connection the target saw.
	st := c.open(t, tunnel.KindTCP, "raw")
	io.WriteString(st, "ping\n")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("tcp echo: %q %v", buf, err)
	}
	if n := len(accepted); n != 1 {
		t.Errorf("the target accepted %d connections, want 1 (refused streams must not dial)", n)
	}
}

// A probe of a udp service answers OK when a UDP socket could be connected
// to the target; a tcp service's probe dials TCP.
func TestProbeForwarded(t *testing.T) {
	g := startGrantGateway(t)
	echo, accepted := echoServer(t)
	_, c := runForward(t, g,
		agent.ServiceConfig{Name: "dgram", Target: "udp://" + udpEcho(t)},
		agent.ServiceConfig{Name: "raw", Target: "tcp://" + echo},
		agent.ServiceConfig{Name: "down", Target: "tcp://" + deadAddr(t)},
	)
	probe := func(service string) []byte {
		st := c.open(t, tunnel.KindProbe, service)
		defer st.Close()
		st.(interface{ CloseWrite() error }).CloseWrite()
		b, err := io.ReadAll(st)
		if err != nil {
			t.Fatalf("probe %s: %v", service, err)
		}
		return b
	}
	if got := probe("dgram"); !bytes.Equal(got, []byte{tunnel.ProbeOK}) {
		t.Errorf("probe of a udp service answered %v, want [%d]", got, tunnel.ProbeOK)
	}
	if got := probe("raw"); !bytes.Equal(got, []byte{tunnel.ProbeOK}) {
		t.Errorf("probe of a live tcp service answered %v, want [%d]", got, tunnel.ProbeOK)
	}
	select {
	case <-accepted:
	case <-time.After(waitFor):
		t.Error("the tcp probe did not dial the target")
	}
	if got := probe("down"); !bytes.Equal(got, []byte{tunnel.ProbeFailed}) {
		t.Errorf("probe of a dead tcp service answered %v, want [%d]", got, tunnel.ProbeFailed)
	}
}

// On stop the agent drains: tcp and udp streams keep being served after
// the drain message, and Run returns once the gateway closed them.
func TestDrainWaitsForForwardedStreams(t *testing.T) {
	g := startGrantGateway(t)
	echo, _ := echoServer(t)
	r, c := runForward(t, g,
		agent.ServiceConfig{Name: "raw", Target: "tcp://" + echo},
		agent.ServiceConfig{Name: "dgram", Target: "udp://" + udpEcho(t)},
	)
	tcpSt := c.open(t, tunnel.KindTCP, "raw")
	udpSt := c.open(t, tunnel.KindUDP, "dgram")
	dr := tunnel.NewDatagramReader(udpSt)
	buf := make([]byte, 64)
	roundTrip := func(when string) {
		t.Helper()
		io.WriteString(tcpSt, "ping\n")
		if _, err := io.ReadFull(tcpSt, buf[:5]); err != nil || string(buf[:5]) != "ping\n" {
			t.Fatalf("tcp echo %s: %q %v", when, buf[:5], err)
		}
		tunnel.WriteDatagram(udpSt, []byte("dgram"))
		if n, err := dr.ReadDatagram(buf); err != nil || string(buf[:n]) != "dgram" {
			t.Fatalf("udp echo %s: %q %v", when, buf[:n], err)
		}
	}
	roundTrip("before the drain")

	r.cancel()
	c.ctrl.SetReadDeadline(time.Now().Add(waitFor))
	if m, err := tunnel.ReadMessage(c.ctrl); err != nil || m.Type != tunnel.MsgDrain {
		t.Fatalf("control message after cancel: %+v %v, want drain", m, err)
	}
	roundTrip("while draining")
	select {
	case err := <-r.done:
		t.Fatalf("Run returned with streams in flight: %v", err)
	default:
	}

	tcpSt.Close()
	udpSt.Close()
	if err := r.wait(t); err != nil {
		t.Errorf("Run: %v", err)
	}
}
