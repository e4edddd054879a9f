package route

import (
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

// fakeOpener is an in-memory agent session: each Open returns one end of a
// net.Pipe whose other end reads the stream header and then echoes.
type fakeOpener struct {
	err   error // returned by Open when set
	opens atomic.Int64

	mu      sync.Mutex
	headers []*tunnel.Header // guarded by mu
	wg      sync.WaitGroup
}

func (f *fakeOpener) Open() (net.Conn, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.opens.Add(1)
	gw, ag := net.Pipe()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer ag.Close()
		h, err := tunnel.ReadHeader(ag)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.headers = append(f.headers, h)
		f.mu.Unlock()
		io.Copy(ag, ag)
	}()
	return gw, nil
}

func (f *fakeOpener) NumStreams() int { return 0 }
func (f *fakeOpener) Close() error    { return nil }

var _ Opener = (*fakeOpener)(nil)

// metricValue is the value of one counter or gauge. (client_golang's testutil
// would need a go.mod change: its diff dependency is not required there.)
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("metric %v is neither a counter nor a gauge", m.Desc())
	return 0
}

// countSeries counts the series c collects.
func countSeries(t *testing.T, c prometheus.Collector) int {
	t.Helper()
	ch := make(chan prometheus.Metric)
	go func() { c.Collect(ch); close(ch) }()
	n := 0
	for range ch {
		n++
	}
	return n
}

var hdr = &tunnel.Header{Kind: tunnel.KindHTTP, Service: "svc", Client: "192.0.2.1:1234", Host: "svc.example"}

// newService returns a table with metrics in a fresh registry and one
// service "svc" with an agent per opener.
func newService(t *testing.T, openers ...Opener) (*Table, *Metrics, *Service, []*Agent) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	tab := NewTable(m)
	svc := tab.Upsert("svc", "", model.ProtoHTTP, false)
	var agents []*Agent
	for i, o := range openers {
		a := &Agent{ID: string(rune('a' + i)), Session: o, Connected: time.Unix(int64(i), 0)}
		if err := tab.Attach("svc", a); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
	}
	return tab, m, svc, agents
}

