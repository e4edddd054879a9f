package agent

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/tunnel"
)

// followAgent is an agent whose connection loops never get a session (its
// dials wait for their context), so a test drives what it learns by hand.
func followAgent(t *testing.T, cfg *Config) *Agent {
	t.Helper()
	if cfg.Services == nil {
		cfg.Services = []ServiceConfig{{Target: "http://127.0.0.1:1"}}
	}
	cfg.Transport = TransportTCP
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.dialer = func(ctx context.Context, _ string, _ *gateway) (*dialed, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(t.Context())
	a.runCtx = ctx
	t.Cleanup(func() {
		cancel()
		a.loops.Wait()
	})
	return a
}

// got is a session of g up and reporting reported and list, then the lists
// settling.
func (a *Agent) got(g *gateway, reported string, list ...tunnel.GatewayInfo) {
	a.mu.Lock()
	g.up = max(g.up, 1)
	a.mu.Unlock()
	a.gotGateways(g, reported, list)
	a.mu.Lock()
	a.followLocked()
	a.mu.Unlock()
}

// learnedNow returns the learned gateways by id.
func (a *Agent) learnedNow() map[string]*gateway {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.cluster.learned)
}

func learnedIDs(m map[string]*gateway) []string { return slices.Sorted(maps.Keys(m)) }

var (
	infoA = tunnel.GatewayInfo{ID: "a", Addr: "192.0.2.1:443"}
	infoB = tunnel.GatewayInfo{ID: "b", Addr: "192.0.2.2:443"}
	infoC = tunnel.GatewayInfo{ID: "c", Addr: "192.0.2.3:443"}
	infoD = tunnel.GatewayInfo{ID: "d", Addr: "gw-d.example.test:8443"}
)

func TestFollowLearnsAndStays(t *testing.T) {
	a := followAgent(t, &Config{Token: "wgw_tok", Gateways: []GatewayConfig{{Addr: "seed.example.test:443", Fingerprint: "sha256:" + strings.Repeat("ab", 32)}}})
	seed := a.configured[0]
	a.mu.Lock()
	seed.granted[a.services[0]] = "quick-otter-42"
	a.mu.Unlock()

	a.got(seed, "a", infoA, infoB, infoC)
	first := a.learnedNow()
	if ids := learnedIDs(first); !slices.Equal(ids, []string{"b", "c"}) {
		t.Fatalf("learned %v, want b and c (a is the seed)", ids)
	}
	b := first["b"]
	if b.cfg.Addr != infoB.Addr || b.cfg.Token != "wgw_tok" || b.cfg.Fingerprint != seed.cfg.Fingerprint || b.seed != seed {
		t.Errorf("learned b with %+v, want the seed's settings at %s", b.cfg, infoB.Addr)
	}
	if b.tls.ServerName != "192.0.2.2" || b.tls.VerifyPeerCertificate == nil {
		t.Errorf("learned b: TLS name %q (pin set: %v), want the host of its addr and the seed's pin", b.tls.ServerName, b.tls.VerifyPeerCertificate != nil)
	}
	if b.agentID == a.id || b.agentID == first["c"].agentID || b.agentID == seed.agentID {
		t.Errorf("agent ids: seed %s, b %s, c %s: want one each", seed.agentID, b.agentID, first["c"].agentID)
	}
	if b.granted[a.services[0]] != "quick-otter-42" {
		t.Errorf("learned b asks for %q, want the name the seed granted", b.granted[a.services[0]])
	}

	// The same list again, from the seed or from a learned gateway, in
	// another order, or an empty one: nothing changes.
	a.got(seed, "a", infoC, infoA, infoB)
	a.got(b, "b", infoA, infoB, infoC)
	a.got(seed, "a")
	if now := a.learnedNow(); !maps.Equal(now, first) {
		t.Errorf("learned %v after the same list, want the same gateways kept", learnedIDs(now))
	}

	// c leaves, d joins; b stays as it was.
	a.got(seed, "a", infoA, infoB, infoD)
	now := a.learnedNow()
	if ids := learnedIDs(now); !slices.Equal(ids, []string{"b", "d"}) {
		t.Fatalf("learned %v, want b and d", ids)
	}
	if now["b"] != b {
		t.Error("b was replaced")
	}

	// b moves to another address: its connections start again there.
	moved := infoB
	moved.Addr = "192.0.2.22:443"
	a.got(seed, "a", infoA, moved, infoD)
	if nb := a.learnedNow()["b"]; nb == b || nb.cfg.Addr != moved.Addr {
		t.Errorf("b after its move: %+v", nb.cfg)
	}
}

// Leaving stops the learned gateway's loops: its dials see their context end.
func TestFollowLeaveStops(t *testing.T) {
	a := followAgent(t, &Config{Connections: 3, Gateways: []GatewayConfig{{Addr: "seed.example.test:443"}}})
	dialing := make(chan string, 16)
	ended := make(chan string, 16)
	a.dialer = func(ctx context.Context, _ string, g *gateway) (*dialed, error) {
		dialing <- g.id
		<-ctx.Done()
		ended <- g.id
		return nil, ctx.Err()
	}
	a.got(a.configured[0], "a", infoA, infoB)
	for range 3 {
		if id := <-dialing; id != "b" {
			t.Fatalf("dialled %q, want b", id)
		}
	}
	a.got(a.configured[0], "a", infoA)
	for range 3 {
		if id := <-ended; id != "b" {
			t.Fatalf("dial of %q ended, want b's", id)
		}
	}
}

