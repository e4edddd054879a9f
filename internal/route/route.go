// Package route is the gateway's routing table: which services exist, who
// owns them, and which upstreams (agent tunnel sessions) serve each one right
// now. Readers on the request path never take a lock that writers hold long:
// a service's upstream list is swapped copy-on-write.
package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// ErrNoUpstream: the service has no usable upstream (no agent
	// connected, or every upstream down).
	ErrNoUpstream = errors.New("no usable upstream for this service")
	// ErrBusy: every agent is at its stream limit.
	ErrBusy = errors.New("every agent of this service is at its stream limit")
)

// Agent is one agent tunnel session attached to one or more services, or
// (Peer set) a session to another gateway of the cluster that relays to
// the services it holds.
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
	// Conn numbers the session among its agent's connections to this gateway.
	Conn int
	// Transport is "tcp" or "quic".
	Transport string
	// Weights are the agent's load-balancing weights per service name; a
	// missing or 0 entry means 1. Set before it is attached.
	Weights map[string]int
	// Peer marks a session to another gateway of the cluster (ID is its
	// gateway id), attached with AttachPeer: a fallback used only while
	// the service has no usable local upstream. Set before it is attached.
	Peer bool

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
	// peerOnly is set on a service AttachPeer created for a name this
	// gateway did not know (another gateway's quick tunnel, or a service
	// the store has not shown it yet): it goes when its last upstream
	// does, and is never taken for an expired quick tunnel of this
	// gateway's. Guarded by Table.mu.
	peerOnly bool
	// Metrics are this service's metric children, resolved once.
	Metrics *ServiceMetrics

	table    *Table                    // the table it belongs to; nil in some tests
	ups      atomic.Pointer[upList]    // copy-on-write; written under Table.mu
	cfg      atomic.Pointer[svcConfig] // routing settings; written under Table.mu
	next     atomic.Uint32
	emptyAt  atomic.Int64 // unix nanos when the last agent left; 0 while agents are attached
	requests atomic.Int64

	extMu sync.Mutex          // serialises the first Ext call's init
	ext   atomic.Pointer[any] // owned by the proxy layer (its per-service state); set once under extMu
}

// svcConfig is a service's routing settings from the store.
type svcConfig struct {
	lb     model.LBPolicy
	policy HealthPolicy
	spec   model.Service // as stored: upstreams, health, passive
	// checks stops the active health checks; nil when none run.
	checks context.CancelFunc
}

var defaultConfig = &svcConfig{policy: PolicyFor(nil, nil)}

func (s *Service) config() *svcConfig {
	if c := s.cfg.Load(); c != nil {
		return c
	}
	return defaultConfig
}

func (s *Service) lb() model.LBPolicy    { return s.config().lb }
func (s *Service) policy() *HealthPolicy { return &s.config().policy }

// LB is the service's load-balancing policy.
func (s *Service) LB() model.LBPolicy {
	if lb := s.lb(); lb != "" {
		return lb
	}
	return model.LBRoundRobin
}

// Spec is the service's stored routing settings (upstreams, lb, health).
func (s *Service) Spec() model.Service { return s.config().spec }

// ProxyProtocol is the PROXY header version the service's backends want
// first on each connection (model.Service.ProxyProtocol); 0 for none. It
// is Spec().ProxyProtocol without copying the record, for the request path.
func (s *Service) ProxyProtocol() int { return s.config().spec.ProxyProtocol }

func (s *Service) list() *upList {
	if l := s.ups.Load(); l != nil {
		return l
	}
	return &upList{}
}

// Upstreams returns the upstreams attached now: agents' tunnel sessions and
// direct upstreams. The slice must not be modified.
func (s *Service) Upstreams() []*Upstream { return s.list().all }

// Agents returns the agents attached now (not the peer gateways).
func (s *Service) Agents() []*Agent {
	var out []*Agent
	for _, u := range s.list().all {
		if u.Agent != nil && !u.Agent.Peer {
			out = append(out, u.Agent)
		}
	}
	return out
}

// Live reports whether at least one local upstream may take a request now:
// an agent not draining, or a direct upstream, that active health checks
// have not taken out (a passive ejection of the last ones is ignored, see
// pick). Peer gateways do not count: Live says what this gateway holds
// itself, which is what it tells the cluster.
func (s *Service) Live() bool {
	now := time.Now()
	for _, u := range s.list().all {
		if !u.Peer() && u.usable(now, true) {
			return true
		}
	}
	return false
}

// Reachable reports whether a request can go somewhere now: Live, or a
// peer gateway that holds the service may take it.
func (s *Service) Reachable() bool {
	now := time.Now()
	for _, u := range s.list().all {
		if u.usable(now, true) {
			return true
		}
	}
	return false
}