func TestTableUpsertLookupListRemove(t *testing.T) {
	tab := NewTable(nil)
	for _, n := range []string{"zeta", "alpha", "mid"} {
		tab.Upsert(n, "acme", model.ProtoHTTP, true)
	}
	var names []string
	for _, s := range tab.List() {
		names = append(names, s.Name)
	}
	if want := []string{"alpha", "mid", "zeta"}; !slices.Equal(names, want) {
		t.Fatalf("List = %v, want %v", names, want)
	}

	tests := []struct {
		name   string
		wantOK bool
	}{
		{"alpha", true},
		{"mid", true},
		{"zeta", true},
		{"Alpha", false}, // the table is exact; callers lower-case
		{"missing", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := tab.Lookup(tt.name); (got != nil) != tt.wantOK {
			t.Errorf("Lookup(%q) = %v, want found=%v", tt.name, got, tt.wantOK)
		} else if got != nil && got.Name != tt.name {
			t.Errorf("Lookup(%q).Name = %q", tt.name, got.Name)
		}
	}

	tab.Remove("mid")
	tab.Remove("never-there")
	if tab.Lookup("mid") != nil {
		t.Error("Lookup after Remove found the service")
	}
	if n := len(tab.List()); n != 2 {
		t.Errorf("List after Remove has %d services, want 2", n)
	}
}

func TestUpsertKeepsAgents(t *testing.T) {
	tab, _, svc, agents := newService(t, &fakeOpener{})
	svc.CountRequest()

	if same := tab.Upsert("svc", "", model.ProtoHTTP, false); same != svc {
		t.Fatal("Upsert with unchanged fields replaced the entry")
	}

	tests := []struct {
		tenant string
		proto  model.Protocol
		stored bool
	}{
		{"acme", model.ProtoHTTP, true},
		{"acme", model.ProtoH2C, true},
		{"other", model.ProtoTLS, false},
	}
	prev := svc
	for _, tt := range tests {
		ns := tab.Upsert("svc", tt.tenant, tt.proto, tt.stored)
		if ns == prev {
			t.Fatalf("Upsert(%+v) kept the old entry; readers would see fields change under them", tt)
		}
		if ns.Tenant != tt.tenant || ns.Protocol != tt.proto || ns.Stored != tt.stored {
			t.Errorf("Upsert(%+v) = %+v", tt, ns)
		}
		if got := ns.Agents(); len(got) != 1 || got[0] != agents[0] {
			t.Errorf("Upsert(%+v) lost the agents: %v", tt, got)
		}
		if ns.Requests() != 1 {
			t.Errorf("Upsert(%+v) lost the request count: %d", tt, ns.Requests())
		}
		if ns.Metrics != svc.Metrics {
			t.Errorf("Upsert(%+v) changed the metric children", tt)
		}
		if tab.Lookup("svc") != ns {
			t.Errorf("Lookup after Upsert(%+v) returns the old entry", tt)
		}
		prev = ns
	}
	if svc.Tenant != "" || svc.Protocol != model.ProtoHTTP {
		t.Errorf("the old entry changed: %+v", svc)
	}
}

func TestAttachDetachCopyOnWrite(t *testing.T) {
	tab, m, svc, _ := newService(t)
	tab.Upsert("other", "", model.ProtoHTTP, false)
	gauge := func(name string) float64 { return metricValue(t, m.Agents.WithLabelValues(name)) }

	if err := tab.Attach("nope", &Agent{ID: "x"}); err == nil {
		t.Error("Attach to a missing service succeeded")
	}

	a1, a2 := &Agent{ID: "a1", Session: &fakeOpener{}}, &Agent{ID: "a2", Session: &fakeOpener{}}
	before := svc.Agents()
	if err := tab.Attach("svc", a1); err != nil {
		t.Fatal(err)
	}
	if len(before) != 0 {
		t.Fatalf("a snapshot taken before Attach changed: %v", before)
	}
	snap1 := svc.Agents()
	if err := tab.Attach("svc", a2); err != nil {
		t.Fatal(err)
	}
	if err := tab.Attach("other", a2); err != nil {
		t.Fatal(err)
	}
	if len(snap1) != 1 || snap1[0] != a1 {
		t.Fatalf("a snapshot taken before the second Attach changed: %v", snap1)
	}
	if got := svc.Agents(); len(got) != 2 {
		t.Fatalf("Agents = %v, want 2", got)
	}
	if gauge("svc") != 2 || gauge("other") != 1 {
		t.Errorf("agents gauge = %v/%v, want 2/1", gauge("svc"), gauge("other"))
	}
	if got := tab.AgentsOf(); len(got) != 2 {
		t.Errorf("AgentsOf = %d agents, want 2 distinct", len(got))
	}

	snap2 := svc.Agents()
	tab.Detach(a2) // from both services
	if len(snap2) != 2 || snap2[0] != a1 || snap2[1] != a2 {
		t.Fatalf("a snapshot taken before Detach changed: %v", snap2)
	}
	if got := svc.Agents(); len(got) != 1 || got[0] != a1 {
		t.Errorf("after Detach, svc agents = %v", got)
	}
	if got := tab.Lookup("other").Agents(); len(got) != 0 {
		t.Errorf("after Detach, other agents = %v", got)
	}
	if gauge("svc") != 1 || gauge("other") != 0 {
		t.Errorf("agents gauge = %v/%v, want 1/0", gauge("svc"), gauge("other"))
	}
	tab.Detach(a2) // not attached any more: no effect
	if len(svc.Agents()) != 1 {
		t.Error("a second Detach changed the agents")
	}
	if !svc.Live() {
		t.Error("Live = false with one agent")
	}
	a1.Drain()
	if svc.Live() {
		t.Error("Live = true with only a draining agent")
	}
}

func TestDialRoundRobin(t *testing.T) {
	ops := []*fakeOpener{{}, {}, {}}
	_, _, svc, agents := newService(t, ops[0], ops[1], ops[2])
	const n = 300
	seen := map[*Agent]int{}
	for i := 0; i < n; i++ {
		c, a, err := svc.Dial(hdr)
		if err != nil {
			t.Fatal(err)
		}
		seen[a.Agent]++
		c.Close()
	}
	for i, o := range ops {
		if got := o.opens.Load(); got != n/3 {
			t.Errorf("agent %d opened %d streams, want %d", i, got, n/3)
		}
		if seen[agents[i]] != n/3 {
			t.Errorf("Dial returned agent %d %d times, want %d", i, seen[agents[i]], n/3)
		}
	}
	for _, o := range ops {
		o.wg.Wait()
		o.mu.Lock()
		for _, h := range o.headers {
			if *h != *hdr {
				t.Errorf("agent read header %+v, want %+v", h, hdr)
			}
		}
		o.mu.Unlock()
	}
}

func TestDialSkipsDraining(t *testing.T) {
	ops := []*fakeOpener{{}, {}, {}}
	_, _, svc, agents := newService(t, ops[0], ops[1], ops[2])
	agents[1].Drain()
	for i := 0; i < 30; i++ {
		c, a, err := svc.Dial(hdr)
		if err != nil {
			t.Fatal(err)
		}
		if a.Agent == agents[1] {
			t.Fatal("Dial picked a draining agent")
		}
		c.Close()
	}
	if ops[1].opens.Load() != 0 {
		t.Errorf("draining agent opened %d streams", ops[1].opens.Load())
	}
	if ops[0].opens.Load() == 0 || ops[2].opens.Load() == 0 {
		t.Errorf("opens = %d/%d, want both live agents used", ops[0].opens.Load(), ops[2].opens.Load())
	}
	for _, o := range ops {
		o.wg.Wait()
	}
}

func TestDialErrors(t *testing.T) {
	errDead := errors.New("session is dead")
	closedSess := closedTunnelSession(t)
	tests := []struct {
		name    string
		openers []Opener
		drain   []int
		want    error
	}{
		{name: "no agents", want: ErrNoUpstream},
		{name: "all draining", openers: []Opener{&fakeOpener{}, &fakeOpener{}}, drain: []int{0, 1}, want: ErrNoUpstream},
		{name: "open fails", openers: []Opener{&fakeOpener{err: errDead}}, want: errDead},
		{name: "tunnel session closed", openers: []Opener{closedSess}, want: tunnel.ErrSessionClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, svc, agents := newService(t, tt.openers...)
			for _, i := range tt.drain {
				agents[i].Drain()
			}
			c, a, err := svc.Dial(hdr)
			if err == nil {
				c.Close()
				t.Fatalf("Dial succeeded with agent %s", a.Agent.ID)
			}
			if !errors.Is(err, ErrNoUpstream) {
				t.Errorf("Dial error %v is not ErrNoUpstream", err)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Dial error %v does not wrap %v", err, tt.want)
			}
		})
	}
}

