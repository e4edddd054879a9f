package control_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

var peerSecret = bytes.Repeat([]byte{0x5a}, 32)

// peerHarness is a PeerServer for gateway "gw-b" in a cluster whose live
// members are gw-a, gw-b and gw-c.
type peerHarness struct {
	srv   *control.PeerServer
	table *route.Table
	wg    sync.WaitGroup // ServeConn calls
}

func newPeerHarness(t *testing.T, configure func(*control.PeerServer)) *peerHarness {
	t.Helper()
	tab := route.NewTable(nil)
	tab.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
		var d net.Dialer
		network := "tcp"
		if u.Scheme == "udp" {
			network = "udp"
		}
		return d.DialContext(ctx, network, u.HostPort())
	}
	members := map[string]bool{"gw-a": true, "gw-b": true, "gw-c": true}
	ph := &peerHarness{table: tab, srv: &control.PeerServer{
		Table: tab, GatewayID: "gw-b", Secret: peerSecret,
		Member: func(id string) bool { return members[id] },
	}}
	if configure != nil {
		configure(ph.srv)
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { ph.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("ServeConn did not return after the peer closed its session")
		}
	})
	return ph
}

// serve runs ServeConn on c until the test ends.
func (ph *peerHarness) serve(t *testing.T, c net.Conn) {
	ph.wg.Add(1)
	go func() {
		defer ph.wg.Done()
		ph.srv.ServeConn(t.Context(), c)
	}()
}

// dial opens a peer session to the harness over a pipe, as gateway from
// reaching gateway to, with secret.
func (ph *peerHarness) dial(t *testing.T, from, to string, secret []byte) (*tunnel.Session, error) {
	t.Helper()
	gw, pr := net.Pipe()
	ph.serve(t, gw)
	sess, err := control.DialPeer(pr, from, to, secret, waitFor)
	if err == nil {
		t.Cleanup(func() { sess.Close() })
	}
	return sess, err
}

func (ph *peerHarness) mustDial(t *testing.T) *tunnel.Session {
	t.Helper()
	sess, err := ph.dial(t, "gw-a", "gw-b", peerSecret)
	if err != nil {
		t.Fatalf("DialPeer: %v", err)
	}
	return sess
}

// localAgent attaches to name a fake agent of the harness's gateway: a real
// tunnel session over a pipe whose agent end hands each stream, after its
// header, to serve.
func (ph *peerHarness) localAgent(t *testing.T, name string, serve func(*tunnel.Header, net.Conn)) *tunnel.Session {
	t.Helper()
	gw, ag := net.Pipe()
	gs, err := tunnel.Server(gw, nil)
	if err != nil {
		t.Fatal(err)
	}
	as, err := tunnel.Client(ag, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		gs.Close()
		as.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := as.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				h, err := tunnel.ReadHeader(st)
				if err != nil {
					return
				}
				serve(h, st)
			}()
		}
	}()
	if err := ph.table.Attach(name, &route.Agent{ID: "agent-" + name, Session: gs}); err != nil {
		t.Fatal(err)
	}
	return gs
}

// echoHeader answers a stream with its header's fields, then echoes it.
func echoHeader(h *tunnel.Header, c net.Conn) {
	io.WriteString(c, h.Kind.String()+" "+h.Service+" "+h.Client+" "+h.Host+"\n")
	io.Copy(c, c)
}

// relay opens a stream of sess with h, writes payload, half-closes and
// returns all that comes back.
func relay(t *testing.T, sess *tunnel.Session, h *tunnel.Header, payload string) (string, error) {
	t.Helper()
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(waitFor))
	if err := tunnel.WriteHeader(st, h); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(st, payload); err != nil {
		t.Fatal(err)
	}
	st.(interface{ CloseWrite() error }).CloseWrite()
	b, err := io.ReadAll(st)
	return string(b), err
}

