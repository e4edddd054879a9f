package store

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// Key prefixes of the typed records, for List and Watch.
const (
	TenantsPrefix  = "tenants/"
	TokensPrefix   = "tokens/"
	ServicesPrefix = "services/"
	// PortsPrefix holds ports/<proto>/<number> (PortKey).
	PortsPrefix = "ports/"
)

// rollbackTimeout bounds the clean-up of a half-done CreateTenant, which runs
// even when the caller's context has ended.
const rollbackTimeout = 5 * time.Second

// TenantKey is the key of the tenant record (JSON model.Tenant) named name.
func TenantKey(name string) string { return TenantsPrefix + name }

// TokenKey is the key of the token index entry for a token hash
// (model.HashToken); its value is the tenant's name.
func TokenKey(hash string) string { return TokensPrefix + hash }

// ServiceKey is the key of the service record (JSON model.Service) named name.
func ServiceKey(name string) string { return ServicesPrefix + name }

// PortKey is the key of the record (JSON model.Port) of public port n of
// proto: ports/<proto>/<number>, the number in decimal without leading
// zeros ("ports/tcp/20000"). Port records are created once and never
// rewritten, so an entry's Rev is the revision that allocated it.
func PortKey(proto model.PortProto, n int) string {
	return PortsPrefix + string(proto) + "/" + strconv.Itoa(n)
}

// GetJSON reads key and decodes its JSON value into v. It returns the
// entry's revision, for a later PutJSON.
func GetJSON(ctx context.Context, s Store, key string, v any) (rev int64, err error) {
	e, err := s.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(e.Value, v); err != nil {
		return 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return e.Rev, nil
}

// PutJSON encodes v as JSON and writes it to key under the conditions of
// Store.Put (AnyRev, 0 to create, or the expected revision). It returns the
// new revision.
func PutJSON(ctx context.Context, s Store, key string, v any, expect int64) (int64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", key, err)
	}
	return s.Put(ctx, key, b, expect)
}

// CreateTenant stores a new tenant and the index entry from its token hash
// to its name. If the name or the token hash is taken, it returns an error
// wrapping ErrConflict and stores nothing.
//
// The two writes are not atomic: the tenant is written first, and removed
// again if the token entry cannot be written. A crash in between leaves a
// tenant no token resolves to; DeleteTenant removes it.
func CreateTenant(ctx context.Context, s Store, t model.Tenant) error {
	if err := model.ValidateTenantName(t.Name); err != nil {
		return fmt.Errorf("create tenant: %w", err)
	}
	if err := checkTokenHash(t.TokenHash); err != nil {
		return fmt.Errorf("create tenant %s: %w", t.Name, err)
	}
	rev, err := PutJSON(ctx, s, TenantKey(t.Name), t, 0)
	if errors.Is(err, ErrConflict) {
		return fmt.Errorf("create tenant %s: name already taken: %w", t.Name, err)
	}
	if err != nil {
		return fmt.Errorf("create tenant %s: %w", t.Name, err)
	}
	_, err = s.Put(ctx, TokenKey(t.TokenHash), []byte(t.Name), 0)
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrConflict) {
		err = fmt.Errorf("create tenant %s: token already in use: %w", t.Name, err)
	} else {
		err = fmt.Errorf("create tenant %s: write token index: %w", t.Name, err)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if derr := s.Delete(rctx, TenantKey(t.Name), rev); derr != nil {
		return errors.Join(err, fmt.Errorf("roll back tenant %s: %w", t.Name, derr))
	}
	return err
}

