// Package cluster keeps a gateway's view of the cluster it belongs to: the
// live members (each registered under a store lease that it renews, so a
// dead gateway disappears when its lease expires) and which member holds a
// live tunnel (or a healthy direct upstream) for which service name. The
// view is watched into memory: readers never wait on the store, and keep
// the last view while the store is unreachable.
package cluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/webgw/webgw/internal/store"
)

// Store keys.
const (
	// MembersPrefix holds one leased record per live gateway: MembersPrefix+id.
	MembersPrefix = "cluster/members/"
	// HeldPrefix holds one leased record per (service name, gateway) for the
	// names a gateway can serve now: HeldPrefix+name+"/"+id.
	HeldPrefix = "cluster/held/"
	// SecretKey holds the cluster credential gateways authenticate each
	// other with (hex, 32 random bytes), made by the first gateway.
	SecretKey = "cluster/secret"
)

// DefaultTTL is the lease TTL: a gateway that stops renewing disappears
// from the cluster this long after its last renewal.
const DefaultTTL = 10 * time.Second

// Member is one gateway of the cluster.
type Member struct {
	ID string `json:"id"`
	// Addrs are its public IPv4 and IPv6 addresses: what DNS answers.
	Addrs []string `json:"addrs"`
	// Tunnel is HOST:PORT of its HTTPS port, where agents and other
	// gateways open tunnels.
	Tunnel  string    `json:"tunnel"`
	Region  string    `json:"region,omitempty"`
	Version string    `json:"version,omitempty"`
	Started time.Time `json:"started"`
}

// Holding describes a name a member can serve now, so another member
// can relay to it with the service's settings.
type Holding struct {
	Protocol      string `json:"protocol"`
	ProxyProtocol int    `json:"proxy_protocol,omitempty"`
	// Tenant owns the name; empty for an anonymous quick tunnel. A member
	// relays a name only to members that hold it for the owner it knows.
	Tenant string `json:"tenant,omitempty"`
	// Agents are, for an anonymous quick tunnel, the ids of the agent
	// processes serving it there (AgentBase, sorted, comma-separated), so
	// that another gateway gives the name only to those agents.
	Agents string `json:"agents,omitempty"`
}

// AgentBase is the part of an agent id that is the same on every gateway
// the agent process connects to (it tells each gateway id-N or id-gN).
func AgentBase(id string) string {
	base, _, _ := strings.Cut(id, "-")
	return base
}

// OthersHolding returns the holdings of name by the other live members.
func (c *Cluster) OthersHolding(name string) map[string]Holding {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out map[string]Holding
	for id, h := range c.held[name] {
		if _, live := c.members[id]; !live || id == c.self.ID {
			continue
		}
		if out == nil {
			out = map[string]Holding{}
		}
		out[id] = h
	}
	return out
}

// Options are New's optional settings.
type Options struct {
	// TTL of the membership lease; 0 means DefaultTTL.
	TTL time.Duration
	Log *slog.Logger
}

// Cluster registers one gateway and watches the others. Create it with
// New and run it with Run.
type Cluster struct {
	st    store.Store
	ls    store.Leaser
	self  Member
	ttl   time.Duration
	log   *slog.Logger
	kick  chan struct{} // wakes Run to publish a changed want
	ready chan struct{} // closed after the first registration and list

	mu      sync.Mutex
	members map[string]Member             // live members by id (from the store); guarded by mu
	held    map[string]map[string]Holding // name -> member id -> holding (from the store); guarded by mu
	want    map[string]Holding            // names this gateway holds now; guarded by mu
	changed chan struct{}                 // closed and replaced at each change of the view; guarded by mu
	mchange chan struct{}                 // closed and replaced at each change of members; guarded by mu
}

// New returns a cluster view for self on st, which must implement
// store.Leaser (both stores do).
func New(st store.Store, self Member, opt Options) (*Cluster, error) {
	ls, ok := st.(store.Leaser)
	if !ok {
		return nil, fmt.Errorf("cluster: store %T has no leases", st)
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cluster{st: st, ls: ls, self: self, ttl: cmp.Or(opt.TTL, DefaultTTL), log: log,
		kick: make(chan struct{}, 1), ready: make(chan struct{}),
		members: map[string]Member{}, held: map[string]map[string]Holding{}, want: map[string]Holding{},
		changed: make(chan struct{}), mchange: make(chan struct{})}, nil
}

// Self is this gateway's record.
func (c *Cluster) Self() Member { return c.self }

// Ready is closed once this gateway has registered and read the cluster.
func (c *Cluster) Ready() <-chan struct{} { return c.ready }

// Changed is closed at the next change of the members or of who holds what.
func (c *Cluster) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// MembersChanged is closed at the next change of the member list.
func (c *Cluster) MembersChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mchange
}