// closedTunnelSession returns a real tunnel session that has ended.
func closedTunnelSession(t *testing.T) *tunnel.Session {
	t.Helper()
	c1, c2 := net.Pipe()
	s, err := tunnel.Server(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	s.Close()
	return s
}

func TestDialSkipsDeadSession(t *testing.T) {
	dead := &fakeOpener{err: errors.New("session is dead")}
	live := &fakeOpener{}
	for _, order := range [][]Opener{{dead, live}, {live, dead}, {closedTunnelSession(t), live}} {
		_, _, svc, agents := newService(t, order...)
		for i := 0; i < 10; i++ {
			c, a, err := svc.Dial(hdr)
			if err != nil {
				t.Fatalf("Dial with one live agent: %v", err)
			}
			if a.Agent.Session != live {
				t.Fatalf("Dial returned agent %s, not the live one", a.Agent.ID)
			}
			c.Close()
		}
		for _, a := range agents {
			if a.Streams() != 0 {
				t.Errorf("agent %s has %d streams after all closed", a.ID, a.Streams())
			}
		}
	}
	live.wg.Wait()
}

func TestDialBusy(t *testing.T) {
	ops := []*fakeOpener{{}, {}, {}}
	_, m, svc, agents := newService(t, ops[0], ops[1], ops[2])
	for _, a := range agents {
		a.MaxStreams = 1
	}
	var conns []net.Conn
	var owners []*Agent
	for i := 0; i < 3; i++ {
		c, a, err := svc.Dial(hdr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		owners = append(owners, a.Agent)
	}
	for _, a := range agents {
		if a.Streams() != 1 {
			t.Errorf("agent %s has %d streams, want 1", a.ID, a.Streams())
		}
	}
	if _, _, err := svc.Dial(hdr); !errors.Is(err, ErrBusy) {
		t.Fatalf("Dial with every agent full = %v, want ErrBusy", err)
	}
	if g := metricValue(t, m.Streams.WithLabelValues("svc")); g != 3 {
		t.Errorf("streams gauge = %v, want 3", g)
	}
	conns[1].Close()
	c, a, err := svc.Dial(hdr)
	if err != nil {
		t.Fatalf("Dial after a stream closed: %v", err)
	}
	if a.Agent != owners[1] {
		t.Errorf("Dial picked agent %s, want the one with room (%s)", a.Agent.ID, owners[1].ID)
	}
	conns[1] = c
	for _, c := range conns {
		c.Close()
	}
	for _, o := range ops {
		o.wg.Wait()
	}
}

// TestDialMaxStreamsConcurrent checks that concurrent dials never open more
// streams than MaxStreams.
func TestDialMaxStreamsConcurrent(t *testing.T) {
	op := &fakeOpener{}
	_, _, svc, agents := newService(t, op)
	const limit, dialers = 4, 32
	agents[0].MaxStreams = limit
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
		busy  int
	)
	start := make(chan struct{})
	for i := 0; i < dialers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, _, err := svc.Dial(hdr)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				conns = append(conns, c)
			case errors.Is(err, ErrBusy):
				busy++
			default:
				t.Errorf("Dial: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(conns) != limit || busy != dialers-limit {
		t.Errorf("%d dials succeeded and %d were busy, want %d and %d", len(conns), busy, limit, dialers-limit)
	}
	if got := agents[0].Streams(); got != int64(len(conns)) {
		t.Errorf("Streams = %d, want %d", got, len(conns))
	}
	for _, c := range conns {
		c.Close()
	}
	if got := agents[0].Streams(); got != 0 {
		t.Errorf("Streams after closing all = %d", got)
	}
	op.wg.Wait()
}

func TestStreamCountersAndBytes(t *testing.T) {
	op := &fakeOpener{}
	_, m, svc, agents := newService(t, op)
	a := agents[0]
	gauge := func() float64 { return metricValue(t, m.Streams.WithLabelValues("svc")) }

	c1, _, err := svc.Dial(hdr)
	if err != nil {
		t.Fatal(err)
	}
	c2, _, err := svc.Dial(hdr)
	if err != nil {
		t.Fatal(err)
	}
	if a.Streams() != 2 || gauge() != 2 {
		t.Fatalf("after two dials: agent streams %d, gauge %v; want 2", a.Streams(), gauge())
	}

	msg := []byte("hello, agent")
	if _, err := c1.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c1, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(msg) {
		t.Fatalf("echo = %q", got)
	}
	n := int64(len(msg))
	if in, out := a.Bytes(); in != n || out != n {
		t.Errorf("agent bytes in/out = %d/%d, want %d/%d (the header is not counted)", in, out, n, n)
	}
	if in, out := metricValue(t, m.BytesIn.WithLabelValues("svc")), metricValue(t, m.BytesOut.WithLabelValues("svc")); in != float64(n) || out != float64(n) {
		t.Errorf("metric bytes in/out = %v/%v, want %d/%d", in, out, n, n)
	}

	c1.Close()
	c1.Close() // a second Close counts nothing
	if a.Streams() != 1 || gauge() != 1 {
		t.Errorf("after closing one stream twice: agent streams %d, gauge %v; want 1", a.Streams(), gauge())
	}
	c2.Close()
	if a.Streams() != 0 || gauge() != 0 {
		t.Errorf("after closing both: agent streams %d, gauge %v; want 0", a.Streams(), gauge())
	}
	op.wg.Wait()
}

func TestExpireAnonymous(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	tab := NewTable(m)
	tab.Upsert("anon-idle", "", model.ProtoHTTP, false)
	tab.Upsert("anon-busy", "", model.ProtoHTTP, false)
	tab.Upsert("stored-idle", "acme", model.ProtoHTTP, true)
	a := &Agent{ID: "a", Session: &fakeOpener{}}
	if err := tab.Attach("anon-busy", a); err != nil {
		t.Fatal(err)
	}
	const idle = time.Hour

	tests := []struct {
		name   string
		after  time.Duration // the clock passed is time.Now() plus this
		detach bool
		gone   []string
		left   []string
	}{
		{name: "not idle long enough", left: []string{"anon-busy", "anon-idle", "stored-idle"}},
		{name: "just under the limit", after: idle - time.Minute, left: []string{"anon-busy", "anon-idle", "stored-idle"}},
		{name: "idle past the limit", after: 2 * idle, gone: []string{"anon-idle"}, left: []string{"anon-busy", "stored-idle"}},
		{name: "agent left just now", detach: true, left: []string{"anon-busy", "stored-idle"}},
		{name: "agent left long ago", after: 2 * idle, gone: []string{"anon-busy"}, left: []string{"stored-idle"}},
	}
	for _, tt := range tests {
		if tt.detach {
			tab.Detach(a)
		}
		gone := tab.ExpireAnonymous(time.Now().Add(tt.after), idle)
		slices.Sort(gone)
		if !slices.Equal(gone, tt.gone) {
			t.Errorf("%s: ExpireAnonymous = %v, want %v", tt.name, gone, tt.gone)
		}
		var left []string
		for _, s := range tab.List() {
			left = append(left, s.Name)
		}
		if !slices.Equal(left, tt.left) {
			t.Errorf("%s: left %v, want %v", tt.name, left, tt.left)
		}
	}
	// The expired services' metric series are gone; the stored one's remain.
	if n := countSeries(t, m.Agents); n != 1 {
		t.Errorf("%d agents series left, want 1", n)
	}
	if n := countSeries(t, m.Requests); n != len(codeLabels) {
		t.Errorf("%d request series left, want %d", n, len(codeLabels))
	}
}

func TestRemoveDropsMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	tab := NewTable(m)
	tab.Upsert("a", "", model.ProtoHTTP, false).Metrics.Count(200)
	tab.Upsert("b", "", model.ProtoHTTP, false).Metrics.Count(200)
	if n := countSeries(t, m.Requests); n != 2*len(codeLabels) {
		t.Fatalf("%d request series, want %d", n, 2*len(codeLabels))
	}
	tab.Remove("a")
	if n := countSeries(t, m.Requests); n != len(codeLabels) {
		t.Errorf("%d request series after Remove, want %d", n, len(codeLabels))
	}
	if n := countSeries(t, m.BytesIn); n != 1 {
		t.Errorf("%d bytes-in series after Remove, want 1", n)
	}
}