// DeleteTenant removes the tenant named name: first its token entry, so the
// token stops working at once, then every service, port, domain, DNS zone
// and 4to6 device it owns, then the tenant record. It returns an error
// wrapping ErrNotFound if there is no such tenant. A service created for
// the tenant while it is being deleted may survive.
func DeleteTenant(ctx context.Context, s Store, name string) error {
	var t model.Tenant
	if _, err := GetJSON(ctx, s, TenantKey(name), &t); err != nil {
		return fmt.Errorf("delete tenant %s: %w", name, err)
	}
	if t.TokenHash != "" {
		if err := deleteIf(ctx, s, TokenKey(t.TokenHash), func(v []byte) (bool, error) {
			return string(v) == name, nil
		}); err != nil {
			return fmt.Errorf("delete tenant %s: token entry: %w", name, err)
		}
	}
	services, err := s.List(ctx, ServicesPrefix)
	if err != nil {
		return fmt.Errorf("delete tenant %s: %w", name, err)
	}
	owned := func(v []byte) (bool, error) {
		var svc model.Service
		if err := json.Unmarshal(v, &svc); err != nil {
			return false, err
		}
		return svc.Tenant == name, nil
	}
	for _, e := range services {
		if err := deleteIf(ctx, s, e.Key, owned); err != nil {
			return fmt.Errorf("delete tenant %s: %w", name, err)
		}
	}
	if err := releasePortsIf(ctx, s, func(p model.Port) bool { return p.Tenant == name }); err != nil {
		return fmt.Errorf("delete tenant %s: %w", name, err)
	}
	if err := detachDomainsIf(ctx, s, func(d model.Domain) bool { return d.Tenant == name }); err != nil {
		return fmt.Errorf("delete tenant %s: %w", name, err)
	}
	if err := deleteZonesOf(ctx, s, name); err != nil {
		return fmt.Errorf("delete tenant %s: dns zones: %w", name, err)
	}
	if err := deleteDevicesOf(ctx, s, name); err != nil {
		return fmt.Errorf("delete tenant %s: 4to6 devices: %w", name, err)
	}
	if err := s.Delete(ctx, TenantKey(name), AnyRev); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete tenant %s: %w", name, err)
	}
	return nil
}

// releasePortsIf deletes the port records match accepts.
func releasePortsIf(ctx context.Context, s Store, match func(model.Port) bool) error {
	entries, err := s.List(ctx, PortsPrefix)
	if err != nil {
		return fmt.Errorf("release ports: %w", err)
	}
	for _, e := range entries {
		if err := deleteIf(ctx, s, e.Key, func(v []byte) (bool, error) {
			var p model.Port
			if err := json.Unmarshal(v, &p); err != nil {
				return false, err
			}
			return match(p), nil
		}); err != nil {
			return fmt.Errorf("release port %s: %w", e.Key, err)
		}
	}
	return nil
}

// deleteIf deletes key if match accepts its current value, re-reading after
// a conflicting change. A missing key is not an error.
func deleteIf(ctx context.Context, s Store, key string, match func([]byte) (bool, error)) error {
	for {
		e, err := s.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ok, err := match(e.Value)
		if err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		if !ok {
			return nil
		}
		err = s.Delete(ctx, key, e.Rev)
		switch {
		case err == nil, errors.Is(err, ErrNotFound):
			return nil
		case errors.Is(err, ErrConflict):
			continue
		default:
			return err
		}
	}
}

// maxUpdateAttempts bounds the read-modify-write rounds of UpdateService
// and DeleteService when other writers keep changing the record.
const maxUpdateAttempts = 16

// GetService returns the service named name and its revision, or an error
// wrapping ErrNotFound.
func GetService(ctx context.Context, s Store, name string) (model.Service, int64, error) {
	var svc model.Service
	rev, err := GetJSON(ctx, s, ServiceKey(name), &svc)
	if err != nil {
		return model.Service{}, 0, fmt.Errorf("get service %s: %w", name, err)
	}
	return svc, rev, nil
}

// CreateService stores a new service record and returns its revision. If
// the name is taken (by any tenant) it returns an error wrapping ErrConflict.
// It checks the name, not the routing settings (model.Service.ValidateRouting).
func CreateService(ctx context.Context, s Store, svc model.Service) (int64, error) {
	if err := model.ValidateName(svc.Name); err != nil {
		return 0, fmt.Errorf("create service: %w", err)
	}
	rev, err := PutJSON(ctx, s, ServiceKey(svc.Name), svc, 0)
	if errors.Is(err, ErrConflict) {
		return 0, fmt.Errorf("create service %s: name already taken: %w", svc.Name, err)
	}
	if err != nil {
		return 0, fmt.Errorf("create service %s: %w", svc.Name, err)
	}
	return rev, nil
}

