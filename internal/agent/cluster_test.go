package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/agent"
	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// fakeCluster is the membership the gateways of a testCluster share: a
// control.GatewayLister whose list the test sets.
type fakeCluster struct {
	mu      sync.Mutex
	list    []tunnel.GatewayInfo // guarded by mu
	changed chan struct{}        // closed by set; guarded by mu
}

var _ control.GatewayLister = (*fakeCluster)(nil)

func (f *fakeCluster) Gateways() []tunnel.GatewayInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.list)
}

func (f *fakeCluster) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeCluster) set(list ...tunnel.GatewayInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = list
	close(f.changed)
	f.changed = make(chan struct{})
}

// testCluster is n control servers (gw-a, gw-b, ...) on loopback, with
// certificates from one CA, each with its own store and routing table, that
// all list the cluster's members from one fakeCluster. The first, the seed,
// is known to agents as localhost:PORT and its certificate names only
// localhost; the others are listed as 127.0.0.1:PORT and their certificates
// name only that IP address, as a gateway's tunnel certificate names the
// addresses it publishes.
type testCluster struct {
	gws     []*ctlGateway
	infos   []tunnel.GatewayInfo // gws[i] is infos[i], sorted by id
	members *fakeCluster
	caFile  string
	seed    string // the seed's address as configured: localhost:PORT
}

func startCluster(t *testing.T, n int, configure func(i int, s *control.Server)) *testCluster {
	t.Helper()
	ca, err := certs.LoadOrCreateCA(t.Context(), openStore(t), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{members: &fakeCluster{changed: make(chan struct{})}}
	for i := range n {
		names, ips := []string(nil), []net.IP{net.IPv4(127, 0, 0, 1)}
		if i == 0 {
			names, ips = []string{"localhost"}, nil
		}
		ln, tc, caFile := tunnelListenerOf(t, ca, names, ips)
		id := fmt.Sprintf("gw-%c", 'a'+i)
		g := serveCtl(t, openStore(t), ln, tc, caFile, true, false, func(s *control.Server) {
			s.GatewayID = id
			s.Cluster = c.members
			if configure != nil {
				configure(i, s)
			}
		})
		c.gws = append(c.gws, g)
		c.infos = append(c.infos, tunnel.GatewayInfo{ID: id, Addr: g.addr})
		c.caFile = caFile
	}
	c.seed = "localhost:" + portOf(c.gws[0].addr)
	c.members.set(c.infos...)
	return c
}

// only sets the members to gws[i] for each i given.
func (c *testCluster) only(is ...int) {
	var list []tunnel.GatewayInfo
	for _, i := range is {
		list = append(list, c.infos[i])
	}
	c.members.set(list...)
}

// joined is an agent run for a cluster test, with its logs and the
// gateways that granted its services, in order.
type joined struct {
	done chan error
	logs *logStore

	mu    sync.Mutex
	ready []readyEvent // guarded by mu
}

type readyEvent struct {
	addr   string
	grants []tunnel.ServiceGrant
}

func runJoined(t *testing.T, cfg *agent.Config) *joined {
	t.Helper()
	j := &joined{done: make(chan error, 1), logs: &logStore{}}
	a, err := agent.New(cfg, agent.Options{Version: "test", Log: slog.New(logHandler{st: j.logs}),
		OnReady: func(addr string, gs []tunnel.ServiceGrant) {
			j.mu.Lock()
			defer j.mu.Unlock()
			j.ready = append(j.ready, readyEvent{addr, gs})
		}})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { j.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-j.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("agent Run did not return after cancel")
		}
	})
	return j
}

// readies returns how many sessions to addr were welcomed so far; the
// agent has acted on their welcome's gateway list.
func (j *joined) readies(addr string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, e := range j.ready {
		if e.addr == addr {
			n++
		}
	}
	return n
}

// waitReadies waits until addr welcomed n sessions in all.
func (j *joined) waitReadies(t *testing.T, addr string, n int) {
	t.Helper()
	poll(t, fmt.Sprintf("%d sessions welcomed by %s", n, addr), func() bool { return j.readies(addr) >= n })
}

func (j *joined) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-j.done:
		j.done <- err
		t.Fatalf("Run returned %v", err)
	default:
	}
}

// poll waits until cond holds, failing the test after waitFor.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logStore keeps the records an agent logged.
type logStore struct {
	mu   sync.Mutex
	recs []logRecord // guarded by mu
}

type logRecord struct {
	msg   string
	attrs map[string]string
}

