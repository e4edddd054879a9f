package control_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

const waitFor = 10 * time.Second

// harness is a control.Server over a bolt store and a routing table.
type harness struct {
	ctx   context.Context
	srv   *control.Server
	st    *store.Bolt
	table *route.Table
}

func newHarness(t *testing.T, configure func(*control.Server)) *harness {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	table := route.NewTable(nil)
	srv := &control.Server{
		Store: st, Table: table, Open: true, GatewayID: "gw-test",
		URL: func(name string, _ model.Protocol) string { return "https://" + name + ".localhost:8443" },
	}
	if configure != nil {
		configure(srv)
	}
	return &harness{ctx: t.Context(), srv: srv, st: st, table: table}
}

// addTenant stores a tenant and returns its token.
func (h *harness) addTenant(t *testing.T, name string) string {
	t.Helper()
	tok := model.NewToken()
	if err := store.CreateTenant(h.ctx, h.st, model.Tenant{Name: name, TokenHash: model.HashToken(tok), Created: time.Now()}); err != nil {
		t.Fatalf("CreateTenant(%s): %v", name, err)
	}
	return tok
}

// fakeAgent is the agent side of one session, written by hand.
type fakeAgent struct {
	sess    *tunnel.Session
	ctrl    net.Conn
	welcome *tunnel.Welcome
	done    chan struct{} // closed when ServeConn returned
}

// connect runs ServeConn over a pipe and sends hello; it returns after the welcome.
func (h *harness) connect(t *testing.T, hello *tunnel.Hello) *fakeAgent {
	t.Helper()
	gw, ag := net.Pipe()
	return h.connectOver(t, gw, ag, hello)
}

func (h *harness) connectOver(t *testing.T, gw, ag net.Conn, hello *tunnel.Hello) *fakeAgent {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.srv.ServeConn(h.ctx, gw)
	}()
	sess, err := tunnel.Client(ag, nil)
	if err != nil {
		t.Fatalf("tunnel.Client: %v", err)
	}
	fa := &fakeAgent{sess: sess, done: done}
	t.Cleanup(func() {
		sess.Close()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Errorf("ServeConn did not return after the agent closed its session")
		}
	})
	fa.ctrl, err = sess.Open()
	if err != nil {
		t.Fatalf("open control stream: %v", err)
	}
	// yamux may report a write as failed when the session ended right after
	// the frame went out (a refusal is that quick), so read the welcome anyway.
	werr := tunnel.WriteMessage(fa.ctrl, &tunnel.Message{Type: tunnel.MsgHello, Hello: hello})
	fa.ctrl.SetReadDeadline(time.Now().Add(waitFor))
	m, err := tunnel.ReadMessage(fa.ctrl)
	if err != nil {
		t.Fatalf("read welcome: %v (write hello: %v)", err, werr)
	}
	fa.ctrl.SetReadDeadline(time.Time{})
	if m.Type != tunnel.MsgWelcome {
		t.Fatalf("got %q, want welcome", m.Type)
	}
	fa.welcome = m.Welcome
	return fa
}

// waitDone waits until ServeConn returned.
func (fa *fakeAgent) waitDone(t *testing.T) {
	t.Helper()
	select {
	case <-fa.done:
	case <-time.After(waitFor):
		t.Fatal("ServeConn did not return")
	}
}

func hello(id, token string, specs ...tunnel.ServiceSpec) *tunnel.Hello {
	return &tunnel.Hello{Version: tunnel.ProtocolVersion, Token: token, AgentID: id, AgentVersion: "test", Services: specs}
}