// UpdateService changes the service named name with a compare-and-swap: it
// reads the record, calls update with it, and writes the result only if
// nobody wrote the record in between; otherwise it reads again and calls
// update again (so update must not have other side effects). An error from
// update aborts and is returned wrapped. The record's name is kept whatever
// update does.
//
// With ifRev > 0 the update applies only to that revision of the record (an
// optimistic lock held by the caller since an earlier read): another
// revision returns an error wrapping ErrConflict at once, without retrying.
// A missing record returns an error wrapping ErrNotFound. UpdateService
// returns the record written and its new revision.
func UpdateService(ctx context.Context, s Store, name string, ifRev int64, update func(*model.Service) error) (model.Service, int64, error) {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		svc, rev, err := GetService(ctx, s, name)
		if err != nil {
			return model.Service{}, 0, fmt.Errorf("update service %s: %w", name, errors.Unwrap(err))
		}
		if ifRev > 0 && rev != ifRev {
			return model.Service{}, 0, fmt.Errorf("update service %s: at revision %d, not %d: %w", name, rev, ifRev, ErrConflict)
		}
		if err := update(&svc); err != nil {
			return model.Service{}, 0, fmt.Errorf("update service %s: %w", name, err)
		}
		svc.Name = name
		nrev, err := PutJSON(ctx, s, ServiceKey(name), svc, rev)
		switch {
		case err == nil:
			return svc, nrev, nil
		case errors.Is(err, ErrConflict) && ifRev <= 0:
			continue
		default:
			return model.Service{}, 0, fmt.Errorf("update service %s: %w", name, err)
		}
	}
	return model.Service{}, 0, fmt.Errorf("update service %s: still changing after %d attempts: %w", name, maxUpdateAttempts, ErrConflict)
}

// DeleteService removes the service named name if check (nil: any) accepts
// its current record; an error from check aborts and is returned wrapped.
// A change between the read and the delete makes it read and check again;
// with ifRev > 0 only that revision is deleted, as for UpdateService. A
// missing record returns an error wrapping ErrNotFound.
func DeleteService(ctx context.Context, s Store, name string, ifRev int64, check func(model.Service) error) error {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		svc, rev, err := GetService(ctx, s, name)
		if err != nil {
			return fmt.Errorf("delete service %s: %w", name, errors.Unwrap(err))
		}
		if ifRev > 0 && rev != ifRev {
			return fmt.Errorf("delete service %s: at revision %d, not %d: %w", name, rev, ifRev, ErrConflict)
		}
		if check != nil {
			if err := check(svc); err != nil {
				return fmt.Errorf("delete service %s: %w", name, err)
			}
		}
		err = s.Delete(ctx, ServiceKey(name), rev)
		switch {
		case err == nil:
			// Its public ports go with it.
			if err := releasePortsIf(ctx, s, func(p model.Port) bool { return p.Service == name && p.Tenant == svc.Tenant }); err != nil {
				return fmt.Errorf("delete service %s: %w", name, err)
			}
			// So do its custom domains (detached: a new service of the
			// same name must be attached again, with a new proof).
			if err := detachDomainsIf(ctx, s, func(d model.Domain) bool { return d.Service == name && d.Tenant == svc.Tenant }); err != nil {
				return fmt.Errorf("delete service %s: %w", name, err)
			}
			return nil
		case errors.Is(err, ErrConflict) && ifRev <= 0:
			continue
		default:
			return fmt.Errorf("delete service %s: %w", name, err)
		}
	}
	return fmt.Errorf("delete service %s: still changing after %d attempts: %w", name, maxUpdateAttempts, ErrConflict)
}

