package route

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

// DirectDialer dials a direct upstream; the gateway's checks the address
// against the operator's allowed networks (no SSRF) and speaks TLS for an
// https upstream of an http service.
type DirectDialer func(ctx context.Context, u model.ParsedUpstream, spec model.Upstream, tls bool) (net.Conn, error)

// Upstream is one place a service's traffic can go: an agent's tunnel
// session, or a direct upstream the gateway dials itself. Each service has
// its own Upstream values, so health and counters are per service.
type Upstream struct {
	// Agent is set for a tunnel upstream.
	Agent *Agent
	// Direct is set for a direct upstream.
	Direct *Direct

	key    string // identity for consistent hashing: the agent id, or the URL
	weight int
	svc    *Service
	// Health is the upstream's health state.
	Health Health

	kh          atomic.Uint64 // hash of key, computed once (keyHash)
	outstanding atomic.Int64  // requests in flight (least_request)
	removed     atomic.Bool   // a direct upstream taken out of the service's list
}

// Direct is a direct upstream's address and settings.
type Direct struct {
	Spec   model.Upstream
	Parsed model.ParsedUpstream
	// TLS is set when the gateway speaks TLS to it (https for an http service).
	TLS bool
}

// Key is the upstream's identity: the agent id for a tunnel upstream (all
// connections of one agent share it), the URL for a direct one.
func (u *Upstream) Key() string { return u.key }

// Weight is the upstream's share of traffic relative to the others.
func (u *Upstream) Weight() int { return u.weight }

// String names the upstream for logs and status.
func (u *Upstream) String() string {
	switch {
	case u.Agent != nil && u.Agent.Peer:
		return "peer " + u.Agent.ID
	case u.Agent != nil:
		return "agent " + shortID(u.Agent.ID)
	}
	return u.Direct.Spec.URL
}

