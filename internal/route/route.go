// Package route is the gateway's routing table: which services exist, who
// owns them, and which upstreams (agent tunnel sessions) serve each one right
// now. Readers on the request path never take a lock that writers hold long:
// a service's upstream list is swapped copy-on-write.
package route

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

// Opener opens a stream to an agent; *tunnel.Session implements it.
type Opener interface {
	Open() (net.Conn, error)
	NumStreams() int
	Close() error
}

var _ Opener = (*tunnel.Session)(nil)

// Errors from Service.Dial, so callers can choose the status code.
var (
	// ErrNoUpstream: the service has no live agent.
	ErrNoUpstream = errors.New("no agent connected for this service")
	// ErrBusy: every agent is at its stream limit.
	ErrBusy = errors.New("every agent of this service is at its stream limit")
)

// Agent is one agent tunnel session attached to one or more services.
type Agent struct {
	ID        string
	Tenant    string // empty for anonymous quick tunnels
	Remote    string
	Version   string
	Connected time.Time
	// Services are the names the agent serves; set before it is attached.
	Services []string
	Session  Opener
	// MaxStreams bounds concurrent streams the gateway opens to this agent; 0 means no bound.
	MaxStreams int64

	draining atomic.Bool
	gone     atomic.Bool  // detached: its session ended or was replaced
	streams  atomic.Int64 // open data streams
	bytesIn  atomic.Int64 // client -> agent
	bytesOut atomic.Int64 // agent -> client
}

// Drain marks the agent as stopping: it gets no new streams.
func (a *Agent) Drain() { a.draining.Store(true) }

// Gone reports whether the agent was detached from the table (its session
// ended or a reconnect replaced it): streams to it are useless.
func (a *Agent) Gone() bool { return a.gone.Load() }

// Draining reports whether Drain was called.
func (a *Agent) Draining() bool { return a.draining.Load() }

// Streams is the number of data streams open to the agent.
func (a *Agent) Streams() int64 { return a.streams.Load() }

// Bytes returns bytes sent to (in) and received from (out) the agent.
func (a *Agent) Bytes() (in, out int64) { return a.bytesIn.Load(), a.bytesOut.Load() }

// Service is one routable name.
type Service struct {
	Name     string
	Tenant   string // empty: an anonymous quick tunnel, owned by no tenant
	Protocol model.Protocol
	// Stored is true when the service is persisted in the store.
	Stored bool
	// Metrics are this service's metric children, resolved once.
	Metrics *ServiceMetrics

	agents   atomic.Pointer[[]*Agent] // copy-on-write; written under Table.mu
	next     atomic.Uint32
	emptyAt  atomic.Int64 // unix nanos when the last agent left; 0 while agents are attached
	requests atomic.Int64

	extMu sync.Mutex          // serialises the first Ext call's init
	ext   atomic.Pointer[any] // owned by the proxy layer (its per-service state); set once under extMu
}

// Agents returns the agents attached now. The slice must not be modified.
func (s *Service) Agents() []*Agent {
	if p := s.agents.Load(); p != nil {
		return *p
	}
	return nil
}

// Live reports whether at least one non-draining agent is attached.
func (s *Service) Live() bool {
	for _, a := range s.Agents() {
		if !a.Draining() {
			return true
		}
	}
	return false
}

// CountRequest counts one request or stream served.
func (s *Service) CountRequest() { s.requests.Add(1) }

// Requests is the number of requests or streams served since start.
func (s *Service) Requests() int64 { return s.requests.Load() }

// Ext returns the proxy layer's per-service state, creating it with init once.
func (s *Service) Ext(init func() any) any {
	if p := s.ext.Load(); p != nil {
		return *p // the request path: no lock
	}
	s.extMu.Lock()
	defer s.extMu.Unlock()
	if p := s.ext.Load(); p != nil {
		return *p
	}
	v := init()
	s.ext.Store(&v)
	return v
}

// Dial opens a data stream to one of the service's agents (round robin among
// those not draining), writes the stream header, and returns the stream,
// counting its bytes. It tries each agent once before giving up.
func (s *Service) Dial(h *tunnel.Header) (net.Conn, *Agent, error) {
	return s.dialFrom(s.Agents(), int(s.next.Add(1)), h)
}

// Pick returns the next agent in round-robin order that is neither draining
// nor gone, or nil: the agent a request should go to.
func (s *Service) Pick() *Agent {
	agents := s.Agents()
	n := len(agents)
	start := int(s.next.Add(1))
	for i := 0; i < n; i++ {
		if a := agents[(start+i)%n]; !a.Draining() && !a.Gone() {
			return a
		}
	}
	return nil
}

// DialPrefer is Dial trying agent first before the others.
func (s *Service) DialPrefer(first *Agent, h *tunnel.Header) (net.Conn, *Agent, error) {
	agents := s.Agents()
	for i, a := range agents {
		if a == first {
			return s.dialFrom(agents, i, h)
		}
	}
	return s.dialFrom(agents, int(s.next.Add(1)), h)
}

// dialFrom tries agents in order from index start, wrapping around.
func (s *Service) dialFrom(agents []*Agent, start int, h *tunnel.Header) (net.Conn, *Agent, error) {
	n := len(agents)
	if n == 0 {
		return nil, nil, ErrNoUpstream
	}
	busy := false
	var lastErr error
	for i := 0; i < n; i++ {
		a := agents[(start+i)%n]
		if a.Draining() {
			continue
		}
		// Reserve the slot before opening, so concurrent dials cannot
		// together exceed MaxStreams.
		if n := a.streams.Add(1); a.MaxStreams > 0 && n > a.MaxStreams {
			a.streams.Add(-1)
			busy = true
			continue
		}
		c, err := a.Session.Open()
		if err != nil {
			a.streams.Add(-1)
			lastErr = err
			continue
		}
		if err := tunnel.WriteHeader(c, h); err != nil {
			c.Close()
			a.streams.Add(-1)
			lastErr = err
			continue
		}
		if s.Metrics != nil {
			s.Metrics.Streams.Inc()
		}
		return &countedConn{Conn: c, agent: a, svc: s}, a, nil
	}
	if busy {
		return nil, nil, ErrBusy
	}
	if lastErr != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoUpstream, lastErr)
	}
	return nil, nil, ErrNoUpstream
}

