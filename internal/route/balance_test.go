package route

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

// directService configures a service with direct upstreams of the given weights.
func directService(t *testing.T, tb *Table, lb model.LBPolicy, weights ...int) *Service {
	t.Helper()
	sv := model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoHTTP, LB: lb}
	for i, w := range weights {
		sv.Upstreams = append(sv.Upstreams, model.Upstream{URL: fmt.Sprintf("http://[2001:db8::%d]:8080", i+1), Weight: w})
	}
	return tb.Configure(sv)
}

func counts(s *Service, n int, client func(i int) string, now time.Time) map[*Upstream]int {
	m := map[*Upstream]int{}
	for i := range n {
		m[s.pick(s.list(), client(i), nil, now, false)]++
	}
	return m
}

func TestRoundRobinWeights(t *testing.T) {
	s := directService(t, NewTable(nil), "", 1, 2, 3)
	now := time.Now()
	got := counts(s, 600, func(int) string { return "" }, now)
	for i, u := range s.Upstreams() {
		if want := 100 * (i + 1); got[u] != want {
			t.Errorf("upstream %d (weight %d) got %d of 600, want %d", i, u.Weight(), got[u], want)
		}
	}
	// Smooth: a heavy upstream is interleaved, not picked in a long run.
	s = directService(t, NewTable(nil), model.LBRoundRobin, 5, 1, 1)
	run, maxRun := 0, 0
	var last *Upstream
	for range 70 {
		u := s.pick(s.list(), "", nil, now, false)
		if u == last {
			run++
		} else {
			run = 1
		}
		last = u
		maxRun = max(maxRun, run)
	}
	if maxRun > 4 {
		t.Errorf("weight 5 of 7 picked %d times in a row; want an interleaved schedule", maxRun)
	}
}

func TestPickSkipsUnusableAndTried(t *testing.T) {
	s := directService(t, NewTable(nil), "", 1, 1, 1)
	ups := s.Upstreams()
	now := time.Now()
	p := s.policy()
	for range p.MaxFailures {
		ups[0].Health.RequestResult(p, false, now)
	}
	for i := range 30 {
		if u := s.pick(s.list(), "", nil, now, false); u == ups[0] {
			t.Fatalf("pick %d chose the ejected upstream", i)
		}
	}
	if u := s.pick(s.list(), "", []*Upstream{ups[1]}, now, false); u != ups[2] {
		t.Errorf("pick with upstream 1 tried and 0 ejected = %v, want upstream 2", u)
	}
	// With the others tried (or gone), the ejected one is used after all:
	// passive ejection never takes out the last upstream.
	if u := s.pick(s.list(), "", []*Upstream{ups[1], ups[2]}, now, false); u != ups[0] {
		t.Errorf("pick with every other upstream tried = %v, want the ejected one", u)
	}
	if u := s.pick(s.list(), "", ups, now, false); u != nil {
		t.Errorf("pick with every upstream tried = %v, want nil", u)
	}
	// After the cool-down the ejected upstream is picked again.
	later := now.Add(p.Cooldown + time.Millisecond)
	if got := counts(s, 30, func(int) string { return "" }, later); got[ups[0]] != 10 {
		t.Errorf("after the cool-down upstream 0 got %d of 30 picks, want 10", got[ups[0]])
	}
}

func TestLeastRequest(t *testing.T) {
	s := directService(t, NewTable(nil), model.LBLeastRequest, 1, 1, 2)
	ups := s.Upstreams()
	now := time.Now()
	ups[0].Begin()
	ups[0].Begin()
	ups[1].Begin()
	// outstanding+1 per weight: 3/1, 2/1, 1/2: upstream 2.
	if u := s.pick(s.list(), "", nil, now, false); u != ups[2] {
		t.Fatalf("least_request picked %v, want the idle heavy upstream", u)
	}
	for range 4 {
		ups[2].Begin()
	}
	// now 3/1, 2/1, 5/2=2.5: upstream 1.
	if u := s.pick(s.list(), "", nil, now, false); u != ups[1] {
		t.Fatalf("least_request picked %v, want upstream 1", u)
	}
	ups[0].End()
	ups[0].End()
	if u := s.pick(s.list(), "", nil, now, false); u != ups[0] {
		t.Fatalf("least_request picked %v, want upstream 0 once its requests ended", u)
	}
	if ups[0].Outstanding() != 0 {
		t.Errorf("Outstanding = %d, want 0", ups[0].Outstanding())
	}
	// Ties spread over the tied upstreams.
	s = directService(t, NewTable(nil), model.LBLeastRequest, 1, 1)
	got := counts(s, 100, func(int) string { return "" }, now)
	if len(got) != 2 {
		t.Errorf("idle equal upstreams: picks went to %d upstreams, want both", len(got))
	}
}