func (c *Cluster) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Cluster) notifyMembersLocked() {
	close(c.mchange)
	c.mchange = make(chan struct{})
}

// Members returns the live members, this gateway included, sorted by id.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members)+1)
	for _, m := range c.members {
		out = append(out, m)
	}
	if _, ok := c.members[c.self.ID]; !ok {
		out = append(out, c.self)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Member returns the live member id.
func (c *Cluster) Member(id string) (Member, bool) {
	if id == c.self.ID {
		return c.self, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[id]
	return m, ok
}

// Holders returns the live members that hold name now, sorted by id; this
// gateway's own holding is known at once, the others' from the store.
func (c *Cluster) Holders(name string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id := range c.held[name] {
		if _, live := c.members[id]; live && id != c.self.ID {
			out = append(out, id)
		}
	}
	if _, ok := c.want[name]; ok {
		out = append(out, c.self.ID)
	}
	slices.Sort(out)
	return out
}

// HeldElsewhere returns, for every name another live member holds, those
// members and their holdings.
func (c *Cluster) HeldElsewhere() map[string]map[string]Holding {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[string]Holding{}
	for name, by := range c.held {
		for id, h := range by {
			if _, live := c.members[id]; !live || id == c.self.ID {
				continue
			}
			if out[name] == nil {
				out[name] = map[string]Holding{}
			}
			out[name][id] = h
		}
	}
	return out
}

// SetHeld sets the names this gateway can serve now. Run publishes the
// difference under the lease.
func (c *Cluster) SetHeld(names map[string]Holding) {
	c.mu.Lock()
	if maps.Equal(c.want, names) {
		c.mu.Unlock()
		return
	}
	c.want = maps.Clone(names)
	c.notifyLocked()
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run registers this gateway, keeps its records (membership and held
// names) in the store under a lease, renews it, registers again when the
// lease was lost (the store was unreachable past the TTL), and keeps the
// view in step with the store, until ctx ends; then it revokes the lease,
// so the others see this gateway leave at once.
func (c *Cluster) Run(ctx context.Context) {
	go c.watch(ctx)
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		lease, err := c.ls.Grant(ctx, c.ttl)
		if errors.Is(err, store.ErrClosed) {
			return
		}
		if err != nil {
			c.log.Error("cluster: register; retrying", "err", err, "in", backoff.String())
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		c.serveLease(ctx, lease)
		if ctx.Err() != nil {
			// A fresh context: ctx is done, and leaving must still be said.
			if err := lease.Close(); err != nil {
				c.log.Warn("cluster: leave", "err", err)
			}
			return
		}
		lease.Close()
		c.log.Warn("cluster: membership lease lost (store unreachable past the TTL); registering again")
	}
}

// serveLease publishes the member record and the held names under lease
// until the lease is lost or ctx ends.
func (c *Cluster) serveLease(ctx context.Context, lease store.Lease) {
	rec, _ := json.Marshal(c.self)
	put := map[string]Holding{} // published under this lease
	registered := false
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		ok := true
		if !registered {
			if _, err := lease.Put(ctx, MembersPrefix+c.self.ID, rec); err != nil {
				c.log.Error("cluster: register", "err", err)
				ok = false
			} else {
				registered = true
			}
		}
		if registered && !c.publish(ctx, lease, put) {
			ok = false
		}
		if registered {
			select {
			case <-c.ready:
			default:
				if c.list(ctx) == nil {
					close(c.ready)
				} else {
					ok = false
				}
			}
		}
		wait := time.Duration(0)
		if !ok {
			wait = time.Second
		}
		var retryC <-chan time.Time
		if wait > 0 {
			retry.Reset(wait)
			retryC = retry.C
		}
		select {
		case <-ctx.Done():
			return
		case <-lease.Done():
			return
		case <-c.kick:
		case <-retryC:
		}
	}
}

// publish brings the held records under lease in step with want; put is
// what is published now. It reports whether all writes worked.
func (c *Cluster) publish(ctx context.Context, lease store.Lease, put map[string]Holding) bool {
	c.mu.Lock()
	want := maps.Clone(c.want)
	c.mu.Unlock()
	ok := true
	for name, h := range want {
		if old, has := put[name]; has && old == h {
			continue
		}
		v, _ := json.Marshal(h)
		if _, err := lease.Put(ctx, HeldPrefix+name+"/"+c.self.ID, v); err != nil {
			c.log.Warn("cluster: publish a held name", "service", name, "err", err)
			ok = false
			continue
		}
		put[name] = h
	}
	for name := range put {
		if _, has := want[name]; has {
			continue
		}
		err := c.st.Delete(ctx, HeldPrefix+name+"/"+c.self.ID, store.AnyRev)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			c.log.Warn("cluster: withdraw a held name", "service", name, "err", err)
			ok = false
			continue
		}
		delete(put, name)
	}
	return ok
}

// watch keeps the view in step with the store until ctx ends. After a
// failed watch it lists again; meanwhile the last view serves.
func (c *Cluster) watch(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		ch, err := c.st.Watch(ctx, "cluster/")
		if err == nil {
			err = c.list(ctx)
		}
		if err != nil {
			if errors.Is(err, store.ErrClosed) || ctx.Err() != nil {
				return
			}
			c.log.Warn("cluster: watch the store; retrying", "err", err, "in", backoff.String())
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		for ev := range ch {
			c.mu.Lock()
			c.applyLocked(ev)
			c.notifyLocked()
			c.mu.Unlock()
		}
	}
}

// list replaces the view with the store's records.
func (c *Cluster) list(ctx context.Context) error {
	entries, err := c.st.List(ctx, "cluster/")
	if err != nil {
		return fmt.Errorf("list the cluster: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members = map[string]Member{}
	c.held = map[string]map[string]Holding{}
	for _, e := range entries {
		c.applyLocked(store.Event{Type: store.EventPut, Entry: e})
	}
	c.notifyLocked()
	c.notifyMembersLocked()
	return nil
}

func (c *Cluster) applyLocked(ev store.Event) {
	key := ev.Entry.Key
	switch {
	case strings.HasPrefix(key, MembersPrefix):
		id := strings.TrimPrefix(key, MembersPrefix)
		if ev.Type == store.EventDelete {
			delete(c.members, id)
			c.notifyMembersLocked()
			return
		}
		var m Member
		if err := json.Unmarshal(ev.Entry.Value, &m); err != nil || m.ID != id {
			c.log.Warn("cluster: bad member record", "key", key, "err", err)
			return
		}
		c.members[id] = m
		c.notifyMembersLocked()
	case strings.HasPrefix(key, HeldPrefix):
		rest := strings.TrimPrefix(key, HeldPrefix)
		i := strings.LastIndexByte(rest, '/')
		if i <= 0 {
			return
		}
		name, id := rest[:i], rest[i+1:]
		if ev.Type == store.EventDelete {
			if by := c.held[name]; by != nil {
				delete(by, id)
				if len(by) == 0 {
					delete(c.held, name)
				}
			}
			return
		}
		var h Holding
		if err := json.Unmarshal(ev.Entry.Value, &h); err != nil {
			c.log.Warn("cluster: bad held record", "key", key, "err", err)
			return
		}
		if c.held[name] == nil {
			c.held[name] = map[string]Holding{}
		}
		c.held[name][id] = h
	}
}

// Secret returns the cluster credential, made by the first gateway that
// asks.
func Secret(ctx context.Context, st store.Store) ([]byte, error) {
	for range 3 {
		e, err := st.Get(ctx, SecretKey)
		if err == nil {
			b, err := hex.DecodeString(string(e.Value))
			if err != nil || len(b) < 16 {
				return nil, fmt.Errorf("cluster secret at %s is corrupt", SecretKey)
			}
			return b, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("read the cluster secret: %w", err)
		}
		b := make([]byte, 32)
		rand.Read(b)
		_, err = st.Put(ctx, SecretKey, []byte(hex.EncodeToString(b)), 0)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("make the cluster secret: %w", err)
		}
	}
	return nil, errors.New("make the cluster secret: lost the race three times")
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