// TestRemoveUpsertRace checks that a service removed and added again
// concurrently always ends with its metric series present.
func TestRemoveUpsertRace(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	tab := NewTable(m)
	for i := 0; i < 200; i++ {
		tab.Upsert("svc", "", model.ProtoHTTP, false)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); tab.Remove("svc") }()
		go func() { defer wg.Done(); tab.Upsert("svc", "", model.ProtoHTTP, false) }()
		wg.Wait()
		if tab.Lookup("svc") == nil {
			continue // Remove ran last
		}
		if n := countSeries(t, m.Agents); n != 1 {
			t.Fatalf("round %d: service is in the table but has %d agents series", i, n)
		}
		tab.Remove("svc")
	}
}

func TestServiceMetricsCount(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	sm := m.forService("svc")
	tests := []struct {
		code  int
		label string
	}{
		{0, "none"}, {101, "1xx"}, {200, "2xx"}, {204, "2xx"}, {308, "3xx"},
		{404, "4xx"}, {499, "4xx"}, {502, "5xx"}, {503, "5xx"}, {600, "none"}, {-1, "none"},
	}
	want := map[string]float64{}
	for _, tt := range tests {
		sm.Count(tt.code)
		want[tt.label]++
	}
	for _, l := range codeLabels {
		if got := metricValue(t, m.Requests.WithLabelValues("svc", l)); got != want[l] {
			t.Errorf("requests{code=%q} = %v, want %v", l, got, want[l])
		}
	}
}

