package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

func TestZones(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	now := time.Unix(1700000000, 0).UTC()
	zone := func(name, tenant string) model.Zone {
		return model.Zone{Name: name, Tenant: tenant, Token: "tok", State: model.ZonePending, Created: now}
	}
	if _, err := store.CreateZone(ctx, s, zone("example.test", "acme")); err != nil {
		t.Fatalf("CreateZone: %v", err)
	}
	// The same tenant may hold a zone inside its own.
	if _, err := store.CreateZone(ctx, s, zone("sub.example.test", "acme")); err != nil {
		t.Fatalf("CreateZone of a sub-zone of the same tenant: %v", err)
	}
	for _, z := range []model.Zone{
		zone("example.test", "acme"), zone("example.test", "other"),
		zone("deep.example.test", "other"), zone("test.example.test", "other"),
	} {
		_, err := store.CreateZone(ctx, s, z)
		var ce *store.ZoneConflictError
		if !errors.As(err, &ce) || !errors.Is(err, store.ErrConflict) {
			t.Errorf("CreateZone(%s for %s) = %v; want a ZoneConflictError", z.Name, z.Tenant, err)
		}
	}
	if _, err := store.CreateZone(ctx, s, zone("other.test", "other")); err != nil {
		t.Fatalf("CreateZone of a disjoint zone: %v", err)
	}
	// A zone containing another tenant's: refused.
	if _, err := store.CreateZone(ctx, s, zone("deeper.sub.example.test", "other")); err == nil {
		t.Error("a zone inside another tenant's zone was accepted")
	}

	z, err := store.UpdateZone(ctx, s, "example.test", func(z *model.Zone) error { z.State = model.ZoneVerified; return nil })
	if err != nil || z.State != model.ZoneVerified {
		t.Fatalf("UpdateZone = %+v, %v", z, err)
	}

	recs, rev, err := store.ZoneRecords(ctx, s, "example.test")
	if err != nil || len(recs) != 0 || rev != 0 {
		t.Fatalf("ZoneRecords of a new zone = %v, %d, %v", recs, rev, err)
	}
	add := func(r model.Record) error {
		_, err := store.UpdateZoneRecords(ctx, s, "example.test", func(recs []model.Record) ([]model.Record, error) {
			return append(recs, r), nil
		})
		return err
	}
	if err := add(model.Record{ID: "1", Name: "www", Type: "A", Data: "192.0.2.1"}); err != nil {
		t.Fatal(err)
	}
	if err := add(model.Record{ID: "2", Name: "www", Type: "CNAME", Data: "x.test."}); err == nil || !strings.Contains(err.Error(), "CNAME") {
		t.Errorf("a CNAME beside an A was stored: %v", err)
	}
	if _, err := store.UpdateZoneRecords(ctx, s, "missing.test", func(r []model.Record) ([]model.Record, error) { return r, nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("records of a missing zone: %v", err)
	}
	big := model.Record{Name: "t", Type: "TXT", Data: `"` + strings.Repeat("a", 250) + `"`}
	_, err = store.UpdateZoneRecords(ctx, s, "example.test", func(recs []model.Record) ([]model.Record, error) {
		for i := range model.MaxRecords {
			big.ID = string(rune('a'+i%26)) + time.Duration(i).String()
			big.Data = `"` + strings.Repeat("a", 250) + big.ID + `"`
			recs = append(recs, big)
		}
		return recs, nil
	})
	if err == nil {
		t.Error("1001 records were stored")
	}
	recs, _, _ = store.ZoneRecords(ctx, s, "example.test")
	if len(recs) != 1 {
		t.Errorf("records = %v; want the one A", recs)
	}

	// Removing the tenant removes its zones and their records.
	if err := store.CreateTenant(ctx, s, model.Tenant{Name: "acme", TokenHash: model.HashToken("t1")}); err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteTenant(ctx, s, "acme"); err != nil {
		t.Fatal(err)
	}
	zones, err := store.ListZones(ctx, s)
	if err != nil || len(zones) != 1 || zones[0].Name != "other.test" {
		t.Errorf("zones after removing acme = %v, %v", zones, err)
	}
	if _, err := s.Get(ctx, store.ZoneRecordsKey("example.test")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("records of a removed zone: %v", err)
	}
	if err := store.DeleteZone(ctx, s, "example.test", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteZone of a missing zone = %v", err)
	}
}