func TestPeerHandshakeRefused(t *testing.T) {
	ph := newPeerHarness(t, nil)
	for _, c := range []struct {
		name, from, to string
		secret         []byte
		want           string
	}{
		{"bad token", "gw-a", "gw-b", bytes.Repeat([]byte{1}, 32), "token refused"},
		{"unknown member", "gw-x", "gw-b", peerSecret, "not a live member"},
		{"itself", "gw-b", "gw-b", peerSecret, "not a live member"},
		{"wrong to", "gw-a", "gw-c", peerSecret, "not gw-c"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ph.dial(t, c.from, c.to, c.secret)
			var re *control.PeerRefusedError
			if !errors.As(err, &re) || !strings.Contains(re.Reason, c.want) {
				t.Fatalf("DialPeer = %v, want a refusal saying %q", err, c.want)
			}
		})
	}
	// A token for another pair does not open this one.
	gw, pr := net.Pipe()
	ph.serve(t, gw)
	sess, err := tunnel.Client(pr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ctrl, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	tunnel.WritePeerMessage(ctrl, &tunnel.PeerMessage{Type: tunnel.MsgHello, Hello: &tunnel.PeerHello{
		Version: 1, From: "gw-c", To: "gw-b", Token: tunnel.PeerToken(peerSecret, "gw-a", "gw-b")}})
	ctrl.SetReadDeadline(time.Now().Add(waitFor))
	m, err := tunnel.ReadPeerMessage(ctrl)
	if err != nil || m.Welcome.Error == "" {
		t.Fatalf("welcome %+v, %v; want a refusal of gw-a's token sent by gw-c", m, err)
	}
	select {
	case <-sess.CloseChan():
	case <-time.After(waitFor):
		t.Fatal("the refused session was not closed")
	}
}

// TestPeerHandshakeTimeout: a peer that sends no hello is cut after the
// handshake timeout, and sessions waiting for one are bounded.
func TestPeerHandshakeTimeout(t *testing.T) {
	ph := newPeerHarness(t, func(s *control.PeerServer) {
		s.HandshakeTimeout = 200 * time.Millisecond
		s.MaxPending = 1
	})
	gw, pr := net.Pipe()
	ph.serve(t, gw)
	silent, err := tunnel.Client(pr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if _, err := silent.Open(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the silent session to wait for its hello", func() bool { return ph.srv.PendingPeers() == 1 })
	// The one pending slot is taken: another stranger is closed at once.
	gw2, pr2 := net.Pipe()
	ph.serve(t, gw2)
	if _, err := control.DialPeer(pr2, "gw-a", "gw-b", peerSecret, waitFor); err == nil {
		t.Error("a session beyond MaxPending was admitted")
	}
	select {
	case <-silent.CloseChan():
	case <-time.After(waitFor):
		t.Fatal("a session without a hello was kept past the handshake timeout")
	}
	// Its slot is free again.
	eventually(t, "the slot to be free", func() bool { return ph.srv.PendingPeers() == 0 })
	ph.mustDial(t)
}

// TestPeerRelayStream: a stream of a peer reaches the local agent with the
// same header and its bytes go both ways, with half-close.
func TestPeerRelayStream(t *testing.T) {
	ph := newPeerHarness(t, nil)
	ph.table.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP})
	ph.localAgent(t, "shop", echoHeader)
	sess := ph.mustDial(t)
	for i := range 3 {
		h := &tunnel.Header{Kind: tunnel.KindHTTP, Service: "shop", Client: "192.0.2.7:4321", Host: "shop.example"}
		got, err := relay(t, sess, h, "GET / HTTP/1.1\r\n\r\n")
		if want := "http shop 192.0.2.7:4321 shop.example\nGET / HTTP/1.1\r\n\r\n"; err != nil || got != want {
			t.Fatalf("relay %d = %q, %v; want %q", i, got, err, want)
		}
	}
	if n := ph.srv.Relayed(); n != 3 {
		t.Errorf("Relayed = %d, want 3", n)
	}
}