// Peer reports whether the upstream is another gateway of the cluster
// (AttachPeer), not a local agent or direct upstream.
func (u *Upstream) Peer() bool { return u.Agent != nil && u.Agent.Peer }

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Gone reports whether the upstream left the service (its tunnel ended, or
// it was removed from the service): pooled connections to it are useless.
func (u *Upstream) Gone() bool {
	if u.Agent != nil {
		return u.Agent.Gone()
	}
	return u.removed.Load()
}

// Draining reports whether the upstream's agent is draining.
func (u *Upstream) Draining() bool { return u.Agent != nil && u.Agent.Draining() }

// Usable reports whether the upstream may get new requests at now.
func (u *Upstream) Usable(now time.Time) bool {
	return !u.Draining() && !u.Gone() && u.Health.Usable(now)
}

// Outstanding is the number of requests in flight to the upstream.
func (u *Upstream) Outstanding() int64 { return u.outstanding.Load() }

// Begin counts a request to the upstream as in flight; End ends it.
func (u *Upstream) Begin() { u.outstanding.Add(1) }

// End ends a request counted by Begin.
func (u *Upstream) End() { u.outstanding.Add(-1) }

// Report records a request's outcome for passive ejection: ok false for a
// connect error, a broken exchange, or (unless the service ignores them) a
// 5xx answer.
func (u *Upstream) Report(ok bool) {
	p := u.svc.policy()
	now := time.Now()
	may := func() bool { return u.svc.mayEject(u, now) }
	if u.Health.requestResult(p, ok, now, may) && u.svc.table != nil {
		u.svc.table.logEjection(u)
	}
}

// mayEject reports whether passive ejection may take u out at now: at most
// half of the service's upstreams (counted by agent or URL) are ejected at
// once, so clients that provoke 5xx answers cannot empty the pool, and a
// lone upstream is never ejected (it would only turn errors into 503s).
func (s *Service) mayEject(u *Upstream, now time.Time) bool {
	l := s.list()
	ejected := 0
	for _, g := range l.groups {
		for _, i := range g.members {
			m := l.all[i]
			if m.key == u.key {
				break
			}
			if !m.Health.down.Load() && !m.Health.Usable(now) {
				ejected++
				break
			}
		}
	}
	return ejected+1 <= len(l.groups)/2
}

// ReportStatus records an HTTP answer's status for passive ejection.
func (u *Upstream) ReportStatus(code int) {
	p := u.svc.policy()
	u.Report(!(p.Count5xx && code >= 500))
}

// Dial opens a connection to the upstream: a tunnel stream starting with h,
// or a connection to the direct upstream. A tunnel stream counts against
// the agent's stream limit (ErrBusy).
func (u *Upstream) Dial(ctx context.Context, h *tunnel.Header) (net.Conn, error) {
	s := u.svc
	if u.Direct != nil {
		t := s.table
		if t == nil || t.DialDirect == nil {
			return nil, fmt.Errorf("dial upstream %s: no direct dialer", u.Direct.Spec.URL)
		}
		c, err := t.DialDirect(ctx, u.Direct.Parsed, u.Direct.Spec, u.Direct.TLS)
		if err != nil {
			return nil, err
		}
		if s.Metrics != nil {
			s.Metrics.Streams.Inc()
		}
		return &countedConn{Conn: c, up: u, svc: s}, nil
	}
	a := u.Agent
	// Reserve the slot before opening, so concurrent dials cannot
	// together exceed MaxStreams.
	if n := a.streams.Add(1); a.MaxStreams > 0 && n > a.MaxStreams {
		a.streams.Add(-1)
		return nil, ErrBusy
	}
	c, err := a.Session.Open()
	if err != nil {
		a.streams.Add(-1)
		return nil, err
	}
	if err := tunnel.WriteHeader(c, h); err != nil {
		c.Close()
		a.streams.Add(-1)
		return nil, err
	}
	if s.Metrics != nil {
		s.Metrics.Streams.Inc()
	}
	return &countedConn{Conn: c, up: u, svc: s}, nil
}

// upList is a service's upstreams with the round-robin schedule built for
// their weights. Immutable once published (but for the groups' counters).
type upList struct {
	all []*Upstream
	// groups gathers the upstreams of one key: the connections of one
	// agent process (or a direct URL). The weight is the group's, shared
	// by its connections, so an agent's share does not grow with the
	// number of tunnels it keeps.
	groups []upGroup
	// sib is the size of the group of all[i].
	sib []int
	// sched lists indexes into groups, each as often as its weight,
	// interleaved (smooth weighted round robin).
	sched []int
	// peers is the number of peer upstreams in all.
	peers int
}

type upGroup struct {
	members []int          // indexes into all
	next    *atomic.Uint32 // round robin among the members
}

func newUpList(all []*Upstream) *upList {
	l := &upList{all: all, sib: make([]int, len(all))}
	byKey := map[string]int{}
	var weights []int
	for i, u := range all {
		if u.Peer() {
			l.peers++
		}
		g, ok := byKey[u.key]
		if !ok {
			g = len(l.groups)
			byKey[u.key] = g
			l.groups = append(l.groups, upGroup{next: new(atomic.Uint32)})
			weights = append(weights, u.weight)
		}
		l.groups[g].members = append(l.groups[g].members, i)
	}
	for _, g := range l.groups {
		for _, i := range g.members {
			l.sib[i] = len(g.members)
		}
	}
	total := 0
	for _, w := range weights {
		total += w
	}
	if total == 0 {
		return l
	}
	// Scale down very large weight sums to keep the schedule short.
	const maxSched = 4096
	w := make([]int, len(weights))
	for i, x := range weights {
		w[i] = x
		if total > maxSched {
			w[i] = max(1, x*maxSched/total)
		}
	}
	sum := 0
	for _, x := range w {
		sum += x
	}
	cur := make([]int, len(w))
	l.sched = make([]int, 0, sum)
	for range sum {
		best := 0
		for i := range w {
			cur[i] += w[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= sum
		l.sched = append(l.sched, best)
	}
	return l
}

var hashSeed = maphash.MakeSeed()

// mix64 is splitmix64's finaliser: it makes the scores of upstreams whose
// keys differ in one byte independent (a plain hash of key+client is not).
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (u *Upstream) keyHash() uint64 {
	if h := u.kh.Load(); h != 0 {
		return h
	}
	h := mix64(maphash.String(hashSeed, u.key)) | 1
	u.kh.Store(h)
	return h
}

// pick returns a usable upstream by the service's policy, skipping those in
// tried, or nil. When passive ejection has taken out every upstream that
// active checks still call healthy, those are used all the same: ejecting
// the last ones would only turn their errors into 503s (Envoy's panic
// routing, for passive ejection only: an upstream that fails active checks
// or is draining is never used). Local upstreams always come first: peer
// gateways are picked only when no local one is usable, and never with
// localOnly.
func (s *Service) pick(l *upList, clientIP string, tried []*Upstream, now time.Time, localOnly bool) *Upstream {
	if l.peers < len(l.all) {
		if u := s.pick1(l, clientIP, tried, now, false, false); u != nil {
			return u
		}
		if u := s.pick1(l, clientIP, tried, now, true, false); u != nil {
			return u
		}
	}
	if l.peers == 0 || localOnly {
		return nil
	}
	if u := s.pick1(l, clientIP, tried, now, false, true); u != nil {
		return u
	}
	return s.pick1(l, clientIP, tried, now, true, true)
}

// usable reports whether u may take a request; with panic set, a passive
// ejection is ignored.
func (u *Upstream) usable(now time.Time, panic bool) bool {
	if panic {
		return !u.Draining() && !u.Gone() && !u.Health.down.Load()
	}
	return u.Usable(now)
}

// pick1 is one pass of pick, among the peers or among the local upstreams.
func (s *Service) pick1(l *upList, clientIP string, tried []*Upstream, now time.Time, panic, peers bool) *Upstream {
	n := len(l.all)
	if n == 0 {
		return nil
	}
	ok := func(u *Upstream) bool {
		if u.Peer() != peers || !u.usable(now, panic) {
			return false
		}
		for _, t := range tried {
			// The same key is the same agent process (another of its
			// connections) or the same URL: a failure there says little
			// good about the sibling.
			if t == u || t.key == u.key {
				return false
			}
		}
		return true
	}
	switch s.lb() {
	case model.LBLeastRequest:
		// Fewest outstanding per unit of weight, a connection of an agent
		// holding a share of its agent's weight: o1*n1/w1 < o2*n2/w2.
		var best *Upstream
		bestCost, bestW := int64(0), int64(1)
		start := int(s.next.Add(1) % uint32(n))
		for i := range n {
			k := (start + i) % n
			u := l.all[k]
			if !ok(u) {
				continue
			}
			cost, w := (u.Outstanding()+1)*int64(l.sib[k]), int64(u.weight)
			if best == nil || cost*bestW < bestCost*w {
				best, bestCost, bestW = u, cost, w
			}
		}
		return best
	case model.LBIPHash:
		if clientIP != "" {
			// Weighted rendezvous hashing: each upstream scores
			// -w/ln(h), h uniform in (0,1) from hash(key, client); the
			// highest score wins. Removing an upstream moves only the
			// clients it had.
			var best *Upstream
			bestScore := math.Inf(-1)
			hc := maphash.String(hashSeed, clientIP)
			for _, u := range l.all {
				if !ok(u) {
					continue
				}
				x := (float64(mix64(hc^u.keyHash())>>11) + 0.5) / (1 << 53)
				score := -float64(u.weight) / math.Log(x)
				if score > bestScore {
					best, bestScore = u, score
				}
			}
			return best
		}
	}
	if len(l.sched) == 0 {
		return nil
	}
	m := len(l.sched)
	start := int((s.next.Add(1) - 1) % uint32(m))
	for i := range m {
		g := &l.groups[l.sched[(start+i)%m]]
		k := len(g.members)
		off := int((g.next.Add(1) - 1) % uint32(k))
		for j := range k {
			if u := l.all[g.members[(off+j)%k]]; ok(u) {
				return u
			}
		}
	}
	return nil
}

// Pick returns the upstream a new request from clientIP should go to, not
// one of tried nor another connection of the same agent, or nil when no
// usable upstream is left.
func (s *Service) Pick(clientIP string, tried ...*Upstream) *Upstream {
	return s.pick(s.list(), clientIP, tried, time.Now(), false)
}

// Dial opens a connection to an upstream picked for h's client (see Pick),
// trying the others when one cannot be reached.
func (s *Service) Dial(h *tunnel.Header) (net.Conn, *Upstream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.dialTimeout())
	defer cancel()
	return s.DialContext(ctx, h, clientHost(h.Client))
}

// DialContext is Dial with a context and the client IP for hashing.
func (s *Service) DialContext(ctx context.Context, h *tunnel.Header, clientIP string) (net.Conn, *Upstream, error) {
	return s.dial(ctx, h, clientIP, false, nil)
}

// DialLocal is DialContext among the local upstreams only (agents of this
// gateway, direct upstreams), never a peer gateway: what a gateway serving
// another's relayed stream uses, so a relay never goes on to a third
// gateway (or back). With accept set, only upstreams it accepts are tried.
func (s *Service) DialLocal(ctx context.Context, h *tunnel.Header, clientIP string, accept func(*Upstream) bool) (net.Conn, *Upstream, error) {
	return s.dial(ctx, h, clientIP, true, accept)
}

func (s *Service) dial(ctx context.Context, h *tunnel.Header, clientIP string, localOnly bool, accept func(*Upstream) bool) (net.Conn, *Upstream, error) {
	var (
		tried   []*Upstream
		busy    bool
		lastErr error
	)
	l := s.list()
	for range len(l.all) {
		u := s.pick(l, clientIP, tried, time.Now(), localOnly)
		if u == nil {
			break
		}
		tried = append(tried, u)
		if accept != nil && !accept(u) {
			continue
		}
		c, err := u.Dial(ctx, h)
		if err == nil {
			// The connection is the request (a passthrough or h2c stream):
			// it counts as outstanding until closed, for least_request.
			u.Begin()
			c.(*countedConn).outstanding = true
			return c, u, nil
		}
		if errors.Is(err, ErrBusy) {
			busy = true
			continue
		}
		u.Report(false)
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if busy {
		return nil, nil, ErrBusy
	}
	if lastErr != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoUpstream, lastErr)
	}
	return nil, nil, ErrNoUpstream
}

func clientHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