func TestIPHashSticky(t *testing.T) {
	tb := NewTable(nil)
	s := directService(t, tb, model.LBIPHash, 1, 3)
	now := time.Now()
	ip := func(i int) string { return fmt.Sprintf("198.51.%d.%d", i/250, i%250) }
	first := map[string]*Upstream{}
	for i := range 2000 {
		u := s.pick(s.list(), ip(i), nil, now, false)
		if again := s.pick(s.list(), ip(i), nil, now, false); again != u {
			t.Fatalf("client %s went to %v then %v", ip(i), u, again)
		}
		first[ip(i)] = u
	}
	got := counts(s, 2000, ip, now)
	heavy := s.Upstreams()[1]
	if share := float64(got[heavy]) / 2000; share < 0.70 || share > 0.80 {
		t.Errorf("weight 3 of 4 took %.2f of clients, want about 0.75", share)
	}
	// Adding an upstream moves clients only to the new one.
	s2 := directService(t, tb, model.LBIPHash, 1, 3, 2)
	moved := 0
	for i := range 2000 {
		u := s2.pick(s2.list(), ip(i), nil, now, false)
		if u.Key() != first[ip(i)].Key() {
			moved++
			if u != s2.Upstreams()[2] {
				t.Fatalf("client %s moved from %s to %s, not to the new upstream", ip(i), first[ip(i)].Key(), u.Key())
			}
		}
	}
	if moved == 0 || moved > 800 {
		t.Errorf("%d of 2000 clients moved to the new upstream (weight 2 of 6), want about a third", moved)
	}
	// A client whose upstream is ejected goes elsewhere, and comes back.
	c := ip(7)
	u := s2.pick(s2.list(), c, nil, now, false)
	p := s2.policy()
	for range p.MaxFailures {
		u.Health.RequestResult(p, false, now)
	}
	if v := s2.pick(s2.list(), c, nil, now, false); v == u || v == nil {
		t.Fatalf("client of an ejected upstream picked %v", v)
	}
	if v := s2.pick(s2.list(), c, nil, now.Add(p.Cooldown+time.Second), false); v != u {
		t.Errorf("after the cool-down the client went to %v, want its own upstream back", v)
	}
}

func TestHealthActiveThresholds(t *testing.T) {
	p := PolicyFor(&model.HealthCheck{HealthyThreshold: 2, UnhealthyThreshold: 3}, nil)
	var h Health
	now := time.Unix(1000, 0)
	steps := []struct {
		ok      bool
		changed bool
		usable  bool
	}{
		{false, false, true}, {false, false, true}, {true, false, true}, // a pass resets the count
		{false, false, true}, {false, false, true}, {false, true, false}, // third failure in a row
		{true, false, false}, {false, false, false}, {true, false, false}, {true, true, true},
	}
	for i, st := range steps {
		if changed := h.CheckResult(&p, st.ok); changed != st.changed {
			t.Fatalf("step %d: CheckResult(%v) changed = %v, want %v", i, st.ok, changed, st.changed)
		}
		if got := h.Usable(now); got != st.usable {
			t.Fatalf("step %d: Usable = %v, want %v (state %s)", i, got, st.usable, h.State(now))
		}
	}
}