func spec(name string, proto model.Protocol) tunnel.ServiceSpec {
	return tunnel.ServiceSpec{Name: name, Protocol: string(proto)}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func wantAdmitted(t *testing.T, fa *fakeAgent) {
	t.Helper()
	if fa.welcome.Error != "" {
		t.Fatalf("welcome error %q, want the agent admitted", fa.welcome.Error)
	}
	if fa.welcome.GatewayID != "gw-test" {
		t.Errorf("welcome gateway id %q, want gw-test", fa.welcome.GatewayID)
	}
}

func wantRefused(t *testing.T, fa *fakeAgent, permanent bool, contains string) {
	t.Helper()
	w := fa.welcome
	if w.Error == "" {
		t.Fatalf("welcome %+v admitted the agent, want refused with %q", w, contains)
	}
	all := w.Error
	for _, g := range w.Services {
		all += " | " + g.Error
	}
	if !strings.Contains(all, contains) {
		t.Errorf("refusal %q, want it to contain %q", all, contains)
	}
	if w.Permanent != permanent {
		t.Errorf("refusal %q: Permanent = %v, want %v", all, w.Permanent, permanent)
	}
	fa.waitDone(t)
	select {
	case <-fa.sess.CloseChan():
	case <-time.After(waitFor):
		t.Error("the gateway did not close a refused session")
	}
}

func wantAgents(t *testing.T, h *harness, name string, n int) *route.Service {
	t.Helper()
	var svc *route.Service
	eventually(t, fmt.Sprintf("%d agents on %q", n, name), func() bool {
		svc = h.table.Lookup(name)
		return svc != nil && len(svc.Agents()) == n
	})
	return svc
}

var quickName = regexp.MustCompile(`^[a-z]+-[a-z]+-[0-9]{2}$`)

func TestQuickTunnel(t *testing.T) {
	h := newHarness(t, nil)
	fa := h.connect(t, hello("agent-1", "", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	if len(fa.welcome.Services) != 1 {
		t.Fatalf("got %d grants, want 1", len(fa.welcome.Services))
	}
	g := fa.welcome.Services[0]
	if g.Error != "" || !quickName.MatchString(g.Name) {
		t.Fatalf("grant %+v, want a name like quick-otter-42", g)
	}
	if want := "https://" + g.Name + ".localhost:8443"; g.URL != want {
		t.Errorf("grant URL %q, want %q", g.URL, want)
	}
	if g.Protocol != "http" {
		t.Errorf("grant protocol %q, want http", g.Protocol)
	}
	svc := wantAgents(t, h, g.Name, 1)
	if svc.Tenant != "" || svc.Stored || !svc.Live() {
		t.Errorf("service %+v: want anonymous, not stored, live", svc)
	}
	if a := svc.Agents()[0]; a.ID != "agent-1" || a.Version != "test" || a.Tenant != "" {
		t.Errorf("agent %+v, want id agent-1, version test, no tenant", a)
	}
	if _, err := h.st.Get(h.ctx, store.ServiceKey(g.Name)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a quick tunnel was stored (Get err %v); it must stay in memory", err)
	}

	// Two quick tunnels get two names.
	fb := h.connect(t, hello("agent-2", "", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fb)
	if fb.welcome.Services[0].Name == g.Name {
		t.Errorf("two quick tunnels both got %q", g.Name)
	}
}

func TestRefusedHello(t *testing.T) {
	long := strings.Repeat("x", 65)
	tests := []struct {
		name      string
		configure func(*control.Server)
		hello     *tunnel.Hello
		permanent bool
		contains  string
	}{
		{"closed mode without token", func(s *control.Server) { s.Open = false }, hello("a", "", spec("", model.ProtoHTTP)), true, "requires a tenant token"},
		{"closed mode with name", func(s *control.Server) { s.Open = false }, hello("a", "", spec("shop", model.ProtoHTTP)), true, "requires a tenant token"},
		{"bad token", nil, hello("a", "wgw_nope", spec("shop", model.ProtoHTTP)), true, "token refused"},
		{"bad token in closed mode", func(s *control.Server) { s.Open = false }, hello("a", "wgw_nope", spec("shop", model.ProtoHTTP)), true, "token refused"},
		{"unsupported version", nil, &tunnel.Hello{Version: -1, AgentID: "a", Services: []tunnel.ServiceSpec{spec("", model.ProtoHTTP)}}, true, "version -1 not supported"},
		{"version 0", nil, &tunnel.Hello{Version: 0, AgentID: "a", Services: []tunnel.ServiceSpec{spec("", model.ProtoHTTP)}}, true, "not supported"},
		{"empty agent id", nil, hello("", "", spec("", model.ProtoHTTP)), true, "agent_id"},
		{"long agent id", nil, hello(long, "", spec("", model.ProtoHTTP)), true, "agent_id"},
		{"no services", nil, hello("a", ""), true, "1-64 services, got 0"},
		{"too many services", func(s *control.Server) { s.MaxServicesPerAgent = 2 },
			hello("a", "", spec("", model.ProtoHTTP), spec("", model.ProtoHTTP), spec("", model.ProtoHTTP)), true, "1-2 services, got 3"},
		{"only a reserved name", nil, hello("a", "", spec("www", model.ProtoHTTP)), true, "reserved"},
		{"only a bad protocol", nil, hello("a", "", spec("shop", "tcp")), true, `protocol "tcp" not accepted`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.configure)
			fa := h.connect(t, tt.hello)
			wantRefused(t, fa, tt.permanent, tt.contains)
			if n := len(h.table.AgentsOf()); n != 0 {
				t.Errorf("%d agents attached after a refusal", n)
			}
		})
	}
}

func TestTenantOwnership(t *testing.T) {
	h := newHarness(t, nil)
	tokA := h.addTenant(t, "alpha")
	tokB := h.addTenant(t, "beta")

	a1 := h.connect(t, hello("a1", tokA, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a1)
	if g := a1.welcome.Services[0]; g.Name != "shop" || g.URL != "https://shop.localhost:8443" {
		t.Errorf("grant %+v, want shop with its URL", g)
	}
	var sv model.Service
	if _, err := store.GetJSON(h.ctx, h.st, store.ServiceKey("shop"), &sv); err != nil {
		t.Fatalf("service shop not stored: %v", err)
	}
	if sv.Tenant != "alpha" || sv.Protocol != model.ProtoHTTP || sv.Created.IsZero() {
		t.Errorf("stored service %+v, want tenant alpha, http, a creation time", sv)
	}
	svc := wantAgents(t, h, "shop", 1)
	if svc.Tenant != "alpha" || !svc.Stored {
		t.Errorf("table entry %+v, want tenant alpha, stored", svc)
	}

	// Another tenant cannot take it, live or not.
	b1 := h.connect(t, hello("b1", tokB, spec("shop", model.ProtoHTTP)))
	wantRefused(t, b1, true, "belongs to another tenant")
	// Nor can an anonymous quick tunnel.
	q := h.connect(t, hello("q1", "", spec("shop", model.ProtoHTTP)))
	wantRefused(t, q, true, "belongs to another tenant")

	a1.sess.Close()
	a1.waitDone(t)
	wantAgents(t, h, "shop", 0)
	b2 := h.connect(t, hello("b2", tokB, spec("shop", model.ProtoHTTP)))
	wantRefused(t, b2, true, "belongs to another tenant")

	// The owner comes back, possibly with another protocol when no agent is live.
	a2 := h.connect(t, hello("a2", tokA, spec("shop", model.ProtoTLS)))
	wantAdmitted(t, a2)
	if _, err := store.GetJSON(h.ctx, h.st, store.ServiceKey("shop"), &sv); err != nil || sv.Protocol != model.ProtoTLS || sv.Tenant != "alpha" {
		t.Errorf("stored service %+v (err %v), want alpha's, now tls", sv, err)
	}
}

func TestOwnedNameInStoreOnly(t *testing.T) {
	// The table lags the store (another gateway, a slow watch): the store decides.
	h := newHarness(t, nil)
	tokA := h.addTenant(t, "alpha")
	tokB := h.addTenant(t, "beta")
	sv := model.Service{Name: "shop", Tenant: "alpha", Protocol: model.ProtoHTTP, Created: time.Now()}
	if _, err := store.PutJSON(h.ctx, h.st, store.ServiceKey("shop"), &sv, 0); err != nil {
		t.Fatal(err)
	}
	q := h.connect(t, hello("q", "", spec("shop", model.ProtoHTTP)))
	wantRefused(t, q, true, "belongs to another tenant")
	b := h.connect(t, hello("b", tokB, spec("shop", model.ProtoHTTP)))
	wantRefused(t, b, true, "belongs to another tenant")
	a := h.connect(t, hello("a", tokA, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a)
	wantAgents(t, h, "shop", 1)
}

func TestConcurrentClaims(t *testing.T) {
	h := newHarness(t, nil)
	const n = 6
	toks := make([]string, n)
	for i := range toks {
		toks[i] = h.addTenant(t, fmt.Sprintf("t%d", i))
	}
	agents := make([]*fakeAgent, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gw, ag := net.Pipe()
			agents[i] = h.connectOver(t, gw, ag, hello(fmt.Sprintf("a%d", i), toks[i], spec("race", model.ProtoHTTP)))
		}()
	}
	wg.Wait()
	won := 0
	for _, fa := range agents {
		if fa.welcome.Error == "" {
			won++
		}
	}
	if won != 1 {
		t.Fatalf("%d tenants won the name, want exactly 1", won)
	}
	svc := wantAgents(t, h, "race", 1)
	var sv model.Service
	if _, err := store.GetJSON(h.ctx, h.st, store.ServiceKey("race"), &sv); err != nil || sv.Tenant != svc.Tenant {
		t.Errorf("stored owner %q (err %v), table owner %q: want them equal", sv.Tenant, err, svc.Tenant)
	}
}

// acceptStreams serves a fake agent's data streams, reporting each header's service.
func acceptStreams(fa *fakeAgent, got chan<- string) {
	go func() {
		for {
			st, err := fa.sess.Accept()
			if err != nil {
				return
			}
			h, err := tunnel.ReadHeader(st)
			if err == nil {
				got <- h.Service
			}
			st.Close()
		}
	}()
}

func TestReplicasShareStreams(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	r1 := h.connect(t, hello("r1", tok, spec("shop", model.ProtoHTTP)))
	r2 := h.connect(t, hello("r2", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, r1)
	wantAdmitted(t, r2)
	svc := wantAgents(t, h, "shop", 2)

	got1, got2 := make(chan string, 10), make(chan string, 10)
	acceptStreams(r1, got1)
	acceptStreams(r2, got2)
	for range 4 {
		c, _, err := svc.Dial(&tunnel.Header{Kind: tunnel.KindHTTP, Service: "shop", Client: "192.0.2.1:1234"})
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer c.Close()
	}
	n1, n2 := 0, 0
	deadline := time.After(waitFor)
	for n1+n2 < 4 {
		var s string
		select {
		case s = <-got1:
			n1++
		case s = <-got2:
			n2++
		case <-deadline:
			t.Fatalf("%d of 4 streams arrived", n1+n2)
		}
		if s != "shop" {
			t.Errorf("stream header service %q, want shop", s)
		}
	}
	if n1 != 2 || n2 != 2 {
		t.Errorf("streams per replica %d and %d, want 2 and 2", n1, n2)
	}

	// One replica leaving leaves the other serving.
	r1.sess.Close()
	r1.waitDone(t)
	svc = wantAgents(t, h, "shop", 1)
	if !svc.Live() || svc.Agents()[0].ID != "r2" {
		t.Errorf("after r1 left: agents %v, want r2 live", svc.Agents())
	}
}

func TestAnonymousNames(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect(t, hello("anon-1", "", spec("demo", model.ProtoHTTP)))
	wantAdmitted(t, a)
	wantAgents(t, h, "demo", 1)

	// Another anonymous agent cannot take a live quick-tunnel name.
	other := h.connect(t, hello("anon-2", "", spec("demo", model.ProtoHTTP)))
	wantRefused(t, other, false, "in use by another quick tunnel")

	// A tenant cannot take it while it is live either, but may retry.
	tok := h.addTenant(t, "alpha")
	ten := h.connect(t, hello("t1", tok, spec("demo", model.ProtoHTTP)))
	wantRefused(t, ten, false, "in use by a quick tunnel")

	// The same agent reconnecting (its old session not noticed dead yet)
	// replaces the stale session.
	again := h.connect(t, hello("anon-1", "", spec("demo", model.ProtoHTTP)))
	wantAdmitted(t, again)
	select {
	case <-a.sess.CloseChan():
	case <-time.After(waitFor):
		t.Fatal("the stale session was not closed")
	}
	a.waitDone(t)
	svc := wantAgents(t, h, "demo", 1)
	if got := svc.Agents()[0]; got.ID != "anon-1" || got.Session == nil {
		t.Errorf("agent %+v, want the new anon-1 session", got)
	}

	// Once it leaves, the name is free for a tenant, who then owns it.
	again.sess.Close()
	again.waitDone(t)
	wantAgents(t, h, "demo", 0)
	ten2 := h.connect(t, hello("t2", tok, spec("demo", model.ProtoHTTP)))
	wantAdmitted(t, ten2)
	if svc := h.table.Lookup("demo"); svc.Tenant != "alpha" || !svc.Stored {
		t.Errorf("after the tenant claimed it: %+v, want alpha's, stored", svc)
	}
}

func TestAgentIDIsPerTenant(t *testing.T) {
	// An anonymous agent using a tenant agent's id neither replaces it nor
	// breaks the tenant's session count.
	h := newHarness(t, func(s *control.Server) { s.MaxAgentsPerTenant = 1 })
	tok := h.addTenant(t, "alpha")
	ta := h.connect(t, hello("same-id", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, ta)
	anon := h.connect(t, hello("same-id", "", spec("", model.ProtoHTTP)))
	wantAdmitted(t, anon)
	select {
	case <-ta.sess.CloseChan():
		t.Fatal("an anonymous agent with the same id closed the tenant's session")
	case <-time.After(50 * time.Millisecond):
	}
	wantAgents(t, h, "shop", 1)

	ta.sess.Close()
	ta.waitDone(t)
	wantAgents(t, h, "shop", 0)
	// The tenant's one slot is free again.
	tb := h.connect(t, hello("next", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, tb)
}

func TestProtocolMismatchWhileLive(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	a := h.connect(t, hello("a", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a)
	b := h.connect(t, hello("b", tok, spec("shop", model.ProtoTLS)))
	wantRefused(t, b, true, "served as http")
	q := h.connect(t, hello("q1", "", spec("demo", model.ProtoHTTP)))
	wantAdmitted(t, q)
	q2 := h.connect(t, hello("q1", "", spec("demo", model.ProtoH2C)))
	// The same agent id replaces its own stale session, so the protocol may change.
	wantAdmitted(t, q2)
	if svc := wantAgents(t, h, "demo", 1); svc.Protocol != model.ProtoH2C {
		t.Errorf("protocol %q after the reconnect, want h2c", svc.Protocol)
	}
}

func TestPerServiceRefusals(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	fa := h.connect(t, hello("a", tok,
		spec("www", model.ProtoHTTP),
		spec("Bad_Name", model.ProtoHTTP),
		spec("good", model.ProtoHTTP),
		spec("tcpsvc", "tcp"),
		spec(strings.Repeat("n", 64), model.ProtoHTTP),
		spec("", model.ProtoTLS),
	))
	wantAdmitted(t, fa)
	gs := fa.welcome.Services
	if len(gs) != 6 {
		t.Fatalf("got %d grants, want one per service (6)", len(gs))
	}
	for i, want := range []string{"reserved", "upper-case", "", `protocol "tcp"`, "at most 63", ""} {
		g := gs[i]
		if want == "" {
			if g.Error != "" || g.URL == "" {
				t.Errorf("grant %d %+v, want granted with a URL", i, g)
			}
			continue
		}
		if !strings.Contains(g.Error, want) || !g.Permanent || g.URL != "" {
			t.Errorf("grant %d %+v, want a permanent refusal containing %q and no URL", i, g, want)
		}
	}
	// A tenant asking for a random name gets one, and owns it.
	random := gs[5].Name
	if !quickName.MatchString(random) {
		t.Errorf("random name %q for a tenant", random)
	}
	agents := h.table.AgentsOf()
	if len(agents) != 1 || strings.Join(agents[0].Services, ",") != "good,"+random {
		t.Fatalf("attached agents %v, want one serving good and %s", agents, random)
	}
	if svc := h.table.Lookup(random); svc == nil || svc.Tenant != "alpha" || !svc.Stored {
		t.Errorf("random tenant service %+v, want alpha's, stored", svc)
	}
	for _, n := range []string{"www", "Bad_Name", "tcpsvc"} {
		if h.table.Lookup(n) != nil {
			t.Errorf("refused name %q is in the table", n)
		}
	}
}

func TestMaxAgentsPerTenant(t *testing.T) {
	h := newHarness(t, func(s *control.Server) { s.MaxAgentsPerTenant = 2 })
	tok := h.addTenant(t, "alpha")
	a1 := h.connect(t, hello("a1", tok, spec("shop", model.ProtoHTTP)))
	a2 := h.connect(t, hello("a2", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a1)
	wantAdmitted(t, a2)
	a3 := h.connect(t, hello("a3", tok, spec("shop", model.ProtoHTTP)))
	wantRefused(t, a3, false, "tenant alpha already holds 2 agent sessions")

	// Anonymous agents have their own shared budget.
	q1 := h.connect(t, hello("q1", "", spec("", model.ProtoHTTP)))
	q2 := h.connect(t, hello("q2", "", spec("", model.ProtoHTTP)))
	wantAdmitted(t, q1)
	wantAdmitted(t, q2)
	q3 := h.connect(t, hello("q3", "", spec("", model.ProtoHTTP)))
	wantRefused(t, q3, false, "anonymous agents already hold 2")

	// A reconnect of a1 replaces it instead of counting twice.
	a1b := h.connect(t, hello("a1", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a1b)
	a1.waitDone(t)

	// A slot frees up when an agent leaves.
	a2.sess.Close()
	a2.waitDone(t)
	a4 := h.connect(t, hello("a4", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a4)
	wantAgents(t, h, "shop", 2)
}

func TestSessionEndDetaches(t *testing.T) {
	for _, end := range []string{"session closed", "control stream closed", "context cancelled"} {
		t.Run(end, func(t *testing.T) {
			h := newHarness(t, nil)
			ctx, cancel := context.WithCancel(h.ctx)
			defer cancel()
			h.ctx = ctx
			tok := h.addTenant(t, "alpha")
			fa := h.connect(t, hello("a", tok, spec("shop", model.ProtoHTTP)))
			wantAdmitted(t, fa)
			if svc := wantAgents(t, h, "shop", 1); !svc.Live() {
				t.Fatal("service not live while its agent is attached")
			}
			switch end {
			case "session closed":
				fa.sess.Close()
			case "control stream closed":
				fa.ctrl.Close()
			case "context cancelled":
				cancel()
			}
			fa.waitDone(t)
			svc := wantAgents(t, h, "shop", 0)
			if svc.Live() {
				t.Error("service live after its only agent left")
			}
			if !svc.Stored || svc.Tenant != "alpha" {
				t.Errorf("owned service %+v lost its owner when the agent left", svc)
			}
			if n := len(h.table.AgentsOf()); n != 0 {
				t.Errorf("%d agents still attached", n)
			}
		})
	}
}

func TestDrain(t *testing.T) {
	drained := make(chan string, 100)
	h := newHarness(t, func(s *control.Server) {
		s.OnDrain = func(svc *route.Service) {
			select {
			case drained <- svc.Name:
			default:
			}
		}
	})
	tok := h.addTenant(t, "alpha")
	fa := h.connect(t, hello("a", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	svc := wantAgents(t, h, "shop", 1)
	ag := svc.Agents()[0]
	if ag.Draining() {
		t.Fatal("agent draining before it asked")
	}
	if err := tunnel.WriteMessage(fa.ctrl, &tunnel.Message{Type: tunnel.MsgDrain}); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-drained:
		if name != "shop" {
			t.Errorf("OnDrain for %q, want shop", name)
		}
	case <-time.After(waitFor):
		t.Fatal("OnDrain not called")
	}
	if !ag.Draining() {
		t.Error("agent not marked draining")
	}
	if svc.Live() {
		t.Error("service live while its only agent drains")
	}
	if _, _, err := svc.Dial(&tunnel.Header{Kind: tunnel.KindHTTP, Service: "shop"}); !errors.Is(err, route.ErrNoUpstream) {
		t.Errorf("Dial to a draining agent: %v, want ErrNoUpstream", err)
	}
	// It keeps being called while the agent drains (idle pooled streams).
	select {
	case <-drained:
	case <-time.After(waitFor):
		t.Fatal("OnDrain not called again while draining")
	}
	// A second drain message is harmless.
	if err := tunnel.WriteMessage(fa.ctrl, &tunnel.Message{Type: tunnel.MsgDrain}); err != nil {
		t.Fatal(err)
	}
	// While the old session drains, the same tenant may connect a new agent.
	fb := h.connect(t, hello("b", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, fb)
	if !svc.Live() {
		t.Error("service not live with a fresh agent beside a draining one")
	}
	fa.sess.Close()
	fa.waitDone(t)
	wantAgents(t, h, "shop", 1)
}

func TestDrainingQuickTunnelFreesName(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect(t, hello("a", "", spec("demo", model.ProtoHTTP)))
	wantAdmitted(t, a)
	svc := wantAgents(t, h, "demo", 1)
	if err := tunnel.WriteMessage(a.ctrl, &tunnel.Message{Type: tunnel.MsgDrain}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "agent draining", func() bool { return svc.Agents()[0].Draining() })
	b := h.connect(t, hello("b", "", spec("demo", model.ProtoHTTP)))
	wantAdmitted(t, b)
}

func TestHandshakeTimeout(t *testing.T) {
	for _, how := range []string{"no control stream", "no hello", "partial hello"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t, func(s *control.Server) { s.HandshakeTimeout = 100 * time.Millisecond })
			gw, ag := net.Pipe()
			done := make(chan struct{})
			go func() {
				defer close(done)
				h.srv.ServeConn(h.ctx, gw)
			}()
			sess, err := tunnel.Client(ag, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			if how != "no control stream" {
				ctrl, err := sess.Open()
				if err != nil {
					t.Fatal(err)
				}
				if how == "partial hello" {
					ctrl.Write([]byte{0, 0, 1, 0, '{'})
				} else {
					ctrl.Write(nil)
				}
			}
			select {
			case <-done:
			case <-time.After(waitFor):
				t.Fatal("ServeConn still waiting for a silent agent")
			}
			select {
			case <-sess.CloseChan():
			case <-time.After(waitFor):
				t.Fatal("session of a silent agent not closed")
			}
		})
	}
}

func TestNotHelloFirst(t *testing.T) {
	for _, m := range []*tunnel.Message{
		{Type: tunnel.MsgDrain},
		{Type: tunnel.MsgWelcome, Welcome: &tunnel.Welcome{}},
	} {
		h := newHarness(t, nil)
		gw, ag := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.srv.ServeConn(h.ctx, gw)
		}()
		sess, err := tunnel.Client(ag, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctrl, err := sess.Open()
		if err != nil {
			t.Fatal(err)
		}
		// The gateway may close the session before the write returns.
		tunnel.WriteMessage(ctrl, m)
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Fatalf("ServeConn kept a session that opened with %q", m.Type)
		}
		sess.Close()
	}
}

// TestServeConnTLS runs a session over real TLS on loopback, as the edge hands it over.
func TestServeConnTLS(t *testing.T) {
	h := newHarness(t, nil)
	ca, err := certs.LoadOrCreateCA(h.ctx, h.st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerIdentity(h.ctx, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvConn := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13})
		if err := tc.HandshakeContext(h.ctx); err != nil {
			c.Close()
			return
		}
		srvConn <- tc
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	ac, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	var gc net.Conn
	select {
	case gc = <-srvConn:
	case <-time.After(waitFor):
		t.Fatal("no server connection")
	}
	fa := h.connectOver(t, gc, ac, hello("tls-agent", "", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	name := fa.welcome.Services[0].Name
	svc := wantAgents(t, h, name, 1)
	if r := svc.Agents()[0].Remote; !strings.HasPrefix(r, "127.0.0.1:") {
		t.Errorf("agent remote %q, want the TCP peer address", r)
	}
	got := make(chan string, 1)
	acceptStreams(fa, got)
	c, _, err := svc.Dial(&tunnel.Header{Kind: tunnel.KindHTTP, Service: name})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case s := <-got:
		if s != name {
			t.Errorf("stream for %q, want %q", s, name)
		}
	case <-time.After(waitFor):
		t.Fatal("stream not received over TLS")
	}
}

// An agent that opens a stream of its own breaks the protocol: its session ends.
func TestAgentOpenedStreamEndsSession(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	fa := h.connect(t, hello("a", tok, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	if st, err := fa.sess.Open(); err == nil {
		defer st.Close()
	}
	fa.waitDone(t)
	wantAgents(t, h, "shop", 0)
}

// Connections waiting for admission are bounded; one more is closed at once.
func TestMaxPending(t *testing.T) {
	h := newHarness(t, func(s *control.Server) { s.MaxPending = 1; s.HandshakeTimeout = time.Minute })
	// Two silent connections race for the one slot: one holds it, waiting
	// for a hello; the other is refused at once.
	var agents [2]net.Conn
	var done [2]chan struct{}
	for i := range agents {
		gw, ag := net.Pipe()
		agents[i], done[i] = ag, make(chan struct{})
		defer ag.Close()
		go func() { defer close(done[i]); h.srv.ServeConn(h.ctx, gw) }()
		if _, err := tunnel.Client(ag, nil); err != nil {
			t.Fatal(err)
		}
	}
	refused := -1
	select {
	case <-done[0]:
		refused = 0
	case <-done[1]:
		refused = 1
	case <-time.After(waitFor):
		t.Fatal("no connection beyond MaxPending was refused")
	}
	holder := 1 - refused
	select {
	case <-done[holder]:
		t.Fatal("both connections ended; one should wait for its hello")
	default:
	}
	agents[refused].SetReadDeadline(time.Now().Add(waitFor))
	if _, err := agents[refused].Read(make([]byte, 1)); err == nil {
		t.Error("the refused connection is still open")
	}
	agents[holder].Close()
	select {
	case <-done[holder]:
	case <-time.After(waitFor):
		t.Fatal("ServeConn did not return after the waiting agent closed")
	}
	// The slot is free again: an agent is admitted.
	tok := h.addTenant(t, "alpha")
	wantAdmitted(t, h.connect(t, hello("b", tok, spec("shop", model.ProtoHTTP))))
}

// One address cannot take every quick-tunnel slot; tenants are not affected.
func TestMaxAnonymousPerIP(t *testing.T) {
	h := newHarness(t, func(s *control.Server) { s.MaxAnonymousPerIP = 2 })
	// net.Pipe connections all come from the same remote ("pipe").
	for i := 0; i < 2; i++ {
		wantAdmitted(t, h.connect(t, hello(fmt.Sprintf("anon-%d", i), "", spec("", model.ProtoHTTP))))
	}
	wantRefused(t, h.connect(t, hello("anon-2", "", spec("", model.ProtoHTTP))), false, "quick-tunnel sessions, the limit")
	tok := h.addTenant(t, "alpha")
	wantAdmitted(t, h.connect(t, hello("tenant-agent", tok, spec("shop", model.ProtoHTTP))))
}

func helloConn(id, token string, conn int, specs ...tunnel.ServiceSpec) *tunnel.Hello {
	h := hello(id, token, specs...)
	h.Conn = conn
	h.Transport = "tcp"
	return h
}

// Sessions of one agent with different conn indexes serve side by side;
// streams go over all of them.
func TestSiblingConnections(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	c0 := h.connect(t, helloConn("a", tok, 0, spec("shop", model.ProtoHTTP)))
	c1 := h.connect(t, helloConn("a", tok, 1, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, c0)
	wantAdmitted(t, c1)
	select {
	case <-c0.sess.CloseChan():
		t.Fatal("a sibling connection closed the first session")
	case <-time.After(50 * time.Millisecond):
	}
	svc := wantAgents(t, h, "shop", 2)
	for _, a := range svc.Agents() {
		if a.ID != "a" {
			t.Errorf("agent id %q, want a", a.ID)
		}
	}
	got0, got1 := make(chan string, 10), make(chan string, 10)
	acceptStreams(c0, got0)
	acceptStreams(c1, got1)
	for range 4 {
		c, _, err := svc.Dial(&tunnel.Header{Kind: tunnel.KindHTTP, Service: "shop"})
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer c.Close()
	}
	n0, n1 := 0, 0
	deadline := time.After(waitFor)
	for n0+n1 < 4 {
		select {
		case <-got0:
			n0++
		case <-got1:
			n1++
		case <-deadline:
			t.Fatalf("%d of 4 streams arrived", n0+n1)
		}
	}
	if n0 == 0 || n1 == 0 {
		t.Errorf("streams per connection %d and %d, want both used", n0, n1)
	}

	// One connection ending leaves the other serving.
	c0.sess.Close()
	c0.waitDone(t)
	svc = wantAgents(t, h, "shop", 1)
	if !svc.Live() {
		t.Error("service not live with one sibling left")
	}
}

// A new session with the conn index of a live one replaces it; the other
// indexes stay.
func TestSiblingReplacedBySameIndex(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	c0 := h.connect(t, helloConn("a", tok, 0, spec("shop", model.ProtoHTTP)))
	c1 := h.connect(t, helloConn("a", tok, 1, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, c0)
	wantAdmitted(t, c1)
	wantAgents(t, h, "shop", 2)

	c1b := h.connect(t, helloConn("a", tok, 1, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, c1b)
	select {
	case <-c1.sess.CloseChan():
	case <-time.After(waitFor):
		t.Fatal("the stale session of conn 1 was not closed")
	}
	c1.waitDone(t)
	svc := wantAgents(t, h, "shop", 2)
	select {
	case <-c0.sess.CloseChan():
		t.Fatal("replacing conn 1 closed conn 0")
	default:
	}
	for _, a := range svc.Agents() {
		if a.Session == nil || a.Gone() {
			t.Errorf("agent %+v attached but gone", a)
		}
	}
}

// Sibling sessions count as one agent against MaxAgentsPerTenant and
// MaxAnonymousPerIP; the agent is uncounted when its last session ends.
func TestSiblingsCountOnce(t *testing.T) {
	h := newHarness(t, func(s *control.Server) { s.MaxAgentsPerTenant = 1; s.MaxAnonymousPerIP = 1 })
	tok := h.addTenant(t, "alpha")
	var sibs []*fakeAgent
	for i := range control.MaxConnsPerAgent {
		fa := h.connect(t, helloConn("a", tok, i, spec("shop", model.ProtoHTTP)))
		wantAdmitted(t, fa)
		sibs = append(sibs, fa)
	}
	wantAgents(t, h, "shop", control.MaxConnsPerAgent)
	wantRefused(t, h.connect(t, helloConn("b", tok, 0, spec("shop", model.ProtoHTTP))), false, "tenant alpha already holds 1 agent sessions")

	// Anonymous: the same, per IP.
	q0 := h.connect(t, helloConn("q", "", 0, spec("", model.ProtoHTTP)))
	q1 := h.connect(t, helloConn("q", "", 1, spec("", model.ProtoHTTP)))
	wantAdmitted(t, q0)
	wantAdmitted(t, q1)
	wantRefused(t, h.connect(t, helloConn("q2", "", 0, spec("", model.ProtoHTTP))), false, "anonymous agents already hold 1")

	// All but one sibling leave: still counted.
	for _, fa := range sibs[1:] {
		fa.sess.Close()
		fa.waitDone(t)
	}
	wantAgents(t, h, "shop", 1)
	wantRefused(t, h.connect(t, helloConn("b", tok, 0, spec("shop", model.ProtoHTTP))), false, "already holds 1")
	// The last one leaves: the slot is free.
	sibs[0].sess.Close()
	sibs[0].waitDone(t)
	wantAdmitted(t, h.connect(t, helloConn("b", tok, 0, spec("shop", model.ProtoHTTP))))

	q0.sess.Close()
	q0.waitDone(t)
	q1.sess.Close()
	q1.waitDone(t)
	wantAdmitted(t, h.connect(t, helloConn("q2", "", 0, spec("", model.ProtoHTTP))))
}

// Siblings asking for a random name at once all get the same one, and do
// not conflict over it.
func TestSiblingsShareQuickName(t *testing.T) {
	for _, anonymous := range []bool{true, false} {
		t.Run(fmt.Sprintf("anonymous=%v", anonymous), func(t *testing.T) {
			h := newHarness(t, nil)
			tok := ""
			if !anonymous {
				tok = h.addTenant(t, "alpha")
			}
			c0 := h.connect(t, helloConn("a", tok, 0, spec("", model.ProtoHTTP), spec("", model.ProtoTLS)))
			c1 := h.connect(t, helloConn("a", tok, 1, spec("", model.ProtoHTTP), spec("", model.ProtoTLS)))
			wantAdmitted(t, c0)
			wantAdmitted(t, c1)
			for i := range 2 {
				n0, n1 := c0.welcome.Services[i].Name, c1.welcome.Services[i].Name
				if n0 == "" || n0 != n1 {
					t.Errorf("service %d: siblings got names %q and %q, want the same", i, n0, n1)
				}
				wantAgents(t, h, n0, 2)
			}
			if c0.welcome.Services[0].Name == c0.welcome.Services[1].Name {
				t.Error("two services got one name")
			}
			// A sibling asking by the name (a reconnect) gets it too.
			c2 := h.connect(t, helloConn("a", tok, 2, spec(c0.welcome.Services[0].Name, model.ProtoHTTP)))
			wantAdmitted(t, c2)
			wantAgents(t, h, c0.welcome.Services[0].Name, 3)
			// Another agent does not get it.
			if anonymous {
				wantRefused(t, h.connect(t, helloConn("b", "", 0, spec(c0.welcome.Services[0].Name, model.ProtoHTTP))), false, "in use by another quick tunnel")
			}
		})
	}
}

func TestConnIndexRange(t *testing.T) {
	for _, conn := range []int{-1, control.MaxConnsPerAgent, 1000} {
		t.Run(fmt.Sprint(conn), func(t *testing.T) {
			h := newHarness(t, nil)
			wantRefused(t, h.connect(t, helloConn("a", "", conn, spec("", model.ProtoHTTP))), true, "conn")
			if n := len(h.table.AgentsOf()); n != 0 {
				t.Errorf("%d agents attached after a refusal", n)
			}
		})
	}
}

// TestAgentWeights: a weight asked in the hello becomes the agent's
// upstream weight for that service; none means 1.
func TestAgentWeights(t *testing.T) {
	h := newHarness(t, nil)
	tok := h.addTenant(t, "alpha")
	heavy := spec("shop", model.ProtoHTTP)
	heavy.Weight = 3
	wantAdmitted(t, h.connect(t, hello("r1", tok, heavy)))
	wantAdmitted(t, h.connect(t, hello("r2", tok, spec("shop", model.ProtoHTTP))))
	svc := wantAgents(t, h, "shop", 2)
	got := map[string]int{}
	for _, u := range svc.Upstreams() {
		got[u.Agent.ID] = u.Weight()
	}
	if got["r1"] != 3 || got["r2"] != 1 {
		t.Errorf("weights %v, want r1 3 and r2 1", got)
	}
}

// TestServeQUIC runs sessions over QUIC on loopback, as the edge's UDP
// listener hands them over; a QUIC and a TCP connection of one agent are
// siblings like any others.
func TestServeQUIC(t *testing.T) {
	h := newHarness(t, nil)
	ca, err := certs.LoadOrCreateCA(h.ctx, h.st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerIdentity(h.ctx, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13},
		tunnel.QUICConfig(nil, true))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept(h.ctx)
		if err != nil {
			return
		}
		h.srv.ServeQUIC(h.ctx, c)
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	qc, err := quic.DialAddr(h.ctx, ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13},
		tunnel.QUICConfig(nil, false))
	if err != nil {
		t.Fatal(err)
	}
	sess, err := tunnel.ClientQUIC(qc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ctrl, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	hq := helloConn("sib", "", 1, spec("", model.ProtoHTTP))
	hq.Transport = "quic"
	if err := tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgHello, Hello: hq}); err != nil {
		t.Fatal(err)
	}
	ctrl.SetReadDeadline(time.Now().Add(waitFor))
	m, err := tunnel.ReadMessage(ctrl)
	if err != nil || m.Type != tunnel.MsgWelcome {
		t.Fatalf("welcome over quic: %+v %v", m, err)
	}
	wantAdmitted(t, &fakeAgent{welcome: m.Welcome})
	name := m.Welcome.Services[0].Name
	// Its TCP sibling gets the same quick-tunnel name.
	tcpSib := h.connect(t, helloConn("sib", "", 0, spec("", model.ProtoHTTP)))
	wantAdmitted(t, tcpSib)
	if got := tcpSib.welcome.Services[0].Name; got != name {
		t.Errorf("tcp sibling got %q, the quic one %q", got, name)
	}
	svc := wantAgents(t, h, name, 2)
	var transports []string
	for _, a := range svc.Agents() {
		transports = append(transports, a.Session.(*tunnel.Session).Transport())
	}
	if !(transports[0] == "quic" && transports[1] == "tcp") && !(transports[0] == "tcp" && transports[1] == "quic") {
		t.Errorf("session transports %v, want one quic and one tcp", transports)
	}
	// Streams reach the agent over QUIC.
	got := make(chan string, 4)
	acceptStreams(&fakeAgent{sess: sess}, got)
	for _, a := range svc.Agents() {
		if a.Session.(*tunnel.Session).Transport() != "quic" {
			continue
		}
		st, err := a.Session.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := tunnel.WriteHeader(st, &tunnel.Header{Kind: tunnel.KindHTTP, Service: name}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case s := <-got:
		if s != name {
			t.Errorf("stream for %q, want %q", s, name)
		}
	case <-time.After(waitFor):
		t.Fatal("no stream over quic")
	}
	sess.Close()
	select {
	case <-served:
	case <-time.After(waitFor):
		t.Fatal("ServeQUIC did not return after the agent closed")
	}
	wantAgents(t, h, name, 1)
}