func TestAgentsOfSorted(t *testing.T) {
	tab := NewTable(nil)
	tab.Upsert("x", "", model.ProtoHTTP, false)
	tab.Upsert("y", "", model.ProtoHTTP, false)
	late := &Agent{ID: "late", Connected: time.Unix(200, 0)}
	early := &Agent{ID: "early", Connected: time.Unix(100, 0)}
	for _, a := range []*Agent{late, early} {
		tab.Attach("x", a)
		tab.Attach("y", a)
	}
	got := tab.AgentsOf()
	if len(got) != 2 || got[0] != early || got[1] != late {
		t.Errorf("AgentsOf = %v, want [early late]", got)
	}
}

func TestExtOnce(t *testing.T) {
	svc := NewTable(nil).Upsert("svc", "", model.ProtoHTTP, false)
	var calls atomic.Int32
	var wg sync.WaitGroup
	res := make([]any, 8)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = svc.Ext(func() any { calls.Add(1); return new(int) })
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("init ran %d times", calls.Load())
	}
	for _, r := range res {
		if r != res[0] {
			t.Fatal("Ext returned different values")
		}
	}
}

// TestConcurrentDialAttachDetach exercises the copy-on-write list under the
// race detector: dials run while agents come and go.
func TestConcurrentDialAttachDetach(t *testing.T) {
	op := &fakeOpener{}
	tab, _, svc, _ := newService(t, op)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, _, err := svc.Dial(hdr); err == nil {
					c.Close()
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		a := &Agent{ID: "churn", Session: op}
		if err := tab.Attach("svc", a); err != nil {
			t.Fatal(err)
		}
		tab.Detach(a)
	}
	close(stop)
	wg.Wait()
	if n := len(svc.Agents()); n != 1 {
		t.Errorf("%d agents left, want 1", n)
	}
	for _, a := range svc.Agents() {
		if a.Streams() != 0 {
			t.Errorf("agent %s has %d streams open", a.ID, a.Streams())
		}
	}
	op.wg.Wait()
}