// CountRequest counts one request or stream served.
func (s *Service) CountRequest() { s.requests.Add(1) }

// Requests is the number of requests or streams served since start.
func (s *Service) Requests() int64 { return s.requests.Load() }

// ExtLoaded returns the proxy layer's per-service state if Ext created it.
func (s *Service) ExtLoaded() (any, bool) {
	if p := s.ext.Load(); p != nil {
		return *p, true
	}
	return nil, false
}

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

func (s *Service) dialTimeout() time.Duration {
	if s.table != nil && s.table.DialTimeout > 0 {
		return s.table.DialTimeout
	}
	return 10 * time.Second
}

// countedConn counts a stream's bytes into its agent and service, and the
// open-stream numbers down once on Close.
type countedConn struct {
	net.Conn
	up     *Upstream
	svc    *Service
	closed atomic.Bool
	// outstanding is set when the connection counts as a request in
	// flight at its upstream until it is closed (Service.DialContext).
	outstanding bool
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if a := c.up.Agent; a != nil {
			a.bytesOut.Add(int64(n))
		}
		if m := c.svc.Metrics; m != nil {
			m.BytesOut.Add(float64(n))
		}
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		if a := c.up.Agent; a != nil {
			a.bytesIn.Add(int64(n))
		}
		if m := c.svc.Metrics; m != nil {
			m.BytesIn.Add(float64(n))
		}
	}
	return n, err
}

// CloseWrite half-closes the stream. A stream that cannot half-close returns
// errors.ErrUnsupported rather than pretend, so a splicer closes it instead
// (the peer would otherwise never see the end of the data).
// NetConn returns the stream or connection under c (as tls.Conn's does),
// for the tunnel to find a udp stream's QUIC stream.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		if a := c.up.Agent; a != nil {
			a.streams.Add(-1)
		}
		if c.outstanding {
			c.up.End()
		}
		if m := c.svc.Metrics; m != nil {
			m.Streams.Dec()
		}
	}
	return c.Conn.Close()
}

// Table maps service names to services. Exported fields are set before
// the table is used and not changed after.
type Table struct {
	// DialDirect dials direct upstreams; nil means services cannot use them.
	DialDirect DirectDialer
	// DialTimeout bounds dialling an upstream in Dial; 0 means 10 s.
	DialTimeout time.Duration
	// Domain is the gateway domain, for the Host header of health checks.
	Domain string
	// Log receives health changes; nil discards.
	Log *slog.Logger
	// OnRetire is called, in its own goroutine, with a service entry that
	// was removed or replaced by a new one (owner or protocol changed), so
	// the proxy layer can close what it pools for it; nil means nothing.
	OnRetire func(*Service)

	metrics *Metrics // may be nil

	mu       sync.RWMutex
	services map[string]*Service // guarded by mu
	closed   bool                // guarded by mu: no more health checks start
}

// NewTable returns an empty table reporting into m (which may be nil).
func NewTable(m *Metrics) *Table {
	return &Table{metrics: m, services: make(map[string]*Service)}
}

func (t *Table) log() *slog.Logger {
	if t.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Log
}

func (t *Table) logEjection(u *Upstream) {
	t.log().Warn("upstream ejected after failed requests", "service", u.svc.Name, "upstream", u.String(),
		"cooldown", u.svc.policy().Cooldown.String())
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
	return t.upsertLocked(name, tenant, proto, stored)
}

func (t *Table) upsertLocked(name, tenant string, proto model.Protocol, stored bool) *Service {
	s := t.services[name]
	if s == nil {
		s = &Service{Name: name, Tenant: tenant, Protocol: proto, Stored: stored, table: t}
		if t.metrics != nil {
			s.Metrics = t.metrics.forService(name)
		}
		s.emptyAt.Store(time.Now().UnixNano())
		t.services[name] = s
		return s
	}
	// Known here now for its own sake, not only as a relay.
	s.peerOnly = false
	if s.Tenant != tenant || s.Protocol != proto || s.Stored != stored {
		// Replace the entry so readers holding the old one see consistent
		// fields; its upstreams move over as new values of the new entry.
		ns := &Service{Name: name, Tenant: tenant, Protocol: proto, Stored: stored, Metrics: s.Metrics, table: t}
		ns.emptyAt.Store(s.emptyAt.Load())
		ns.requests.Store(s.requests.Load())
		if c := s.cfg.Load(); c != nil {
			if c.checks != nil {
				c.checks()
			}
			ns.cfg.Store(&svcConfig{lb: c.lb, policy: c.policy, spec: c.spec})
		}
		var ups []*Upstream
		for _, u := range s.list().all {
			switch {
			case u.Agent != nil && u.Agent.Peer && (proto != s.Protocol || tenant != s.Tenant):
				// The peer holds the name for the old owner or protocol.
			case u.Agent != nil:
				ups = append(ups, ns.newAgentUpstream(u.Agent))
			default:
				u.removed.Store(true)
			}
		}
		ns.ups.Store(newUpList(ups))
		t.services[name] = ns
		t.retire(s)
		if c := ns.cfg.Load(); c != nil {
			t.setDirectLocked(ns, c.spec)
		}
		return ns
	}
	return s
}