// TenantByToken returns the tenant whose token is token, or an error
// wrapping ErrNotFound. Errors never contain the token.
func TenantByToken(ctx context.Context, s Store, token string) (model.Tenant, error) {
	if token == "" {
		return model.Tenant{}, fmt.Errorf("look up tenant by token: empty token: %w", ErrNotFound)
	}
	hash := model.HashToken(token)
	e, err := s.Get(ctx, TokenKey(hash))
	if errors.Is(err, ErrNotFound) {
		return model.Tenant{}, fmt.Errorf("look up tenant by token: unknown token: %w", ErrNotFound)
	}
	if err != nil {
		return model.Tenant{}, fmt.Errorf("look up tenant by token: %w", err)
	}
	name := string(e.Value)
	var t model.Tenant
	if _, err := GetJSON(ctx, s, TenantKey(name), &t); err != nil {
		return model.Tenant{}, fmt.Errorf("look up tenant by token: tenant %s: %w", name, err)
	}
	// The index may be stale (a crash between writes); the tenant record decides.
	if subtle.ConstantTimeCompare([]byte(t.TokenHash), []byte(hash)) != 1 {
		return model.Tenant{}, fmt.Errorf("look up tenant by token: token index names tenant %s, which has another token: %w", name, ErrNotFound)
	}
	return t, nil
}

// ListTenants returns every tenant, sorted by name.
func ListTenants(ctx context.Context, s Store) ([]model.Tenant, error) {
	return listJSON[model.Tenant](ctx, s, TenantsPrefix)
}

// ListServices returns every service, sorted by name.
func ListServices(ctx context.Context, s Store) ([]model.Service, error) {
	return listJSON[model.Service](ctx, s, ServicesPrefix)
}