func TestFollowMaxGateways(t *testing.T) {
	a := followAgent(t, &Config{MaxGateways: 2, Gateways: []GatewayConfig{{Addr: "seed.example.test:443"}}})
	seed := a.configured[0]
	a.got(seed, "a", infoA, infoB, infoC, infoD)
	if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"b"}) {
		t.Fatalf("learned %v, want b only (the seed counts first)", ids)
	}
	// A list that puts others first keeps b.
	a.got(seed, "a", infoA, infoC, infoB)
	if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"b"}) {
		t.Errorf("learned %v, want b kept", ids)
	}
	// b leaves: the next one listed takes its place.
	a.got(seed, "a", infoA, infoD, infoC)
	if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"d"}) {
		t.Errorf("learned %v, want d", ids)
	}
}

func TestFollowMaxGatewaysConfiguredFirst(t *testing.T) {
	// Two entries reaching one gateway count once; three configured
	// gateways against a limit of 2 are all kept, and nothing is learned.
	a := followAgent(t, &Config{MaxGateways: 2, Gateways: []GatewayConfig{{Addr: "gw-a1:443"}, {Addr: "gw-a2:443"}, {Addr: "gw-x:443"}}})
	a.got(a.configured[0], "a", infoA, infoB, infoC)
	a.got(a.configured[1], "a", infoA, infoB, infoC)
	// gw-x's id is not known yet: it counts as one.
	if ids := learnedIDs(a.learnedNow()); len(ids) != 0 {
		t.Errorf("learned %v, want none: a and gw-x fill the limit", ids)
	}
}

// A configured gateway the lists name is not learned again; when a
// configured entry turns out to be a learned gateway, the learned one goes.
func TestFollowConfiguredNotLearned(t *testing.T) {
	a := followAgent(t, &Config{Gateways: []GatewayConfig{{Addr: "gw-a:443"}, {Addr: "gw-b.example.test:443"}}})
	a.got(a.configured[0], "a", infoA, infoB, infoC)
	if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"b", "c"}) {
		t.Fatalf("learned %v, want b and c (the second entry's id is not known yet)", ids)
	}
	a.got(a.configured[1], "b", infoA, infoB, infoC)
	if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"c"}) {
		t.Errorf("learned %v, want c only: b is configured", ids)
	}
}

// With the seed down, what the learned gateways say counts; a configured
// gateway that is down for good keeps nothing alive.
func TestFollowFreshViews(t *testing.T) {
	t.Run("seed down", func(t *testing.T) {
		a := followAgent(t, &Config{Gateways: []GatewayConfig{{Addr: "gw-a:443"}}})
		seed := a.configured[0]
		a.got(seed, "a", infoA, infoB, infoC)
		a.mu.Lock()
		seed.up = 0
		a.mu.Unlock()
		b := a.learnedNow()["b"]
		a.got(b, "b", infoA, infoB)
		if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"b"}) {
			t.Errorf("learned %v, want b: c left and b said so", ids)
		}
	})
	t.Run("second seed down for good", func(t *testing.T) {
		a := followAgent(t, &Config{Gateways: []GatewayConfig{{Addr: "gw-a:443"}, {Addr: "gw-x:443"}}})
		one, two := a.configured[0], a.configured[1]
		a.got(one, "a", infoA, infoC)
		a.got(two, "x", infoA, infoC, tunnel.GatewayInfo{ID: "x", Addr: "gw-x:443"})
		a.mu.Lock()
		two.up = 0
		a.mu.Unlock()
		a.got(one, "a", infoA)
		if ids := learnedIDs(a.learnedNow()); len(ids) != 0 {
			t.Errorf("learned %v, want none: the live seed says c left", ids)
		}
	})
	t.Run("lists from a learned gateway that left", func(t *testing.T) {
		a := followAgent(t, &Config{Gateways: []GatewayConfig{{Addr: "gw-a:443"}}})
		seed := a.configured[0]
		a.got(seed, "a", infoA, infoC)
		c := a.learnedNow()["c"]
		a.got(seed, "a", infoA)
		// c drains and still says it is a member: that is not heard.
		a.got(c, "c", infoA, infoC)
		if ids := learnedIDs(a.learnedNow()); len(ids) != 0 {
			t.Errorf("learned %v, want none", ids)
		}
	})
}

func TestFollowRefused(t *testing.T) {
	a := followAgent(t, &Config{MaxGateways: 2, Gateways: []GatewayConfig{{Addr: "gw-a:443"}}})
	seed := a.configured[0]
	a.got(seed, "a", infoA, infoB, infoC)
	b := a.learnedNow()["b"]
	a.refusedBy(b)
	// c takes its place, and b is not tried again while it is listed.
	if ids := learnedIDs(a.learnedNow()); !slices.Equal(ids, []string{"c"}) {
		t.Fatalf("learned %v after b refused, want c", ids)
	}
	a.got(seed, "a", infoA, infoB)
	if ids := learnedIDs(a.learnedNow()); len(ids) != 0 {
		t.Errorf("learned %v, want none: b refused, c left", ids)
	}
	// b leaves and comes back: it is tried again.
	a.got(seed, "a", infoA)
	a.got(seed, "a", infoA, infoB)
	if nb := a.learnedNow()["b"]; nb == nil || nb == b {
		t.Errorf("b after it came back: %v, want learned anew", nb)
	}
}

// Explicit TLS names are kept for learned gateways.
func TestFollowServerName(t *testing.T) {
	a := followAgent(t, &Config{Gateways: []GatewayConfig{{Addr: "192.0.2.1:443", ServerName: "gw.example.test"}}})
	a.got(a.configured[0], "a", infoA, infoD)
	if d := a.learnedNow()["d"]; d.tls.ServerName != "gw.example.test" {
		t.Errorf("learned d verifies %q, want the configured gw.example.test", d.tls.ServerName)
	}
}