// UpsertQuick adds or updates the anonymous quick-tunnel service name (not
// stored) and sets the PROXY header version its backends want, which for a
// quick tunnel comes from its agent's hello; it returns the entry.
func (t *Table) UpsertQuick(name string, proto model.Protocol, proxyProtocol int) *Service {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.upsertLocked(name, "", proto, false)
	if c := s.config(); c.spec.ProxyProtocol != proxyProtocol {
		spec := c.spec
		spec.ProxyProtocol = proxyProtocol
		s.cfg.Store(&svcConfig{lb: c.lb, policy: c.policy, spec: spec, checks: c.checks})
	}
	return s
}

// Configure applies a stored service record: owner, protocol, direct
// upstreams, policy and health settings, keeping the health state of
// upstreams that did not change. It returns the entry.
func (t *Table) Configure(sv model.Service) *Service {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.upsertLocked(sv.Name, sv.Tenant, sv.Protocol, true)
	old := s.cfg.Load()
	if old != nil && old.checks != nil {
		old.checks()
	}
	s.cfg.Store(&svcConfig{lb: sv.LB, policy: PolicyFor(sv.Health, sv.Passive), spec: sv})
	t.setDirectLocked(s, sv)
	return s
}

// setDirectLocked replaces s's direct upstreams by those of sv, keeping
// the Upstream values of unchanged ones, and (re)starts active checks.
func (t *Table) setDirectLocked(s *Service, sv model.Service) {
	cur := s.list().all
	keep := map[model.Upstream]*Upstream{}
	var ups []*Upstream
	for _, u := range cur {
		if u.Agent != nil {
			ups = append(ups, u)
		} else {
			keep[u.Direct.Spec] = u
		}
	}
	for _, spec := range sv.Upstreams {
		if u := keep[spec]; u != nil {
			delete(keep, spec)
			ups = append(ups, u)
			continue
		}
		p, err := model.ParseUpstreamURL(spec.URL, sv.Protocol)
		if err != nil {
			t.log().Warn("stored upstream skipped", "service", s.Name, "url", spec.URL, "err", err)
			continue
		}
		w := spec.Weight
		if w <= 0 {
			w = 1
		}
		ups = append(ups, &Upstream{
			Direct: &Direct{Spec: spec, Parsed: p, TLS: p.Scheme == "https" && sv.Protocol.Terminates()},
			key:    spec.URL, weight: w, svc: s,
		})
	}
	for _, u := range keep {
		u.removed.Store(true)
	}
	s.ups.Store(newUpList(ups))
	t.updateEmptyLocked(s)
	c := s.cfg.Load()
	if c == nil || !c.policy.Active {
		// No checks run to bring an upstream back: forget their verdict.
		for _, u := range ups {
			u.Health.resetActive()
		}
	}
	if c != nil && c.policy.Active && !t.closed {
		ctx, cancel := context.WithCancel(context.Background())
		c.checks = cancel
		go t.runChecks(ctx, s, c.policy)
	}
}

// updateEmptyLocked keeps the agent gauge and the emptiness clock.
func (t *Table) updateEmptyLocked(s *Service) {
	n := 0
	for _, u := range s.list().all {
		if u.Agent != nil && !u.Agent.Peer {
			n++
		}
	}
	if len(s.list().all) == 0 {
		if s.emptyAt.Load() == 0 {
			s.emptyAt.Store(time.Now().UnixNano())
		}
	} else {
		s.emptyAt.Store(0)
	}
	if s.Metrics != nil {
		s.Metrics.Agents.Set(float64(n))
	}
}

// Remove deletes the service called name.
func (t *Table) Remove(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.services[name]
	if s == nil {
		return
	}
	t.removeLocked(s)
}

// removeLocked deletes s from the table.
func (t *Table) removeLocked(s *Service) {
	name := s.Name
	delete(t.services, name)
	if c := s.cfg.Load(); c != nil && c.checks != nil {
		c.checks()
	}
	for _, u := range s.list().all {
		if u.Direct != nil {
			u.removed.Store(true)
		}
	}
	// Drop the series under mu: a concurrent Upsert of the same name must
	// not have its new children deleted.
	if t.metrics != nil {
		t.metrics.dropService(name)
	}
	t.retire(s)
}

func (t *Table) retire(s *Service) {
	if t.OnRetire != nil {
		go t.OnRetire(s)
	}
}

