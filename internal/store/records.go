package store

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// Key prefixes of the typed records, for List and Watch.
const (
	TenantsPrefix  = "tenants/"
	TokensPrefix   = "tokens/"
	ServicesPrefix = "services/"
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
// token stops working at once, then every service it owns, then the tenant
// record. It returns an error wrapping ErrNotFound if there is no such tenant.
// A service created for the tenant while it is being deleted may survive.
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
	if err := s.Delete(ctx, TenantKey(name), AnyRev); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete tenant %s: %w", name, err)
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