// countedConn counts a stream's bytes into its agent and service, and the
// open-stream numbers down once on Close.
type countedConn struct {
	net.Conn
	agent  *Agent
	svc    *Service
	closed atomic.Bool
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.agent.bytesOut.Add(int64(n))
		if m := c.svc.Metrics; m != nil {
			m.BytesOut.Add(float64(n))
		}
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.agent.bytesIn.Add(int64(n))
		if m := c.svc.Metrics; m != nil {
			m.BytesIn.Add(float64(n))
		}
	}
	return n, err
}

// CloseWrite half-closes the stream. A stream that cannot half-close returns
// errors.ErrUnsupported rather than pretend, so a splicer closes it instead
// (the peer would otherwise never see the end of the data).
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.agent.streams.Add(-1)
		if m := c.svc.Metrics; m != nil {
			m.Streams.Dec()
		}
	}
	return c.Conn.Close()
}

// Table maps service names to services.
type Table struct {
	metrics *Metrics // may be nil

	mu       sync.RWMutex
	services map[string]*Service // guarded by mu
}

// NewTable returns an empty table reporting into m (which may be nil).
func NewTable(m *Metrics) *Table {
	return &Table{metrics: m, services: make(map[string]*Service)}
}

// Lookup returns the service called name, or nil.
func (t *Table) Lookup(name string) *Service {
	t.mu.RLock()
	s := t.services[name]
	t.mu.RUnlock()
	return s
}

// List returns every service, sorted by name.
func (t *Table) List() []*Service {
	t.mu.RLock()
	out := make([]*Service, 0, len(t.services))
	for _, s := range t.services {
		out = append(out, s)
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Upsert adds the service described by svc, or updates the owner and
// protocol of the existing one (keeping its agents), and returns the entry.
func (t *Table) Upsert(name, tenant string, proto model.Protocol, stored bool) *Service {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.services[name]
	if s == nil {
		s = &Service{Name: name, Tenant: tenant, Protocol: proto, Stored: stored}
		if t.metrics != nil {
			s.Metrics = t.metrics.forService(name)
		}
		s.emptyAt.Store(time.Now().UnixNano())
		t.services[name] = s
		return s
	}
	if s.Tenant != tenant || s.Protocol != proto || s.Stored != stored {
		// Replace the entry so readers holding the old one see consistent fields.
		ns := &Service{Name: name, Tenant: tenant, Protocol: proto, Stored: stored, Metrics: s.Metrics}
		ns.agents.Store(s.agents.Load())
		ns.emptyAt.Store(s.emptyAt.Load())
		ns.requests.Store(s.requests.Load())
		t.services[name] = ns
		return ns
	}
	return s
}

// Remove deletes the service called name.
func (t *Table) Remove(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.services[name]
	delete(t.services, name)
	// Drop the series under mu: a concurrent Upsert of the same name must
	// not have its new children deleted.
	if s != nil && t.metrics != nil {
		t.metrics.dropService(name)
	}
}

// Attach adds agent a to the service called name, which must exist.
func (t *Table) Attach(name string, a *Agent) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.services[name]
	if s == nil {
		return fmt.Errorf("attach agent to %q: no such service", name)
	}
	old := s.Agents()
	nl := make([]*Agent, 0, len(old)+1)
	nl = append(nl, old...)
	nl = append(nl, a)
	s.agents.Store(&nl)
	s.emptyAt.Store(0)
	if s.Metrics != nil {
		s.Metrics.Agents.Set(float64(len(nl)))
	}
	return nil
}

// Detach removes agent a from every service it is attached to.
func (t *Table) Detach(a *Agent) {
	a.gone.Store(true)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.services {
		old := s.Agents()
		idx := -1
		for i, x := range old {
			if x == a {
				idx = i
				break
			}
		}
		if idx < 0 {
			continue
		}
		nl := make([]*Agent, 0, len(old)-1)
		nl = append(nl, old[:idx]...)
		nl = append(nl, old[idx+1:]...)
		s.agents.Store(&nl)
		if len(nl) == 0 {
			s.emptyAt.Store(time.Now().UnixNano())
		}
		if s.Metrics != nil {
			s.Metrics.Agents.Set(float64(len(nl)))
		}
	}
}

// ExpireAnonymous removes anonymous (unstored) services that have had no
// agent for longer than idle, and returns their names.
func (t *Table) ExpireAnonymous(now time.Time, idle time.Duration) []string {
	t.mu.Lock()
	var gone []string
	for name, s := range t.services {
		if s.Stored {
			continue
		}
		at := s.emptyAt.Load()
		if at != 0 && now.Sub(time.Unix(0, at)) > idle {
			delete(t.services, name)
			gone = append(gone, name)
			if t.metrics != nil {
				t.metrics.dropService(name) // under mu, as in Remove
			}
		}
	}
	t.mu.Unlock()
	return gone
}

// AgentsOf returns every distinct agent attached to any service.
func (t *Table) AgentsOf() []*Agent {
	t.mu.RLock()
	defer t.mu.RUnlock()
	seen := make(map[*Agent]bool)
	var out []*Agent
	for _, s := range t.services {
		for _, a := range s.Agents() {
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Connected.Before(out[j].Connected) })
	return out
}