// count is how many records say msg with each key=value of kv.
func (s *logStore) count(msg string, kv ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
next:
	for _, r := range s.recs {
		if r.msg != msg {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if r.attrs[kv[i]] != kv[i+1] {
				continue next
			}
		}
		n++
	}
	return n
}

func (s *logStore) wait(t *testing.T, msg string, kv ...string) {
	t.Helper()
	poll(t, fmt.Sprintf("log %q %v", msg, kv), func() bool { return s.count(msg, kv...) > 0 })
}

// logHandler records into st.
type logHandler struct {
	st    *logStore
	attrs []slog.Attr
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{}
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	h.st.recs = append(h.st.recs, logRecord{r.Message, m})
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{st: h.st, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

// followedLog is the debug record of the agent acting on gateway lists.
const followedLog = "gateway lists followed"

// wantServed checks that each session serves streams of service name.
func wantServed(t *testing.T, sess []*route.Agent, name string) {
	t.Helper()
	for _, a := range sess {
		if got := probeAnswer(t, a, name); len(got) != 1 || got[0] != tunnel.ProbeOK {
			t.Errorf("probe over a session of agent %s answered %v", a.ID, got)
		}
	}
}

func sameSessions(a, b []*route.Agent) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x *route.Agent) bool { return !slices.Contains(b, x) })
}

// An agent given one gateway of a cluster connects to all of them, follows
// gateways leaving and joining, and a reconnect to the seed changes nothing.
func TestJoinCluster(t *testing.T) {
	c := startCluster(t, 3, nil)
	echo, _ := echoServer(t)
	j := runJoined(t, &agent.Config{
		Connections: 2,
		Transport:   agent.TransportTCP,
		Gateways:    []agent.GatewayConfig{{Addr: c.seed, CA: c.caFile}},
		Services:    []agent.ServiceConfig{{Name: "web", Target: "http://" + echo}},
	})
	ids := map[string]bool{}
	sess := make([][]*route.Agent, 3)
	for i, g := range c.gws {
		sess[i] = g.sessions(t, "web", 2)
		if sess[i][0].ID != sess[i][1].ID {
			t.Errorf("gateway %d: agent ids %q and %q, want one for both connections", i, sess[i][0].ID, sess[i][1].ID)
		}
		ids[sess[i][0].ID] = true
		wantServed(t, sess[i], "web")
	}
	if len(ids) != 3 {
		t.Errorf("agent ids %v: want one per gateway", ids)
	}
	for _, id := range []string{"gw-b", "gw-c"} {
		j.logs.wait(t, "gateway learned", "id", id)
	}
	if n := j.logs.count("gateway learned"); n != 2 {
		t.Errorf("%d gateways learned, want 2 (the seed is configured)", n)
	}

	// The seed's connections drop and come back with the same list: the
	// learned gateways keep their sessions.
	welcomed, followed := j.readies(c.seed), j.logs.count(followedLog)
	for _, a := range sess[0] {
		a.Session.Close()
	}
	j.waitReadies(t, c.seed, welcomed+2)
	poll(t, "the agent to act on the welcomes' lists", func() bool { return j.logs.count(followedLog) > followed })
	for i := 1; i < 3; i++ {
		if now := c.gws[i].sessions(t, "web", 2); !sameSessions(now, sess[i]) {
			t.Errorf("gateway %d: the seed's reconnect replaced the sessions there", i)
		}
	}
	if n := j.logs.count("gateway left"); n != 0 {
		t.Errorf("%d gateways left after the seed reconnected, want 0", n)
	}

	// gw-c leaves the cluster: the agent drains and closes its sessions there.
	c.only(0, 1)
	c.gws[2].sessions(t, "web", 0)
	j.logs.wait(t, "gateway left", "id", "gw-c")
	if now := c.gws[1].sessions(t, "web", 2); !sameSessions(now, sess[1]) {
		t.Error("gw-b's sessions changed when gw-c left")
	}
	// It comes back: the agent connects to it again.
	c.only(0, 1, 2)
	wantServed(t, c.gws[2].sessions(t, "web", 2), "web")
	if n := j.logs.count("gateway learned", "id", "gw-c"); n != 2 {
		t.Errorf("gw-c learned %d times, want 2", n)
	}
	j.running(t)
}

