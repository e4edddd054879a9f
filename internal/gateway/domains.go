package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/resolve"
	"github.com/webgw/webgw/internal/store"
)

// Defaults of the custom domain checks.
const (
	DefaultDomainRecheck = 6 * time.Hour
	DefaultDomainGrace   = 24 * time.Hour
)

// domainResolver is what the verifier asks DNS; *resolve.Resolver is it.
type domainResolver interface {
	TXT(ctx context.Context, name string) ([]string, error)
	CNAME(ctx context.Context, name string) (string, error)
	Addrs(ctx context.Context, name string) ([]netip.Addr, error)
}

var _ domainResolver = (*resolve.Resolver)(nil)

// domains serves verified custom domains to the edge and keeps their proof
// of control checked: a check on demand (the API), and every recheck.
type domains struct {
	store    store.Store
	log      *slog.Logger
	resolver domainResolver
	// domain is the gateway domain: a domain's CNAME must name
	// SERVICE.<domain>.
	domain string
	// addrs are the gateway's public addresses, which A/AAAA records may
	// name instead of a CNAME; empty accepts CNAMEs only.
	addrs   []netip.Addr
	recheck time.Duration // 0 means DefaultDomainRecheck
	grace   time.Duration // 0 means DefaultDomainGrace
	now     func() time.Time

	mu   sync.Mutex
	recs map[string]domainRec // every record; guarded by mu
	// served maps the verified domains to their records; replaced whole
	// (under mu) on every change, read without a lock.
	served atomic.Pointer[map[string]model.Domain]
}

type domainRec struct {
	d   model.Domain
	rev int64
}

func (m *domains) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// lookup is edge.Names.Custom: the service and tenant of a verified domain.
func (m *domains) lookup(host string) (service, tenant string, ok bool) {
	p := m.served.Load()
	if p == nil {
		return "", "", false
	}
	d, ok := (*p)[host]
	return d.Service, d.Tenant, ok
}

// publishLocked rebuilds served from recs.
func (m *domains) publishLocked() {
	out := make(map[string]model.Domain, len(m.recs))
	for name, r := range m.recs {
		if r.d.State == model.DomainVerified {
			out[name] = r.d
		}
	}
	m.served.Store(&out)
}

// reload replaces every record with the store's.
func (m *domains) reload(ctx context.Context) error {
	entries, err := m.store.List(ctx, store.DomainsPrefix)
	if err != nil {
		return fmt.Errorf("load domains: %w", err)
	}
	recs := make(map[string]domainRec, len(entries))
	for _, e := range entries {
		var d model.Domain
		if err := json.Unmarshal(e.Value, &d); err != nil {
			m.log.Error("domain record unreadable; ignored", "key", e.Key, "err", err)
			continue
		}
		recs[d.Name] = domainRec{d: d, rev: e.Rev}
	}
	m.mu.Lock()
	m.recs = recs
	m.publishLocked()
	m.mu.Unlock()
	return nil
}

// put applies record d at revision rev unless a newer one is applied.
func (m *domains) put(d model.Domain, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.recs[d.Name]; ok && cur.rev >= rev {
		return
	}
	if m.recs == nil {
		m.recs = map[string]domainRec{}
	}
	m.recs[d.Name] = domainRec{d: d, rev: rev}
	m.publishLocked()
}

func (m *domains) apply(ev store.Event) {
	name := strings.TrimPrefix(ev.Entry.Key, store.DomainsPrefix)
	switch ev.Type {
	case store.EventDelete:
		m.mu.Lock()
		if cur, ok := m.recs[name]; ok && cur.rev < ev.Entry.Rev {
			delete(m.recs, name)
			m.publishLocked()
		}
		m.mu.Unlock()
	case store.EventPut:
		var d model.Domain
		if err := json.Unmarshal(ev.Entry.Value, &d); err != nil || d.Name != name {
			m.log.Error("domain record unreadable; ignored", "key", ev.Entry.Key, "err", err)
			return
		}
		m.put(d, ev.Entry.Rev)
	}
}

// watch keeps the served domains in step with the store until ctx ends.
func (m *domains) watch(ctx context.Context) {
	follow(ctx, m.store, store.DomainsPrefix, m.log, func() {
		if err := m.reload(ctx); err != nil {
			m.log.Error("reload domains", "err", err)
		}
	}, m.apply)
}