func TestHealthPassiveEjection(t *testing.T) {
	p := PolicyFor(nil, &model.PassiveHealth{MaxFailures: 3, Cooldown: model.Duration(10 * time.Second)})
	var h Health
	now := time.Unix(1000, 0)
	h.RequestResult(&p, false, now)
	h.RequestResult(&p, false, now)
	h.RequestResult(&p, true, now) // a success resets the count
	h.RequestResult(&p, false, now)
	h.RequestResult(&p, false, now)
	if !h.Usable(now) {
		t.Fatal("ejected after 2 consecutive failures; want 3")
	}
	if !h.RequestResult(&p, false, now) {
		t.Fatal("third consecutive failure did not eject")
	}
	if h.Usable(now.Add(9*time.Second)) || h.State(now) != "ejected" {
		t.Fatal("usable within the cool-down")
	}
	if !h.Usable(now.Add(10 * time.Second)) {
		t.Fatal("not usable after the cool-down")
	}
	// On probation: one failure ejects again, for twice as long.
	now = now.Add(11 * time.Second)
	if !h.RequestResult(&p, false, now) {
		t.Fatal("a failure on probation did not eject")
	}
	if h.Usable(now.Add(19*time.Second)) || !h.Usable(now.Add(20*time.Second)) {
		t.Fatal("second ejection should last 2 cool-downs")
	}
	// A success after it clears everything: three failures needed again.
	now = now.Add(21 * time.Second)
	h.RequestResult(&p, true, now)
	h.RequestResult(&p, false, now)
	if !h.Usable(now) {
		t.Fatal("one failure after a success ejected")
	}
	// An active pass brings an ejected upstream back at once.
	h.RequestResult(&p, false, now)
	h.RequestResult(&p, false, now)
	if h.Usable(now) {
		t.Fatal("not ejected")
	}
	ap := PolicyFor(&model.HealthCheck{HealthyThreshold: 1}, nil)
	h.CheckResult(&ap, false)
	h.CheckResult(&ap, false)
	h.CheckResult(&ap, false)
	h.CheckResult(&ap, true)
	if !h.Usable(now) {
		t.Fatal("a passing active check did not clear the ejection")
	}
	// max_failures -1 turns ejection off; ignore_5xx counts only failures.
	off := PolicyFor(nil, &model.PassiveHealth{MaxFailures: -1})
	var h2 Health
	for range 100 {
		h2.RequestResult(&off, false, now)
	}
	if !h2.Usable(now) {
		t.Fatal("ejected with passive ejection off")
	}
	if q := PolicyFor(nil, &model.PassiveHealth{Ignore5xx: true}); q.Count5xx {
		t.Fatal("ignore_5xx still counts 5xx")
	}
}

func TestConfigureKeepsUpstreams(t *testing.T) {
	tb := NewTable(nil)
	s := directService(t, tb, "", 1, 1)
	a, b := s.Upstreams()[0], s.Upstreams()[1]
	sv := s.Spec()
	sv.Upstreams = append([]model.Upstream{sv.Upstreams[1]}, model.Upstream{URL: "http://[2001:db8::9]:80"})
	s2 := tb.Configure(sv)
	if s2 != s {
		t.Fatal("Configure with the same owner and protocol replaced the entry")
	}
	ups := s.Upstreams()
	if len(ups) != 2 || ups[0] != b || ups[1].Key() != "http://[2001:db8::9]:80" {
		t.Fatalf("upstreams after change = %v", ups)
	}
	if !a.Gone() || b.Gone() {
		t.Errorf("removed upstream Gone=%v, kept one Gone=%v", a.Gone(), b.Gone())
	}
	// An agent attached stays across a change of direct upstreams.
	ag := &Agent{ID: "x", Session: &fakeOpener{}}
	if err := tb.Attach("web", ag); err != nil {
		t.Fatal(err)
	}
	sv.Upstreams = nil
	tb.Configure(sv)
	if got := s.Upstreams(); len(got) != 1 || got[0].Agent != ag {
		t.Fatalf("upstreams = %v, want only the agent", got)
	}
	if !s.Live() {
		t.Error("service with an agent not live")
	}
}