// --max-gateways bounds the gateways held, the configured ones first; one
// leaving makes room for another.
func TestJoinClusterMaxGateways(t *testing.T) {
	c := startCluster(t, 3, nil)
	echo, _ := echoServer(t)
	j := runJoined(t, &agent.Config{
		Connections: 2,
		MaxGateways: 2,
		Transport:   agent.TransportTCP,
		Gateways:    []agent.GatewayConfig{{Addr: c.seed, CA: c.caFile}},
		Services:    []agent.ServiceConfig{{Name: "web", Target: "http://" + echo}},
	})
	c.gws[0].sessions(t, "web", 2)
	c.gws[1].sessions(t, "web", 2)
	// Every learned gateway is learned (and logged) at once, before its
	// connections start: none but gw-b was.
	if n := j.logs.count("gateway learned"); n != 1 || j.logs.count("gateway learned", "id", "gw-b") != 1 {
		t.Errorf("%d gateways learned, want gw-b only", n)
	}
	if n := j.readies(c.gws[2].addr); n != 0 {
		t.Errorf("gw-c welcomed %d sessions, want none", n)
	}
	// gw-b leaves: gw-c takes its place.
	c.only(0, 2)
	c.gws[1].sessions(t, "web", 0)
	wantServed(t, c.gws[2].sessions(t, "web", 2), "web")
}

// A quick tunnel serves one name at every gateway of the cluster: the random
// name the seed granted is the one asked of the others.
func TestJoinClusterQuickName(t *testing.T) {
	c := startCluster(t, 3, nil)
	echo, _ := echoServer(t)
	j := runJoined(t, &agent.Config{
		Connections: 2,
		Transport:   agent.TransportTCP,
		Gateways:    []agent.GatewayConfig{{Addr: c.seed, CA: c.caFile}},
		Services:    []agent.ServiceConfig{{Target: "http://" + echo}},
	})
	j.waitReadies(t, c.seed, 2)
	for _, g := range c.gws[1:] {
		j.waitReadies(t, g.addr, 2)
	}
	j.mu.Lock()
	events := slices.Clone(j.ready)
	j.mu.Unlock()
	name := events[0].grants[0].Name
	if !quickName(name) {
		t.Fatalf("granted %q, want a random quick-tunnel name", name)
	}
	for _, e := range events {
		if len(e.grants) != 1 || e.grants[0].Name != name {
			t.Errorf("%s granted %+v, want %q like the seed", e.addr, e.grants, name)
		}
	}
	for _, g := range c.gws {
		wantServed(t, g.sessions(t, name, 2), name)
	}
}

var quickName = regexp.MustCompile(`^[a-z]+-[a-z]+-[0-9]{2,4}$`).MatchString

// A learned gateway that refuses the agent for good is left alone; the agent
// keeps serving through the others.
func TestJoinClusterLearnedRefuses(t *testing.T) {
	c := startCluster(t, 3, func(i int, s *control.Server) {
		if i == 2 {
			s.Open = false // gw-c wants a token the agent has not got
		}
	})
	echo, _ := echoServer(t)
	j := runJoined(t, &agent.Config{
		Connections: 2,
		Transport:   agent.TransportTCP,
		Gateways:    []agent.GatewayConfig{{Addr: c.seed, CA: c.caFile}},
		Services:    []agent.ServiceConfig{{Name: "web", Target: "http://" + echo}},
	})
	j.logs.wait(t, "gateway refused the agent", "gateway", c.gws[2].addr)
	j.running(t)
	wantServed(t, c.gws[0].sessions(t, "web", 2), "web")
	wantServed(t, c.gws[1].sessions(t, "web", 2), "web")
	j.running(t)
}

// With the seed down, the learned gateways keep serving, and the agent
// follows the cluster through them.
func TestJoinClusterSeedDown(t *testing.T) {
	c := startCluster(t, 3, nil)
	echo, _ := echoServer(t)
	j := runJoined(t, &agent.Config{
		Connections: 2,
		Transport:   agent.TransportTCP,
		Gateways:    []agent.GatewayConfig{{Addr: c.seed, CA: c.caFile}},
		Services:    []agent.ServiceConfig{{Name: "web", Target: "http://" + echo}},
	})
	c.gws[0].sessions(t, "web", 2)
	b := c.gws[1].sessions(t, "web", 2)
	c.gws[2].sessions(t, "web", 2)
	c.gws[0].stop()
	j.logs.wait(t, "tunnel down, reconnecting", "gateway", c.seed)
	if now := c.gws[1].sessions(t, "web", 2); !sameSessions(now, b) {
		t.Error("gw-b's sessions changed when the seed went down")
	}
	wantServed(t, b, "web")
	// gw-c leaves; gw-b says so.
	c.only(0, 1)
	c.gws[2].sessions(t, "web", 0)
	j.logs.wait(t, "gateway left", "id", "gw-c")
	j.running(t)
}