// loop checks every domain each recheck interval until ctx ends.
func (m *domains) loop(ctx context.Context) {
	t := time.NewTicker(cmp0(m.recheck, DefaultDomainRecheck))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.checkAll(ctx)
		}
	}
}

func cmp0(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// checkAll checks every stored domain once.
func (m *domains) checkAll(ctx context.Context) {
	all, err := store.ListDomains(ctx, m.store)
	if err != nil {
		m.log.Error("list domains to check", "err", err)
		return
	}
	for _, d := range all {
		if ctx.Err() != nil {
			return
		}
		if _, err := m.verify(ctx, d.Name); err != nil && !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			m.log.Error("check domain", "domain", d.Name, "err", err)
		}
	}
}

// verify checks the proof of control of the domain named name now, stores
// the outcome and applies it at once. A missing record returns an error
// wrapping store.ErrNotFound.
func (m *domains) verify(ctx context.Context, name string) (model.Domain, error) {
	d, _, err := store.GetDomain(ctx, m.store, name)
	if err != nil {
		return model.Domain{}, err
	}
	reason := m.check(ctx, d)
	if ctx.Err() != nil {
		return model.Domain{}, ctx.Err()
	}
	before := d.State
	var grace = cmp0(m.grace, DefaultDomainGrace)
	d, rev, err := store.UpdateDomain(ctx, m.store, name, func(cur *model.Domain) error {
		if cur.Service != d.Service {
			return fmt.Errorf("moved to service %s meanwhile: %w", cur.Service, store.ErrConflict)
		}
		cur.ApplyCheck(reason, m.clock().UTC(), grace)
		return nil
	})
	if err != nil {
		return model.Domain{}, err
	}
	m.put(d, rev)
	if d.State != before {
		m.log.Info("domain "+string(d.State), "domain", d.Name, "service", d.Service, "tenant", d.Tenant, "reason", d.Reason)
	} else if reason != "" && !d.FailingSince.IsZero() {
		m.log.Warn("domain proof gone; still served during the grace period", "domain", d.Name, "since", d.FailingSince, "reason", reason)
	}
	return d, nil
}

// check returns "" when the DNS proves control of d, else why not: the TXT
// record at model.ChallengeName must hold d's token, and the name must be
// a CNAME to SERVICE.<domain> or have only A/AAAA records of the gateway.
func (m *domains) check(ctx context.Context, d model.Domain) string {
	txtName := model.ChallengeName(d.Name)
	txts, err := m.resolver.TXT(ctx, txtName)
	switch {
	case errors.Is(err, resolve.ErrNotFound):
		return "TXT " + txtName + " not found"
	case err != nil:
		return "look up TXT " + txtName + ": " + err.Error()
	case !slices.Contains(txts, d.Token):
		return "TXT " + txtName + " holds another value, want " + d.Token
	}
	target := d.Service + "." + m.domain
	cname, err := m.resolver.CNAME(ctx, d.Name)
	switch {
	case err == nil && cname == target:
		return ""
	case err == nil:
		return fmt.Sprintf("CNAME %s points to %s, want %s", d.Name, cname, target)
	case !errors.Is(err, resolve.ErrNotFound):
		return "look up CNAME " + d.Name + ": " + err.Error()
	}
	addrs, err := m.resolver.Addrs(ctx, d.Name)
	switch {
	case errors.Is(err, resolve.ErrNotFound):
		return fmt.Sprintf("no CNAME %s to %s, and no A/AAAA records", d.Name, target)
	case err != nil:
		return "look up A/AAAA " + d.Name + ": " + err.Error()
	case len(m.addrs) == 0:
		return fmt.Sprintf("A/AAAA records at %s, but this gateway has no public address to compare (--public-ip); use a CNAME to %s", d.Name, target)
	}
	for _, a := range addrs {
		if !slices.Contains(m.addrs, a) {
			return fmt.Sprintf("%s has address %s, not one of this gateway's (%s); use a CNAME to %s or A/AAAA records of those", d.Name, a, joinAddrs(m.addrs), target)
		}
	}
	return ""
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