func TestServiceWithoutUsableUpstreamNotLive(t *testing.T) {
	s := directService(t, NewTable(nil), "", 1)
	if !s.Live() {
		t.Fatal("service with a direct upstream not live")
	}
	u := s.Upstreams()[0]
	p := s.policy()
	for range p.MaxFailures {
		u.Report(false)
	}
	// Ejecting the only upstream would turn its errors into 503s: it keeps
	// its traffic.
	if u.Health.State(time.Now()) != "healthy" {
		t.Fatalf("state %s, want healthy: a lone upstream is not ejected", u.Health.State(time.Now()))
	}
	if !s.Live() || s.Pick("192.0.2.1") != u {
		t.Fatal("the only upstream, passively ejected, no longer gets requests")
	}
	// Active checks that fail take it out for real.
	hp := PolicyFor(&model.HealthCheck{UnhealthyThreshold: 1}, nil)
	u.Health.CheckResult(&hp, false)
	if s.Live() {
		t.Fatal("service whose only upstream fails active checks still live")
	}
	if got := s.Pick("192.0.2.1"); got != nil {
		t.Fatalf("Pick = %v, want nil", got)
	}
}

// TestActiveChecks runs real checks against a direct upstream whose answer
// the test switches.
func TestActiveChecks(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/healthz" || r.Host != "web.gw.test" {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	tb := NewTable(nil)
	tb.Domain = "gw.test"
	tb.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", u.HostPort())
	}
	defer tb.Close()
	sv := model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoHTTP,
		Upstreams: []model.Upstream{{URL: srv.URL}},
		Health: &model.HealthCheck{Path: "/healthz", Interval: model.Duration(20 * time.Millisecond),
			HealthyThreshold: 1, UnhealthyThreshold: 2}}
	s := tb.Configure(sv)
	p := s.policy()
	if err := tb.Check(context.Background(), s, s.Upstreams()[0], p); err != nil {
		t.Fatalf("Check of a healthy upstream: %v", err)
	}
	waitFor(t, "checks to run", func() bool { return hits.Load() >= 3 })
	if !s.Live() {
		t.Fatal("healthy upstream not live")
	}
	status.Store(503)
	waitFor(t, "the upstream to turn unhealthy", func() bool { return !s.Live() })
	if st := s.Upstreams()[0].Health.State(time.Now()); st != "unhealthy" {
		t.Errorf("state = %s, want unhealthy", st)
	}
	status.Store(204)
	waitFor(t, "the upstream to come back", s.Live)
	// A tcp check only connects.
	sv.Health = &model.HealthCheck{Type: "tcp", Interval: model.Duration(time.Hour)}
	s = tb.Configure(sv)
	before := hits.Load()
	if err := tb.Check(context.Background(), s, s.Upstreams()[0], s.policy()); err != nil {
		t.Fatalf("tcp Check: %v", err)
	}
	if hits.Load() != before {
		t.Error("tcp check sent an HTTP request")
	}
	srv.Close()
	if err := tb.Check(context.Background(), s, s.Upstreams()[0], s.policy()); err == nil {
		t.Error("tcp Check of a closed server passed")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkPick measures one pick per policy among 4 upstreams, in parallel
// as the request path does.
func BenchmarkPick(b *testing.B) {
	for _, lb := range []model.LBPolicy{model.LBRoundRobin, model.LBLeastRequest, model.LBIPHash} {
		b.Run(string(lb), func(b *testing.B) {
			sv := model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoHTTP, LB: lb}
			for i := range 4 {
				sv.Upstreams = append(sv.Upstreams, model.Upstream{URL: fmt.Sprintf("http://[2001:db8::%d]:80", i+1), Weight: i + 1})
			}
			s := NewTable(nil).Configure(sv)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if u := s.Pick("198.51.100.7"); u == nil {
						b.Fatal("no upstream")
					}
				}
			})
		})
	}
}

// TestChecksTurnedOffBringUpstreamBack: an upstream that active checks took
// out is usable again once the checks are turned off (nothing else would
// ever bring it back).
func TestChecksTurnedOffBringUpstreamBack(t *testing.T) {
	tb := NewTable(nil)
	sv := model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoHTTP,
		Upstreams: []model.Upstream{{URL: "http://[2001:db8::1]:80"}},
		Health:    &model.HealthCheck{Interval: model.Duration(time.Hour), UnhealthyThreshold: 1}}
	s := tb.Configure(sv)
	defer tb.Close()
	u := s.Upstreams()[0]
	u.Health.CheckResult(s.policy(), false)
	if s.Live() {
		t.Fatal("upstream failing its check still live")
	}
	sv.Health = nil
	tb.Configure(sv)
	if s.Upstreams()[0] != u || !s.Live() {
		t.Fatalf("with checks off the upstream stays out (state %s)", u.Health.State(time.Now()))
	}
}