// TestPeerRelayOverTLS: the same over real TLS with the tunnel certificate
// and the peer ALPN, as the edge and gateway/peers.go do it.
func TestPeerRelayOverTLS(t *testing.T) {
	ph := newPeerHarness(t, nil)
	ph.table.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoTCP})
	ph.localAgent(t, "shop", echoHeader)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, err := certs.LoadOrCreateCA(t.Context(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerIdentity(t.Context(), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{tunnel.PeerALPN}, MinVersion: tls.VersionTLS13})
		if err := tc.HandshakeContext(t.Context()); err != nil {
			c.Close()
			return
		}
		ph.serve(t, tc)
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{tunnel.PeerALPN}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := control.DialPeer(c, "gw-a", "gw-b", peerSecret, waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	got, err := relay(t, sess, &tunnel.Header{Kind: tunnel.KindTCP, Service: "shop", Client: "[2001:db8::1]:9"}, "bytes")
	if want := "tcp shop [2001:db8::1]:9 \nbytes"; err != nil || got != want {
		t.Fatalf("relay = %q, %v; want %q", got, err, want)
	}
}

// TestPeerRelayUDP: framed datagrams of a peer's udp stream reach a local
// agent's udp stream, and a direct udp upstream, datagram by datagram,
// zero-length ones included.
func TestPeerRelayUDP(t *testing.T) {
	ph := newPeerHarness(t, nil)
	ph.table.Configure(model.Service{Name: "dns", Tenant: "acme", Protocol: model.ProtoUDP})
	ph.localAgent(t, "dns", func(h *tunnel.Header, c net.Conn) {
		dr := tunnel.NewDatagramReader(c)
		buf := make([]byte, tunnel.MaxDatagramLen)
		for {
			n, err := dr.ReadDatagram(buf)
			if err != nil {
				return
			}
			tunnel.WriteDatagram(c, append([]byte("agent:"), buf[:n]...))
		}
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("direct:"), buf[:n]...), from)
		}
	}()
	ph.table.Configure(model.Service{Name: "dns2", Tenant: "acme", Protocol: model.ProtoUDP,
		Upstreams: []model.Upstream{{URL: "udp://" + pc.LocalAddr().String()}}})
	sess := ph.mustDial(t)

	for _, c := range []struct{ service, prefix string }{{"dns", "agent:"}, {"dns2", "direct:"}} {
		st, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(waitFor))
		if err := tunnel.WriteHeader(st, &tunnel.Header{Kind: tunnel.KindUDP, Service: c.service, Client: "192.0.2.1:53000"}); err != nil {
			t.Fatal(err)
		}
		dc := tunnel.StreamDatagrams(st)
		buf := make([]byte, tunnel.MaxDatagramLen)
		for _, d := range []string{"one", "", "three"} {
			if err := dc.WriteDatagram([]byte(d)); err != nil {
				t.Fatal(err)
			}
			n, err := dc.ReadDatagram(buf)
			if err != nil || string(buf[:n]) != c.prefix+d {
				t.Fatalf("%s: datagram %q came back as %q, %v", c.service, d, buf[:n], err)
			}
		}
		st.Close()
	}
	if n := ph.srv.Relayed(); n != 2 {
		t.Errorf("Relayed = %d, want 2", n)
	}
}

// TestPeerStreamClosed: a relayed stream that cannot be served here ends
// without a byte: an unknown service, a kind that does not fit the
// service, no local upstream, and a service whose only upstream is
// another peer (no relay loop: that peer gets no stream).
func TestPeerStreamClosed(t *testing.T) {
	ph := newPeerHarness(t, nil)
	ph.table.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP})
	ph.table.Configure(model.Service{Name: "empty", Tenant: "acme", Protocol: model.ProtoHTTP})
	ph.localAgent(t, "shop", echoHeader)
	third := &countingOpener{}
	if err := ph.table.AttachPeer("elsewhere", &route.Agent{ID: "gw-c", Peer: true, Session: third}, "", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	sess := ph.mustDial(t)
	for _, h := range []*tunnel.Header{
		{Kind: tunnel.KindHTTP, Service: "nosuch"},
		{Kind: tunnel.KindUDP, Service: "shop"},
		{Kind: tunnel.KindHTTP, Service: "empty"},
		{Kind: tunnel.KindHTTP, Service: "elsewhere"},
	} {
		got, _ := relay(t, sess, h, "GET / HTTP/1.1\r\n\r\n")
		if got != "" {
			t.Errorf("stream %s for %s answered %q, want closed without a byte", h.Kind, h.Service, got)
		}
	}
	if n := third.opens.Load(); n != 0 {
		t.Errorf("%d streams relayed on to another peer", n)
	}
	if n := ph.srv.Relayed(); n != 0 {
		t.Errorf("Relayed = %d, want 0", n)
	}
	// The session still serves what it can.
	if got, err := relay(t, sess, &tunnel.Header{Kind: tunnel.KindHTTP, Service: "shop"}, "x"); err != nil || got != "http shop  \nx" {
		t.Errorf("relay after refusals = %q, %v", got, err)
	}
}