// Close stops every service's health checks.
func (t *Table) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, s := range t.services {
		if c := s.cfg.Load(); c != nil && c.checks != nil {
			c.checks()
		}
	}
}

func (s *Service) newAgentUpstream(a *Agent) *Upstream {
	w := a.Weights[s.Name]
	if w <= 0 {
		w = 1
	}
	key := a.Tenant + "/" + a.ID
	if a.Peer {
		key = "peer/" + a.ID
	}
	return &Upstream{Agent: a, key: key, weight: w, svc: s}
}

// Attach adds agent a to the service called name, which must exist.
func (t *Table) Attach(name string, a *Agent) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.services[name]
	if s == nil {
		return fmt.Errorf("attach agent to %q: no such service", name)
	}
	if !a.Peer {
		s.peerOnly = false
	}
	t.appendLocked(s, a)
	return nil
}

// AttachPeer adds a, the session to another gateway (a.Peer set) that
// holds name for tenant ("" for an anonymous quick tunnel) as proto, with
// the PROXY header version its backends want, to the service called name.
// A name this gateway does not know (another gateway's quick tunnel, or a
// service the store has not shown it yet) gets an unstored service of its
// own, which goes when its last upstream does. A service known here with
// another owner or protocol is left alone (an error): its traffic must not
// go to what another tenant holds. Attaching a twice is a no-op.
func (t *Table) AttachPeer(name string, a *Agent, tenant string, proto model.Protocol, proxyProtocol int) error {
	if !a.Peer {
		return fmt.Errorf("attach peer to %q: agent %s is no peer", name, shortID(a.ID))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.services[name]
	if s == nil {
		s = t.upsertLocked(name, tenant, proto, false)
		s.peerOnly = true
		if proxyProtocol != 0 {
			s.cfg.Store(&svcConfig{policy: PolicyFor(nil, nil), spec: model.Service{ProxyProtocol: proxyProtocol}})
		}
	} else if s.Protocol != proto || s.Tenant != tenant {
		return fmt.Errorf("attach peer %s to %q: %s of tenant %q here, held as %s of tenant %q there", a.ID, name, s.Protocol, s.Tenant, proto, tenant)
	}
	for _, u := range s.list().all {
		if u.Agent == a {
			return nil
		}
	}
	t.appendLocked(s, a)
	return nil
}

// HasPeer reports whether the peer a is attached to the service called name.
func (t *Table) HasPeer(name string, a *Agent) bool {
	s := t.Lookup(name)
	if s == nil {
		return false
	}
	for _, u := range s.list().all {
		if u.Agent == a {
			return true
		}
	}
	return false
}

// DetachPeer removes the peer a from the service called name (it no longer
// holds it); a service that existed only for peers goes with its last one.
func (t *Table) DetachPeer(name string, a *Agent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.services[name]; s != nil {
		t.dropLocked(s, a)
	}
}

// appendLocked adds an upstream for a to s.
func (t *Table) appendLocked(s *Service, a *Agent) {
	old := s.list().all
	nl := make([]*Upstream, 0, len(old)+1)
	nl = append(nl, old...)
	nl = append(nl, s.newAgentUpstream(a))
	s.ups.Store(newUpList(nl))
	t.updateEmptyLocked(s)
}

// Detach removes agent a (or peer) from every service it is attached to.
func (t *Table) Detach(a *Agent) {
	a.gone.Store(true)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.services {
		t.dropLocked(s, a)
	}
}

// dropLocked removes a's upstream from s, if there, and s itself when it
// existed only for peers and none is left.
func (t *Table) dropLocked(s *Service, a *Agent) {
	old := s.list().all
	idx := -1
	for i, x := range old {
		if x.Agent == a {
			idx = i
			break
		}
	}
	if idx < 0 {
		return
	}
	nl := make([]*Upstream, 0, len(old)-1)
	nl = append(nl, old[:idx]...)
	nl = append(nl, old[idx+1:]...)
	s.ups.Store(newUpList(nl))
	t.updateEmptyLocked(s)
	if s.peerOnly && len(nl) == 0 {
		// Removed at once, and never reported as an expired quick tunnel:
		// the name is another gateway's, which alone may release it.
		t.removeLocked(s)
	}
}

// ExpireAnonymous removes anonymous (unstored) services that have had no
// agent for longer than idle, and returns their names.
func (t *Table) ExpireAnonymous(now time.Time, idle time.Duration) []string {
	t.mu.Lock()
	var gone []string
	for name, s := range t.services {
		if s.Stored || s.peerOnly {
			continue
		}
		at := s.emptyAt.Load()
		if at != 0 && now.Sub(time.Unix(0, at)) > idle {
			delete(t.services, name)
			gone = append(gone, name)
			if t.metrics != nil {
				t.metrics.dropService(name) // under mu, as in Remove
			}
			t.retire(s)
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
