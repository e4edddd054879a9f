package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/webgw/webgw/internal/model"
)

// Key prefixes of tenants' DNS zones. DNSPrefix holds both, for one watch.
const (
	DNSPrefix = "dns/"
	// ZonesPrefix holds dns/zones/<zone> (JSON model.Zone).
	ZonesPrefix = "dns/zones/"
	// ZoneRecordsPrefix holds dns/records/<zone>: the JSON list of the
	// zone's model.Record, written as a whole, so checks across records
	// (CNAME exclusivity, the count) hold under concurrent changes.
	ZoneRecordsPrefix = "dns/records/"
)

// maxRecordsValue bounds the encoded records of one zone, below etcd's
// default request limit (1.5 MiB).
const maxRecordsValue = 1 << 20

// ZoneKey is the key of zone name's record.
func ZoneKey(name string) string { return ZonesPrefix + name }

// ZoneRecordsKey is the key of zone name's records.
func ZoneRecordsKey(name string) string { return ZoneRecordsPrefix + name }

// ZoneConflictError refuses a zone that another tenant holds, or that
// contains or lies in another tenant's zone. It wraps ErrConflict.
type ZoneConflictError struct {
	// Zone is the zone in the way; Same says it is the zone asked for.
	Zone string
	Same bool
}

func (e *ZoneConflictError) Error() string {
	if e.Same {
		return fmt.Sprintf("zone %s is held by another tenant", e.Zone)
	}
	return fmt.Sprintf("zone overlaps %s, which another tenant holds", e.Zone)
}

func (e *ZoneConflictError) Unwrap() error { return ErrConflict }

// CreateZone stores a new zone for z.Tenant. A zone of that name (of any
// tenant), or one of another tenant that contains z or lies in it, returns
// a *ZoneConflictError. The overlap check and the write are not atomic: two
// tenants adding overlapping zones at the same instant may both succeed;
// the same name cannot be taken twice.
func CreateZone(ctx context.Context, s Store, z model.Zone) (int64, error) {
	zones, err := ListZones(ctx, s)
	if err != nil {
		return 0, fmt.Errorf("create zone %s: %w", z.Name, err)
	}
	for _, o := range zones {
		if o.Name == z.Name {
			return 0, &ZoneConflictError{Zone: o.Name, Same: true}
		}
		if o.Tenant != z.Tenant && (model.InZone(o.Name, z.Name) || model.InZone(z.Name, o.Name)) {
			return 0, &ZoneConflictError{Zone: o.Name}
		}
	}
	rev, err := PutJSON(ctx, s, ZoneKey(z.Name), z, 0)
	if errors.Is(err, ErrConflict) {
		return 0, &ZoneConflictError{Zone: z.Name, Same: true}
	}
	if err != nil {
		return 0, fmt.Errorf("create zone %s: %w", z.Name, err)
	}
	return rev, nil
}

// GetZone reads zone name; ErrNotFound if it does not exist.
func GetZone(ctx context.Context, s Store, name string) (model.Zone, int64, error) {
	var z model.Zone
	rev, err := GetJSON(ctx, s, ZoneKey(name), &z)
	return z, rev, err
}

// ListZones returns every zone, sorted by name.
func ListZones(ctx context.Context, s Store) ([]model.Zone, error) {
	return listJSON[model.Zone](ctx, s, ZonesPrefix)
}

// UpdateZone reads zone name, lets update change it (an error from update
// aborts and is returned) and writes it back, retrying on a concurrent change.
func UpdateZone(ctx context.Context, s Store, name string, update func(*model.Zone) error) (model.Zone, error) {
	for {
		z, rev, err := GetZone(ctx, s, name)
		if err != nil {
			return model.Zone{}, err
		}
		if err := update(&z); err != nil {
			return model.Zone{}, err
		}
		z.Name = name
		_, err = PutJSON(ctx, s, ZoneKey(name), z, rev)
		if errors.Is(err, ErrConflict) {
			continue
		}
		return z, err
	}
}

// DeleteZone removes zone name and its records if check (nil: none)
// accepts it. It returns ErrNotFound if there is no such zone.
func DeleteZone(ctx context.Context, s Store, name string, check func(model.Zone) error) error {
	for {
		z, rev, err := GetZone(ctx, s, name)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(z); err != nil {
				return err
			}
		}
		err = s.Delete(ctx, ZoneKey(name), rev)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("delete zone %s: %w", name, err)
		}
		break
	}
	if err := s.Delete(ctx, ZoneRecordsKey(name), AnyRev); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete records of zone %s: %w", name, err)
	}
	return nil
}

// deleteZonesOf removes every zone of tenant, with its records.
func deleteZonesOf(ctx context.Context, s Store, tenant string) error {
	zones, err := ListZones(ctx, s)
	if err != nil {
		return err
	}
	for _, z := range zones {
		if z.Tenant != tenant {
			continue
		}
		err := DeleteZone(ctx, s, z.Name, func(cur model.Zone) error {
			if cur.Tenant != tenant {
				return errReplacedZone
			}
			return nil
		})
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, errReplacedZone) {
			return err
		}
	}
	return nil
}

var errReplacedZone = errors.New("zone replaced meanwhile")

// ZoneRecords returns the records of zone name (empty if it has none) and
// the revision of their key (0 when none were ever written).
func ZoneRecords(ctx context.Context, s Store, name string) ([]model.Record, int64, error) {
	var recs []model.Record
	rev, err := GetJSON(ctx, s, ZoneRecordsKey(name), &recs)
	if errors.Is(err, ErrNotFound) {
		return []model.Record{}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	if recs == nil {
		recs = []model.Record{}
	}
	return recs, rev, nil
}

// RecordsError refuses a list of records that breaks a rule across
// records (model.CheckRecords) or the size bound: the caller's mistake.
type RecordsError struct{ Err error }

func (e *RecordsError) Error() string { return e.Err.Error() }
func (e *RecordsError) Unwrap() error { return e.Err }

// UpdateZoneRecords reads the records of zone name, lets update return
// the new list (an error from update aborts and is returned), and writes
// it, retrying on a concurrent change. The zone must exist. It returns the
// list written. A list that breaks the rules returns a *RecordsError.
func UpdateZoneRecords(ctx context.Context, s Store, name string, update func([]model.Record) ([]model.Record, error)) ([]model.Record, error) {
	for {
		if _, _, err := GetZone(ctx, s, name); err != nil {
			return nil, err
		}
		recs, rev, err := ZoneRecords(ctx, s, name)
		if err != nil {
			return nil, err
		}
		out, err := update(recs)
		if err != nil {
			return nil, err
		}
		if err := model.CheckRecords(name, out); err != nil {
			return nil, &RecordsError{Err: err}
		}
		if n := encodedSize(out); n > maxRecordsValue {
			return nil, &RecordsError{Err: fmt.Errorf("the zone's records would take %d bytes; at most %d are accepted", n, maxRecordsValue)}
		}
		_, err = PutJSON(ctx, s, ZoneRecordsKey(name), out, rev)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("write records of zone %s: %w", name, err)
		}
		return out, nil
	}
}

func encodedSize(recs []model.Record) int {
	b, err := json.Marshal(recs)
	if err != nil {
		return 0 // PutJSON reports it
	}
	return len(b)
}
