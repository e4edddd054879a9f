package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

func TestDomains(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	if got := store.DomainKey("www.example.test"); got != "domains/www.example.test" {
		t.Fatalf("key %q", got)
	}
	d := model.Domain{Name: "www.example.test", Tenant: "acme", Service: "shop", Token: model.NewDomainToken(), State: model.DomainPending, Created: time.Unix(1700000000, 0).UTC()}
	if _, err := store.CreateDomain(ctx, s, d); err != nil {
		t.Fatal(err)
	}
	// One domain, one owner: whoever asks second is refused, pending or not.
	other := d
	other.Tenant, other.Token = "globex", model.NewDomainToken()
	if _, err := store.CreateDomain(ctx, s, other); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	if _, err := store.CreateDomain(ctx, s, model.Domain{Name: "Bad.example"}); err == nil {
		t.Fatal("bad name accepted")
	}
	got, _, err := store.UpdateDomain(ctx, s, d.Name, func(x *model.Domain) error {
		x.State = model.DomainVerified
		x.Tenant, x.Token = "mallory", "x" // kept whatever update does
		return nil
	})
	if err != nil || got.State != model.DomainVerified || got.Tenant != "acme" || got.Token != d.Token {
		t.Fatalf("update: %+v %v", got, err)
	}
	if _, _, err := store.UpdateDomain(ctx, s, "nope.example.test", func(*model.Domain) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	if _, err := store.CreateDomain(ctx, s, model.Domain{Name: "api.other.test", Tenant: "globex", Service: "books"}); err != nil {
		t.Fatal(err)
	}
	mine, err := store.DomainsOf(ctx, s, "acme")
	if err != nil || len(mine) != 1 || mine[0].Name != d.Name {
		t.Fatalf("DomainsOf: %+v %v", mine, err)
	}
	all, err := store.ListDomains(ctx, s)
	if err != nil || len(all) != 2 || all[0].Name != "api.other.test" {
		t.Fatalf("ListDomains: %+v %v", all, err)
	}
	refuse := errors.New("not yours")
	if err := store.DeleteDomain(ctx, s, d.Name, func(model.Domain) error { return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("refused delete: %v", err)
	}
	if err := store.DeleteDomain(ctx, s, d.Name, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteDomain(ctx, s, d.Name, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// TestDomainsFollowTheirService: deleting a service detaches its domains,
// deleting a tenant all of its domains; others stay.
func TestDomainsFollowTheirService(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	for _, tn := range []string{"acme", "globex"} {
		ten, _ := newTenant(tn)
		if err := store.CreateTenant(ctx, s, ten); err != nil {
			t.Fatal(err)
		}
	}
	for _, sv := range []model.Service{{Name: "shop", Tenant: "acme"}, {Name: "blog", Tenant: "acme"}, {Name: "books", Tenant: "globex"}} {
		sv.Protocol = model.ProtoHTTP
		if _, err := store.CreateService(ctx, s, sv); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []model.Domain{
		{Name: "shop.example.test", Tenant: "acme", Service: "shop"},
		{Name: "www.example.test", Tenant: "acme", Service: "shop"},
		{Name: "blog.example.test", Tenant: "acme", Service: "blog"},
		{Name: "api.globex.test", Tenant: "globex", Service: "books"},
	} {
		if _, err := store.CreateDomain(ctx, s, d); err != nil {
			t.Fatal(err)
		}
	}
	names := func() []string {
		all, err := store.ListDomains(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range all {
			out = append(out, d.Name)
		}
		return out
	}
	if err := store.DeleteService(ctx, s, "shop", 0, nil); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 2 || got[0] != "api.globex.test" || got[1] != "blog.example.test" {
		t.Fatalf("after deleting shop: %v", got)
	}
	if err := store.DeleteTenant(ctx, s, "acme"); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 1 || got[0] != "api.globex.test" {
		t.Fatalf("after deleting acme: %v", got)
	}
}
