package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/webgw/webgw/internal/model"
)

// DomainsPrefix holds domains/<name> (DomainKey), JSON model.Domain.
const DomainsPrefix = "domains/"

// DomainKey is the key of the custom domain record named name.
func DomainKey(name string) string { return DomainsPrefix + name }

// GetDomain returns the custom domain named name and its revision, or an
// error wrapping ErrNotFound.
func GetDomain(ctx context.Context, s Store, name string) (model.Domain, int64, error) {
	var d model.Domain
	rev, err := GetJSON(ctx, s, DomainKey(name), &d)
	if err != nil {
		return model.Domain{}, 0, fmt.Errorf("get domain %s: %w", name, err)
	}
	return d, rev, nil
}

// CreateDomain stores a new custom domain record and returns its revision.
// A name already held (by any tenant, verified or not) returns an error
// wrapping ErrConflict.
func CreateDomain(ctx context.Context, s Store, d model.Domain) (int64, error) {
	if err := model.ValidateDomainName(d.Name); err != nil {
		return 0, fmt.Errorf("create domain: %w", err)
	}
	rev, err := PutJSON(ctx, s, DomainKey(d.Name), d, 0)
	if errors.Is(err, ErrConflict) {
		return 0, fmt.Errorf("create domain %s: already added: %w", d.Name, err)
	}
	if err != nil {
		return 0, fmt.Errorf("create domain %s: %w", d.Name, err)
	}
	return rev, nil
}

// UpdateDomain changes the domain named name with a compare-and-swap,
// calling update again when another writer came in between (so update must
// have no other side effects). An error from update aborts and is returned
// wrapped; a missing record returns an error wrapping ErrNotFound. The
// record's name, tenant and token are kept whatever update does.
func UpdateDomain(ctx context.Context, s Store, name string, update func(*model.Domain) error) (model.Domain, int64, error) {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		d, rev, err := GetDomain(ctx, s, name)
		if err != nil {
			return model.Domain{}, 0, fmt.Errorf("update domain %s: %w", name, errors.Unwrap(err))
		}
		orig := d
		if err := update(&d); err != nil {
			return model.Domain{}, 0, fmt.Errorf("update domain %s: %w", name, err)
		}
		d.Name, d.Tenant, d.Token = orig.Name, orig.Tenant, orig.Token
		nrev, err := PutJSON(ctx, s, DomainKey(name), d, rev)
		switch {
		case err == nil:
			return d, nrev, nil
		case errors.Is(err, ErrConflict):
			continue
		default:
			return model.Domain{}, 0, fmt.Errorf("update domain %s: %w", name, err)
		}
	}
	return model.Domain{}, 0, fmt.Errorf("update domain %s: still changing after %d attempts: %w", name, maxUpdateAttempts, ErrConflict)
}

// DeleteDomain removes the domain named name if check (when non-nil)
// accepts it; an error from check aborts and is returned wrapped. A missing
// record returns an error wrapping ErrNotFound.
func DeleteDomain(ctx context.Context, s Store, name string, check func(model.Domain) error) error {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		d, rev, err := GetDomain(ctx, s, name)
		if err != nil {
			return fmt.Errorf("delete domain %s: %w", name, errors.Unwrap(err))
		}
		if check != nil {
			if err := check(d); err != nil {
				return fmt.Errorf("delete domain %s: %w", name, err)
			}
		}
		err = s.Delete(ctx, DomainKey(name), rev)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ErrConflict):
			continue
		default:
			return fmt.Errorf("delete domain %s: %w", name, err)
		}
	}
	return fmt.Errorf("delete domain %s: still changing after %d attempts: %w", name, maxUpdateAttempts, ErrConflict)
}

// ListDomains returns every custom domain, sorted by name.
func ListDomains(ctx context.Context, s Store) ([]model.Domain, error) {
	return listJSON[model.Domain](ctx, s, DomainsPrefix)
}

// DomainsOf returns the custom domains of tenant, sorted by name.
func DomainsOf(ctx context.Context, s Store, tenant string) ([]model.Domain, error) {
	all, err := ListDomains(ctx, s)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, d := range all {
		if d.Tenant == tenant {
			out = append(out, d)
		}
	}
	return out, nil
}

// detachDomainsIf deletes the domain records match accepts: the domains
// of a service or tenant that goes away.
func detachDomainsIf(ctx context.Context, s Store, match func(model.Domain) bool) error {
	entries, err := s.List(ctx, DomainsPrefix)
	if err != nil {
		return fmt.Errorf("detach domains: %w", err)
	}
	for _, e := range entries {
		if err := deleteIf(ctx, s, e.Key, func(v []byte) (bool, error) {
			var d model.Domain
			if err := json.Unmarshal(v, &d); err != nil {
				return false, err
			}
			return match(d), nil
		}); err != nil {
			return fmt.Errorf("detach domain %s: %w", e.Key, err)
		}
	}
	return nil
}
