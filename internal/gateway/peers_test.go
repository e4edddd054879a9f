package gateway

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// peerMember is one gateway of an in-process cluster: its routing table,
// cluster view and, for a member that serves peers, a TLS listener with
// the peer ALPN in front of its PeerServer.
type peerMember struct {
	table   *route.Table
	cluster *cluster.Cluster
	server  *control.PeerServer
	stop    context.CancelFunc // leaves the cluster
	done    chan struct{}      // closed when the cluster's Run returned
	servers sync.WaitGroup     // ServeConn calls
}

// newPeerMember starts gateway id on st: a cluster member whose tunnel
// address is a loopback listener serving peer sessions.
func newPeerMember(t *testing.T, st store.Store, ca *certs.LocalCA, secret []byte, id string, log *slog.Logger) *peerMember {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerIdentity(t.Context(), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	m := &peerMember{table: route.NewTable(nil), done: make(chan struct{})}
	m.cluster, err = cluster.New(st, cluster.Member{ID: id, Tunnel: ln.Addr().String()}, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.server = &control.PeerServer{Table: m.table, GatewayID: id, Secret: secret, Log: log,
		Member: func(id string) bool { _, ok := m.cluster.Member(id); return ok }}
	ctx, cancel := context.WithCancel(t.Context())
	m.stop = cancel
	go func() { defer close(m.done); m.cluster.Run(ctx) }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{tunnel.PeerALPN}, MinVersion: tls.VersionTLS13})
			m.servers.Add(1)
			go func() {
				defer m.servers.Done()
				if err := tc.HandshakeContext(ctx); err != nil {
					c.Close()
					return
				}
				m.server.ServeConn(ctx, tc)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		<-m.done
		m.servers.Wait()
	})
	<-m.cluster.Ready()
	return m
}

// echoAgent attaches to name of tab a fake agent that echoes each stream
// after a line naming its service.
func echoAgent(t *testing.T, tab *route.Table, name string) {
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
	t.Cleanup(func() { gs.Close(); as.Close(); wg.Wait() })
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
				io.WriteString(st, h.Service+"\n")
				io.Copy(st, st)
			}()
		}
	}()
	if err := tab.Attach(name, &route.Agent{ID: "agent-" + name, Session: gs}); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// roundTrip dials svc (any upstream, peers included), sends msg, and
