package route

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webgw/webgw/internal/model"
)

// peerAgent is the session to another gateway, as gateway/peers.go makes it.
func peerAgent(id string, o Opener) *Agent {
	return &Agent{ID: id, Peer: true, Session: o, Connected: time.Now()}
}

// opens counts the streams each fake session got.
func opens(fs ...*fakeOpener) []int64 {
	out := make([]int64, len(fs))
	for i, f := range fs {
		out[i] = f.opens.Load()
	}
	return out
}

// dialN dials svc n times (closing each stream) and fails on an error.
func dialN(t *testing.T, svc *Service, n int) {
	t.Helper()
	for range n {
		c, _, err := svc.Dial(hdr)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		c.Close()
	}
}

// TestPeerOnlyWhenNoLocal: a usable local upstream always wins over a peer
// gateway; the peer takes the traffic only while no local one is usable
// (draining, gone, or down by active checks), and Live counts only local
// upstreams while Reachable counts peers too.
func TestPeerOnlyWhenNoLocal(t *testing.T) {
	local, peer := &fakeOpener{}, &fakeOpener{}
	tab, m, svc, agents := newService(t, local)
	defer local.wg.Wait()
	defer peer.wg.Wait()
	p := peerAgent("gw-b", peer)
	if err := tab.AttachPeer("svc", p, "", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	if !svc.Live() || !svc.Reachable() {
		t.Fatalf("Live %v Reachable %v with a local agent, want both", svc.Live(), svc.Reachable())
	}
	dialN(t, svc, 20)
	if got := opens(local, peer); got[0] != 20 || got[1] != 0 {
		t.Fatalf("streams local/peer = %v with the local agent usable, want 20/0", got)
	}
	// Weight does not change that: a peer is no replica.
	if u := svc.Pick(""); u == nil || u.Peer() {
		t.Fatalf("Pick = %v, want the local agent", u)
	}

	agents[0].Drain()
	if svc.Live() {
		t.Error("Live with only a peer usable, want false (peers are not held here)")
	}
	if !svc.Reachable() {
		t.Error("Reachable false with a peer usable")
	}
	dialN(t, svc, 5)
	if got := opens(local, peer); got[0] != 20 || got[1] != 5 {
		t.Fatalf("streams local/peer = %v with the local agent draining, want 20/5", got)
	}
	if got := svc.Agents(); len(got) != 1 || got[0] != agents[0] {
		t.Errorf("Agents = %v, want the local agent only", got)
	}
	if n := metricValue(t, m.Agents.WithLabelValues("svc")); n != 1 {
		t.Errorf("agents gauge %v, want 1 (peers are not agents)", n)
	}
	if got := tab.AgentsOf(); len(got) != 1 || got[0] != agents[0] {
		t.Errorf("AgentsOf = %v, want the local agent only", got)
	}
	if s := svc.Upstreams()[1].String(); s != "peer gw-b" {
		t.Errorf("peer upstream named %q", s)
	}

	// A local agent that comes back wins again.
	a2 := &Agent{ID: "z", Session: local}
	if err := tab.Attach("svc", a2); err != nil {
		t.Fatal(err)
	}
	dialN(t, svc, 3)
	if got := opens(local, peer); got[0] != 23 || got[1] != 5 {
		t.Fatalf("streams local/peer = %v after a local agent came back, want 23/5", got)
	}
}

// TestPeerWhenLocalDown: a direct upstream that active checks took out
// leaves the service to the peer; a passive ejection of the last local
// upstream does not (panic routing keeps it local).
func TestPeerWhenLocalDown(t *testing.T) {
	tab := NewTable(nil)
	svc := directService(t, tab, model.LBRoundRobin, 1)
	peer := &fakeOpener{}
	defer peer.wg.Wait()
	if err := tab.AttachPeer("web", peerAgent("gw-b", peer), "acme", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	direct := svc.Upstreams()[0]
	direct.Health.ejectedUntil.Store(now.Add(time.Minute).UnixNano())
	if u := svc.pick(svc.list(), "", nil, now, false); u != direct {
		t.Fatalf("pick with the local upstream passively ejected = %v, want it (panic routing)", u)
	}
	direct.Health.down.Store(true)
	if u := svc.pick(svc.list(), "", nil, now, false); u == nil || !u.Peer() {
		t.Fatalf("pick with the local upstream down = %v, want the peer", u)
	}
	if u := svc.pick(svc.list(), "", nil, now, true); u != nil {
		t.Fatalf("local-only pick with the local upstream down = %v, want none", u)
	}
}

// TestDialLocalNeverPeer: the side that serves a relayed stream dials only
// local upstreams: a service whose only upstream is a peer gets
// ErrNoUpstream (no relay loop), and accept filters local ones.
func TestDialLocalNeverPeer(t *testing.T) {
	peer := &fakeOpener{}
	defer peer.wg.Wait()
	tab, _, svc, _ := newService(t)
	if err := tab.AttachPeer("svc", peerAgent("gw-b", peer), "", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.DialLocal(context.Background(), hdr, "", nil); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("DialLocal with only a peer = %v, want ErrNoUpstream", err)
	}
	if n := peer.opens.Load(); n != 0 {
		t.Fatalf("DialLocal opened %d streams to the peer", n)
	}
	c, u, err := svc.DialContext(context.Background(), hdr, "")
	if err != nil || !u.Peer() {
		t.Fatalf("DialContext = %v, %v; want the peer", u, err)
	}
	c.Close()

	local := &fakeOpener{}
	defer local.wg.Wait()
	if err := tab.Attach("svc", &Agent{ID: "a", Session: local}); err != nil {
		t.Fatal(err)
	}
	c, u, err = svc.DialLocal(context.Background(), hdr, "", nil)
	if err != nil || u.Peer() || u.Agent.ID != "a" {
		t.Fatalf("DialLocal = %v, %v; want the local agent", u, err)
	}
	c.Close()
	refuse := func(*Upstream) bool { return false }
	if _, _, err := svc.DialLocal(context.Background(), hdr, "", refuse); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("DialLocal accepting none = %v, want ErrNoUpstream", err)
	}
}

// TestAttachPeerUnknownName: a name this gateway does not know (another
// gateway's quick tunnel) gets an unstored service with the holder's
// protocol and PROXY setting, which goes as its last peer does, without
// being reported as an expired quick tunnel.
func TestAttachPeerUnknownName(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	tab := NewTable(m)
	b, c := peerAgent("gw-b", &fakeOpener{}), peerAgent("gw-c", &fakeOpener{})
	if err := tab.AttachPeer("quick", b, "", model.ProtoTCP, 2); err != nil {
		t.Fatal(err)
	}
	if err := tab.AttachPeer("quick", b, "", model.ProtoTCP, 2); err != nil {
		t.Fatalf("second AttachPeer: %v", err)
	}
	if err := tab.AttachPeer("quick", c, "", model.ProtoTCP, 2); err != nil {
		t.Fatal(err)
	}
	svc := tab.Lookup("quick")
	switch {
	case svc == nil:
		t.Fatal("no service made for the peer")
	case svc.Stored || svc.Tenant != "" || svc.Protocol != model.ProtoTCP || svc.ProxyProtocol() != 2:
		t.Fatalf("service %+v proxy %d, want unstored anonymous tcp with PROXY v2", svc, svc.ProxyProtocol())
	case len(svc.Upstreams()) != 2:
		t.Fatalf("%d upstreams, want 2 (attaching twice is a no-op)", len(svc.Upstreams()))
	case svc.Live() || !svc.Reachable():
		t.Fatalf("Live %v Reachable %v, want false, true", svc.Live(), svc.Reachable())
	case !tab.HasPeer("quick", b) || tab.HasPeer("other", b):
		t.Fatal("HasPeer wrong")
	}
	if err := tab.AttachPeer("quick", peerAgent("gw-d", &fakeOpener{}), "", model.ProtoHTTP, 0); err == nil {
		t.Error("AttachPeer with another protocol than the service's: no error")
	}
	if err := tab.AttachPeer("quick", &Agent{ID: "x"}, "", model.ProtoTCP, 0); err == nil {
		t.Error("AttachPeer of an agent that is no peer: no error")
	}
	if err := tab.AttachPeer("quick", peerAgent("gw-e", &fakeOpener{}), "acme", model.ProtoTCP, 0); err == nil {
		t.Error("AttachPeer of a name held for a tenant to an anonymous service: no error")
	}

	tab.DetachPeer("quick", b)
	if tab.Lookup("quick") == nil {
		t.Fatal("service gone while a peer is still attached")
	}
	tab.Detach(c) // the session to c ended
	if tab.Lookup("quick") != nil {
		t.Fatal("service made for peers kept after the last one left")
	}
	if n := countSeries(t, m.Agents); n != 0 {
		t.Errorf("%d agent series left for the removed service", n)
	}
	if gone := tab.ExpireAnonymous(time.Now().Add(time.Hour), time.Minute); len(gone) != 0 {
		t.Errorf("ExpireAnonymous reported %v: a relayed name is not this gateway's to release", gone)
	}

	// The same name made by the store (or a local quick tunnel) is this
	// gateway's own: it stays when the peer leaves.
	if err := tab.AttachPeer("shop", b, "acme", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	tab.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP})
	if s := tab.Lookup("shop"); s == nil || !s.Stored || len(s.Upstreams()) != 1 {
		t.Fatalf("stored service after Configure: %+v, want stored with the peer kept", s)
	}
	tab.DetachPeer("shop", b)
	if tab.Lookup("shop") == nil {
		t.Fatal("stored service removed with its last peer")
	}
	if err := tab.AttachPeer("q2", b, "", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	tab.UpsertQuick("q2", model.ProtoHTTP, 0) // a local quick tunnel claims it
	tab.DetachPeer("q2", b)
	if tab.Lookup("q2") == nil {
		t.Fatal("local quick tunnel removed with its last peer")
	}
}

// TestPeersDroppedOnProtocolChange: a service whose protocol or owner
// changes here drops the peers that hold it as the old one.
func TestPeersDroppedOnProtocolChange(t *testing.T) {
	tab := NewTable(nil)
	b := peerAgent("gw-b", &fakeOpener{})
	tab.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP})
	if err := tab.AttachPeer("shop", b, "acme", model.ProtoHTTP, 0); err != nil {
		t.Fatal(err)
	}
	local := &Agent{ID: "a", Session: &fakeOpener{}}
	if err := tab.Attach("shop", local); err != nil {
		t.Fatal(err)
	}
	tab.Configure(model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoTLS})
	s := tab.Lookup("shop")
	if len(s.Upstreams()) != 1 || s.Upstreams()[0].Agent != local {
		t.Fatalf("upstreams %v after the protocol changed, want the local agent only", s.Upstreams())
	}
	if tab.HasPeer("shop", b) {
		t.Fatal("HasPeer true after the peer was dropped")
	}

	if err := tab.AttachPeer("shop", b, "acme", model.ProtoTLS, 0); err != nil {
		t.Fatal(err)
	}
	tab.Configure(model.Service{Name: "shop", Tenant: "other", Protocol: model.ProtoTLS})
	if tab.HasPeer("shop", b) {
		t.Fatal("a peer holding shop for acme kept after shop became other's")
	}
}