// TestPeerSessionReplaced: a new session from the same gateway replaces
// its earlier one.
func TestPeerSessionReplaced(t *testing.T) {
	ph := newPeerHarness(t, nil)
	first := ph.mustDial(t)
	ph.mustDial(t)
	select {
	case <-first.CloseChan():
	case <-time.After(waitFor):
		t.Fatal("the earlier session of the same peer was kept")
	}
	// Another gateway's session is its own.
	other, err := ph.dial(t, "gw-c", "gw-b", peerSecret)
	if err != nil {
		t.Fatal(err)
	}
	if other.IsClosed() {
		t.Fatal("gw-c's session closed")
	}
}

// TestPeerMaxStreams: streams beyond MaxStreams are closed at once; the
// others are served.
func TestPeerMaxStreams(t *testing.T) {
	ph := newPeerHarness(t, func(s *control.PeerServer) { s.MaxStreams = 1 })
	ph.table.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoTCP})
	ph.localAgent(t, "shop", echoHeader)
	sess := ph.mustDial(t)
	held, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(waitFor))
	tunnel.WriteHeader(held, &tunnel.Header{Kind: tunnel.KindTCP, Service: "shop"})
	line := make([]byte, len("tcp shop  \n"))
	if _, err := io.ReadFull(held, line); err != nil {
		t.Fatalf("first stream: %v", err)
	}
	if got, _ := relay(t, sess, &tunnel.Header{Kind: tunnel.KindTCP, Service: "shop"}, "x"); got != "" {
		t.Errorf("second stream answered %q, want closed (MaxStreams 1)", got)
	}
}

// countingOpener counts Open calls and opens nothing.
type countingOpener struct{ opens atomic.Int64 }

func (o *countingOpener) Open() (net.Conn, error) {
	o.opens.Add(1)
	return nil, errors.New("no streams here")
}
func (o *countingOpener) NumStreams() int { return 0 }
func (o *countingOpener) Close() error    { return nil }

// TestPeerProbe: a probe stream is answered as an agent would: through a
// local agent by the agent, for a direct upstream by the gateway (0 when
// it connected), and 1 when no local upstream is usable.
func TestPeerProbe(t *testing.T) {
	ph := newPeerHarness(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ph.table.Configure(model.Service{Name: "db", Tenant: "acme", Protocol: model.ProtoTCP,
		Upstreams: []model.Upstream{{URL: "tcp://" + ln.Addr().String()}}})
	ph.table.Configure(model.Service{Name: "empty", Tenant: "acme", Protocol: model.ProtoTCP})
	ph.table.Configure(model.Service{Name: "agent", Tenant: "acme", Protocol: model.ProtoTCP})
	ph.localAgent(t, "agent", func(h *tunnel.Header, c net.Conn) { c.Write([]byte{tunnel.ProbeOK}) })
	sess := ph.mustDial(t)
	for _, c := range []struct {
		service string
		want    string
	}{{"db", "\x00"}, {"agent", "\x00"}, {"empty", "\x01"}} {
		if got, err := relay(t, sess, &tunnel.Header{Kind: tunnel.KindProbe, Service: c.service}, ""); err != nil || got != c.want {
			t.Errorf("probe of %s = %q, %v; want %q", c.service, got, err, c.want)
		}
	}
}