func TestStreamCloseWrite(t *testing.T) {
	type closeWriter interface{ CloseWrite() error }

	// A stream that cannot half-close says so.
	_, _, svc, _ := newService(t, &fakeOpener{})
	c, _, err := svc.Dial(hdr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.(closeWriter).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite on a net.Pipe stream = %v, want ErrUnsupported", err)
	}
	c.Close()

	// A tunnel stream half-closes: the agent reads EOF and can still answer.
	c1, c2 := net.Pipe()
	gw, err := tunnel.Server(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := tunnel.Client(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	defer ag.Close()
	_, _, svc, agents := newService(t, gw)
	served := make(chan error, 1)
	go func() {
		st, err := ag.Accept()
		if err != nil {
			served <- err
			return
		}
		defer st.Close()
		if _, err := tunnel.ReadHeader(st); err != nil {
			served <- err
			return
		}
		req, err := io.ReadAll(st)
		if err == nil {
			_, err = io.WriteString(st, "reply to "+string(req))
		}
		served <- err
	}()
	c, _, err = svc.Dial(hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "request")
	if err := c.(closeWriter).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite on a tunnel stream: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "reply to request" {
		t.Fatalf("after half-close read %q %v", got, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("agent: %v", err)
	}
	if in, out := agents[0].Bytes(); in != 7 || out != int64(len(got)) {
		t.Errorf("bytes in/out %d/%d, want 7/%d", in, out, len(got))
	}
}