// returns what comes back.
func roundTrip(t *testing.T, svc *route.Service, msg string) string {
	t.Helper()
	c, _, err := svc.Dial(&tunnel.Header{Kind: tunnel.KindTCP, Service: svc.Name})
	if err != nil {
		t.Fatalf("Dial %s: %v", svc.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, msg)
	c.(interface{ CloseWrite() error }).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestPeersRelay: gateway A keeps a session to gateway B, attached to the
// names B holds (a tenant service A knows from the store, and a quick
// tunnel it does not), relays through it, detaches when B stops holding a
// name, and closes it when B leaves the cluster.
func TestPeersRelay(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, err := certs.LoadOrCreateCA(t.Context(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := cluster.Secret(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	b := newPeerMember(t, st, ca, secret, "gw-b", nil)
	a := newPeerMember(t, st, ca, secret, "gw-a", nil)
	for _, tab := range []*route.Table{a.table, b.table} {
		tab.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoTCP})
	}
	b.table.UpsertQuick("quick", model.ProtoTCP, 0)
	echoAgent(t, b.table, "shop")
	echoAgent(t, b.table, "quick")
	b.cluster.SetHeld(map[string]cluster.Holding{"shop": {Protocol: "tcp", Tenant: "acme"}, "quick": {Protocol: "tcp"}})

	ps := &peers{self: "gw-a", cluster: a.cluster, table: a.table, secret: secret, roots: ca.Pool(), log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); ps.run(ctx) }()
	defer func() { cancel(); <-done }()

	waitUntil(t, "A to attach B to shop and quick", func() bool {
		s, q := a.table.Lookup("shop"), a.table.Lookup("quick")
		return s != nil && s.Reachable() && q != nil && q.Reachable()
	})
	shop := a.table.Lookup("shop")
	if shop.Live() || len(shop.Agents()) != 0 {
		t.Errorf("shop Live %v with %d agents on A, want a peer only", shop.Live(), len(shop.Agents()))
	}
	if got := roundTrip(t, shop, "hello"); got != "shop\nhello" {
		t.Errorf("through the peer: %q", got)
	}
	if got := roundTrip(t, a.table.Lookup("quick"), "q"); got != "quick\nq" {
		t.Errorf("quick tunnel through the peer: %q", got)
	}
	if n := b.server.Relayed(); n != 2 {
		t.Errorf("B relayed %d streams, want 2", n)
	}

	// B stops holding quick: A forgets the name it knew only from B.
	b.cluster.SetHeld(map[string]cluster.Holding{"shop": {Protocol: "tcp", Tenant: "acme"}})
	waitUntil(t, "A to drop quick", func() bool { return a.table.Lookup("quick") == nil })

	// B leaves: A detaches it and closes the session.
	b.stop()
	<-b.done
	waitUntil(t, "A to detach B from shop", func() bool { return !shop.Reachable() })
	if a.table.Lookup("shop") == nil {
		t.Error("A removed its stored service shop when B left")
	}
	waitUntil(t, "B's session to end", func() bool {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		return len(ps.links) == 0
	})
}

// TestPeersRefusedWrongSecret: a gateway with another secret gets no
// session, and so nothing attached.
func TestPeersRefusedWrongSecret(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, err := certs.LoadOrCreateCA(t.Context(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := cluster.Secret(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	refused := &countHandler{msg: "peer refused"}
	b := newPeerMember(t, st, ca, secret, "gw-b", slog.New(refused))
	a := newPeerMember(t, st, ca, secret, "gw-a", nil)
	b.table.UpsertQuick("quick", model.ProtoTCP, 0)
	echoAgent(t, b.table, "quick")
	b.cluster.SetHeld(map[string]cluster.Holding{"quick": {Protocol: "tcp"}})
	waitUntil(t, "A to see B hold quick", func() bool { return len(a.cluster.Holders("quick")) == 1 })

	wrong := append([]byte(nil), secret...)
	wrong[0] ^= 1
	ps := &peers{self: "gw-a", cluster: a.cluster, table: a.table, secret: wrong, roots: ca.Pool(), log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); ps.run(ctx) }()
	defer func() { cancel(); <-done }()
	// B refuses every attempt, and A keeps trying.
	waitUntil(t, "B to refuse A three times", func() bool { return refused.n.Load() >= 3 })
	if a.table.Lookup("quick") != nil {
		t.Fatal("a name attached through a session the peer refused")
	}
}

// countHandler counts the log records with message msg.
type countHandler struct {
	msg string
	n   atomic.Int64
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// TestQuickPortKeptWhileHeldElsewhere: a gateway does not release the port
// of a quick tunnel (expired here, or never here) while another member of
// the cluster holds the name; once none does, it does.
func TestQuickPortKeptWhileHeldElsewhere(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, err := certs.LoadOrCreateCA(t.Context(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := cluster.Secret(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	a := newPeerMember(t, st, ca, secret, "gw-a", nil)
	b := newPeerMember(t, st, ca, secret, "gw-b", nil)
	p, err := store.AllocatePort(t.Context(), st, model.Port{Proto: model.PortTCP, Service: "quick", Created: time.Now()},
		model.PortRange{First: 20000, Last: 20009}, 0)
	if err != nil {
		t.Fatal(err)
	}
	b.cluster.SetHeld(map[string]cluster.Holding{"quick": {Protocol: "tcp"}})
	waitUntil(t, "A to see B hold quick", func() bool { return len(a.cluster.Holders("quick")) == 1 })

	g := &Gateway{store: st, table: a.table, cluster: a.cluster, log: slog.New(slog.DiscardHandler)}
	missing := map[string]time.Time{}
	now := time.Now()
	// Expired here, and long missing: kept, B holds it.
	g.expireQuickPorts(t.Context(), now, time.Minute, map[string]bool{"quick": true}, missing)
	g.expireQuickPorts(t.Context(), now.Add(time.Hour), time.Minute, nil, missing)
	if held, err := store.PortsOf(t.Context(), st, ""); err != nil || len(held) != 1 {
		t.Fatalf("ports %v, %v after expiry while B holds quick; want the port kept", held, err)
	}

	b.cluster.SetHeld(nil)
	waitUntil(t, "A to see B withdraw quick", func() bool { return len(a.cluster.Holders("quick")) == 0 })
	g.expireQuickPorts(t.Context(), now, time.Minute, map[string]bool{"quick": true}, missing)
	if held, err := store.PortsOf(t.Context(), st, ""); err != nil || len(held) != 0 {
		t.Fatalf("ports %v, %v once nobody holds quick; want %s released", held, err, p)
	}
}