// listJSON decodes every entry under prefix. An empty result is a non-nil
// slice of length 0, as from Store.List.
func listJSON[T any](ctx context.Context, s Store, prefix string) ([]T, error) {
	entries, err := s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(entries))
	for _, e := range entries {
		var v T
		if err := json.Unmarshal(e.Value, &v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", e.Key, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// checkTokenHash accepts only what model.HashToken produces (64 lower-case
// hex digits), so a raw token is never stored by mistake.
func checkTokenHash(h string) error {
	const want = "want the 64 lower-case hex digits of model.HashToken"
	if len(h) != 64 {
		return fmt.Errorf("invalid token hash: %d characters, %s", len(h), want)
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("invalid token hash: character %q, %s", c, want)
		}
	}
	return nil
}

// Errors of the port records, so the API can decide with errors.Is. The
// status each suggests is in brackets.
var (
	// ErrInvalidPort: the request is malformed: an unknown protocol, a bad
	// number, a port outside the operator's range, a bad owner name (400).
	ErrInvalidPort = errors.New("store: invalid port request")
	// ErrPortTaken: the port asked for is held by another tenant or service (409).
	ErrPortTaken = errors.New("store: port taken")
	// ErrRangeFull: every port of the operator's range is held (409).
	ErrRangeFull = errors.New("store: port range full")
	// ErrQuota: the tenant already holds its quota of ports (403).
	ErrQuota = errors.New("store: port quota reached")
	// ErrNotOwner: the port is held by another tenant (403).
	ErrNotOwner = errors.New("store: port held by another tenant")
)

// maxPortAttempts bounds the create-only writes one AllocatePort makes when
// other gateways keep taking the ports it tries.
const maxPortAttempts = 128

// AllocatePort gives service p.Service of p.Tenant (empty: an anonymous
// quick tunnel) a public port of protocol p.Proto from the range r, stores
// its record (with p.Created as given) and returns it. An SNI port
// (p.SNI) is tcp and has no service: it is shared by the tenant's tls
// services.
//
// With p.Number 0 it picks a free port: it starts at a random offset in r
// and scans, claiming each candidate with a create-only write, so two
// gateways sharing the store never get the same port. When no port is free
// it returns an error wrapping ErrRangeFull. With p.Number set it takes
// exactly that port, which must be in r: if another tenant or service holds
// it, the error wraps ErrPortTaken; if this tenant's service already holds
// it, AllocatePort succeeds and returns the stored record (idempotent).
//
// quota > 0 is how many ports (tcp and udp together) the tenant may hold;
// 0 means no quota. Beyond it the error wraps ErrQuota. The quota holds
// under concurrent allocations: after its write, an allocation checks that
// fewer than quota of the tenant's ports were allocated before it (by
// revision), and removes its record again otherwise.
//
// Bad input returns an error wrapping ErrInvalidPort.
func AllocatePort(ctx context.Context, s Store, p model.Port, r model.PortRange, quota int) (model.Port, error) {
	op := "allocate " + string(p.Proto) + " port"
	if p.Number != 0 {
		op = "allocate port " + p.String()
	}
	if err := checkPortRequest(p, r, quota); err != nil {
		return model.Port{}, fmt.Errorf("%s: %w: %w", op, ErrInvalidPort, err)
	}
	if p.Number != 0 {
		return takePort(ctx, s, op, p, quota)
	}
	all, err := listPortEntries(ctx, s)
	if err != nil {
		return model.Port{}, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkQuota(all, p.Tenant, quota); err != nil {
		return model.Port{}, fmt.Errorf("%s: %w", op, err)
	}
	taken := make(map[int]bool)
	for _, e := range all {
		if e.port.Proto == p.Proto {
			taken[e.port.Number] = true
		}
	}
	size := r.Size()
	start := rand.IntN(size)
	attempts := 0
	for i := 0; i < size; i++ {
		n := r.First + (start+i)%size
		if taken[n] {
			continue
		}
		if attempts == maxPortAttempts {
			return model.Port{}, fmt.Errorf("%s: %d ports tried in %s, all taken meanwhile by other allocations; try again: %w",
				op, attempts, r, ErrConflict)
		}
		attempts++
		p.Number = n
		rev, err := PutJSON(ctx, s, PortKey(p.Proto, n), p, 0)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		if err := keepWithinQuota(ctx, s, p, rev, quota); err != nil {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		return p, nil
	}
	return model.Port{}, fmt.Errorf("%s: all %d ports of %s are held: %w", op, size, r, ErrRangeFull)
}

// takePort is AllocatePort of the one port p.Number.
func takePort(ctx context.Context, s Store, op string, p model.Port, quota int) (model.Port, error) {
	key := PortKey(p.Proto, p.Number)
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		var cur model.Port
		_, err := GetJSON(ctx, s, key, &cur)
		if err == nil {
			if cur.Tenant == p.Tenant && cur.Service == p.Service {
				return cur, nil
			}
			return model.Port{}, fmt.Errorf("%s: held by another tenant or service: %w", op, ErrPortTaken)
		}
		if !errors.Is(err, ErrNotFound) {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		all, err := listPortEntries(ctx, s)
		if err != nil {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		if err := checkQuota(all, p.Tenant, quota); err != nil {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		rev, err := PutJSON(ctx, s, key, p, 0)
		if errors.Is(err, ErrConflict) {
			continue // taken meanwhile: read who holds it
		}
		if err != nil {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		if err := keepWithinQuota(ctx, s, p, rev, quota); err != nil {
			return model.Port{}, fmt.Errorf("%s: %w", op, err)
		}
		return p, nil
	}
	return model.Port{}, fmt.Errorf("%s: still changing after %d attempts: %w", op, maxUpdateAttempts, ErrConflict)
}

// checkPortRequest checks AllocatePort's input.
func checkPortRequest(p model.Port, r model.PortRange, quota int) error {
	if !p.Proto.Valid() {
		return fmt.Errorf("protocol %q not accepted; use tcp or udp", p.Proto)
	}
	if !r.Valid() {
		return fmt.Errorf("port range %d-%d is empty or outside 1-%d", r.First, r.Last, model.MaxPort)
	}
	if p.Number != 0 {
		if err := model.ValidatePort(p.Number); err != nil {
			return err
		}
		if !r.Contains(p.Number) {
			return fmt.Errorf("port %d is outside the gateway's range %s; ask for one in it, or for any (0)", p.Number, r)
		}
	}
	if p.Tenant != "" {
		if err := model.ValidateTenantName(p.Tenant); err != nil {
			return err
		}
	}
	switch {
	case p.SNI && p.Proto != model.PortTCP:
		return fmt.Errorf("sni: only a tcp port can be an SNI port, not %s", p.Proto)
	case p.SNI && p.Service != "":
		return fmt.Errorf("service: an SNI port serves all of its tenant's tls services; give no service (%q given)", p.Service)
	case !p.SNI:
		if err := model.ValidateName(p.Service); err != nil {
			return fmt.Errorf("service: %w", err)
		}
	}
	if quota < 0 {
		return fmt.Errorf("quota %d; use a count, or 0 for none", quota)
	}
	return nil
}

// portEntry is a decoded port record with its revision.
type portEntry struct {
	port model.Port
	rev  int64
}

// listPortEntries decodes every port record, in key order.
func listPortEntries(ctx context.Context, s Store) ([]portEntry, error) {
	entries, err := s.List(ctx, PortsPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]portEntry, 0, len(entries))
	for _, e := range entries {
		var p model.Port
		if err := json.Unmarshal(e.Value, &p); err != nil {
			return nil, fmt.Errorf("decode %s: %w", e.Key, err)
		}
		out = append(out, portEntry{port: p, rev: e.Rev})
	}
	return out, nil
}

// checkQuota refuses when tenant already holds quota (> 0) ports.
func checkQuota(all []portEntry, tenant string, quota int) error {
	if quota == 0 {
		return nil
	}
	held := 0
	for _, e := range all {
		if e.port.Tenant == tenant {
			held++
		}
	}
	if held >= quota {
		return fmt.Errorf("tenant holds %d ports, its quota is %d; release one first: %w", held, quota, ErrQuota)
	}
	return nil
}

// keepWithinQuota runs after p was written at revision rev. If quota or
// more of the tenant's ports were written before it (a concurrent
// allocation passed the same check), it deletes p's record again and
// returns an error wrapping ErrQuota. The first quota allocations by
// revision always stay, so concurrent allocations never exceed the quota.
func keepWithinQuota(ctx context.Context, s Store, p model.Port, rev int64, quota int) error {
	if quota == 0 {
		return nil
	}
	all, err := listPortEntries(ctx, s)
	if err == nil {
		before := 0
		for _, e := range all {
			if e.port.Tenant == p.Tenant && e.rev < rev {
				before++
			}
		}
		if before < quota {
			return nil
		}
		err = fmt.Errorf("tenant holds %d ports, its quota is %d; release one first: %w", before, quota, ErrQuota)
	} else {
		err = fmt.Errorf("check quota: %w", err)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if derr := s.Delete(rctx, PortKey(p.Proto, p.Number), rev); derr != nil {
		return errors.Join(err, fmt.Errorf("roll back port %s: %w", p, derr))
	}
	return err
}

// ReleasePort deletes the record of port n of proto if tenant (empty: an
// anonymous quick tunnel) holds it. It returns an error wrapping
// ErrNotFound when no one holds the port, ErrNotOwner when another tenant
// does, and ErrInvalidPort for a bad protocol or number.
func ReleasePort(ctx context.Context, s Store, proto model.PortProto, n int, tenant string) error {
	op := fmt.Sprintf("release port %s/%d", proto, n)
	if !proto.Valid() {
		return fmt.Errorf("%s: %w: protocol %q not accepted; use tcp or udp", op, ErrInvalidPort, proto)
	}
	if err := model.ValidatePort(n); err != nil {
		return fmt.Errorf("%s: %w: %w", op, ErrInvalidPort, err)
	}
	key := PortKey(proto, n)
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		var cur model.Port
		rev, err := GetJSON(ctx, s, key, &cur)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if cur.Tenant != tenant {
			return fmt.Errorf("%s: %w", op, ErrNotOwner)
		}
		err = s.Delete(ctx, key, rev)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ErrConflict):
			continue
		default:
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return fmt.Errorf("%s: still changing after %d attempts: %w", op, maxUpdateAttempts, ErrConflict)
}

// ListPorts returns every port record, sorted by protocol, then number.
func ListPorts(ctx context.Context, s Store) ([]model.Port, error) {
	all, err := listPortEntries(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	out := make([]model.Port, 0, len(all))
	for _, e := range all {
		out = append(out, e.port)
	}
	slices.SortFunc(out, comparePorts)
	return out, nil
}

// PortsOf returns the ports tenant (empty: anonymous quick tunnels) holds,
// sorted as ListPorts.
func PortsOf(ctx context.Context, s Store, tenant string) ([]model.Port, error) {
	all, err := ListPorts(ctx, s)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(p model.Port) bool { return p.Tenant != tenant }), nil
}

func comparePorts(a, b model.Port) int {
	return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Number, b.Number))
}