// TestAgentShareNotPerConnection: an agent's weight is shared by its
// tunnel connections: an agent with 3 connections gets the same share as
// one with 1, under round robin and least request alike.
func TestAgentShareNotPerConnection(t *testing.T) {
	for _, lb := range []model.LBPolicy{model.LBRoundRobin, model.LBLeastRequest} {
		tb := NewTable(nil)
		s := tb.Configure(model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoHTTP, LB: lb})
		for range 3 {
			if err := tb.Attach("web", &Agent{ID: "a", Tenant: "acme", Session: &fakeOpener{}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tb.Attach("web", &Agent{ID: "b", Tenant: "acme", Session: &fakeOpener{}}); err != nil {
			t.Fatal(err)
		}
		perAgent := map[string]int{}
		perConn := map[*Upstream]int{}
		for range 600 {
			u := s.Pick("")
			perAgent[u.Agent.ID]++
			perConn[u]++
			if lb == model.LBLeastRequest {
				u.Begin() // requests stay outstanding: least request spreads by them
			}
		}
		if perAgent["a"] != 300 || perAgent["b"] != 300 {
			t.Errorf("%s: agent a (3 connections) got %d, agent b (1) got %d; want 300 each", lb, perAgent["a"], perAgent["b"])
		}
		if len(perConn) != 4 {
			t.Errorf("%s: picks went to %d connections, want all 4", lb, len(perConn))
		}
	}
}

// TestDialCountsOutstanding: a connection from Service.Dial (passthrough)
// is a request in flight at its upstream until closed.
func TestDialCountsOutstanding(t *testing.T) {
	tb := NewTable(nil)
	s := tb.Configure(model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoTLS, LB: model.LBLeastRequest})
	if err := tb.Attach("web", &Agent{ID: "a", Session: &fakeOpener{}}); err != nil {
		t.Fatal(err)
	}
	c, u, err := s.Dial(&tunnel.Header{Kind: tunnel.KindTLS, Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if u.Outstanding() != 1 {
		t.Fatalf("outstanding %d with a connection open, want 1", u.Outstanding())
	}
	c.Close()
	c.Close()
	if u.Outstanding() != 0 {
		t.Fatalf("outstanding %d after close, want 0", u.Outstanding())
	}
}

// TestEjectionCap: passive ejection takes out at most half of a service's
// upstreams at once.
func TestEjectionCap(t *testing.T) {
	s := directService(t, NewTable(nil), "", 1, 1, 1, 1)
	p := s.policy()
	for _, u := range s.Upstreams() {
		for range p.MaxFailures {
			u.Report(false)
		}
	}
	out := 0
	for _, u := range s.Upstreams() {
		if u.Health.State(time.Now()) == "ejected" {
			out++
		}
	}
	if out != 2 {
		t.Fatalf("%d of 4 upstreams ejected, want 2 (half)", out)
	}
}

// TestActiveCheckProxyProtocol: a backend that wants a PROXY header first
// gets a LOCAL one (v2) or UNKNOWN (v1) on the health check's connection.
func TestActiveCheckProxyProtocol(t *testing.T) {
	for _, v := range []int{1, 2} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })}
		go srv.Serve(&pp.Listener{Listener: ln}) // default policy: REQUIRE
		defer srv.Close()
		tb := NewTable(nil)
		tb.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", u.HostPort())
		}
		s := tb.Configure(model.Service{Name: "web", Tenant: "acme", Protocol: model.ProtoHTTP, ProxyProtocol: v,
			Upstreams: []model.Upstream{{URL: "http://" + ln.Addr().String()}},
			Health:    &model.HealthCheck{Path: "/", Interval: model.Duration(time.Hour)}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := tb.Check(ctx, s, s.Upstreams()[0], s.policy()); err != nil {
			t.Errorf("v%d: Check of a PROXY-protocol backend: %v", v, err)
		}
		cancel()
		tb.Close()
	}
}
