package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

func TestKeys(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{store.TenantKey("acme"), "tenants/acme"},
		{store.TokenKey("abc123"), "tokens/abc123"},
		{store.ServiceKey("shop"), "services/shop"},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
}

func TestJSON(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	in := model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP, Created: time.Unix(1700000000, 0).UTC()}
	rev, err := store.PutJSON(ctx, s, store.ServiceKey("shop"), in, 0)
	if err != nil {
		t.Fatalf("PutJSON: %v", err)
	}
	var out model.Service
	got, err := store.GetJSON(ctx, s, store.ServiceKey("shop"), &out)
	if err != nil {
		t.Fatalf("GetJSON: %v", err)
	}
	if got != rev || !reflect.DeepEqual(out, in) {
		t.Fatalf("GetJSON = %+v at rev %d, want %+v at rev %d", out, got, in, rev)
	}
	if _, err := store.PutJSON(ctx, s, store.ServiceKey("shop"), in, 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("PutJSON create-only on existing = %v, want ErrConflict", err)
	}
	if _, err := store.GetJSON(ctx, s, store.ServiceKey("none"), &out); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetJSON missing = %v, want ErrNotFound", err)
	}
	if _, err := s.Put(ctx, "services/bad", []byte("{not json"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := store.GetJSON(ctx, s, "services/bad", &out); err == nil || !strings.Contains(err.Error(), "services/bad") {
		t.Fatalf("GetJSON of bad JSON = %v, want an error naming the key", err)
	}
	if _, err := store.ListServices(ctx, s); err == nil || !strings.Contains(err.Error(), "services/bad") {
		t.Fatalf("ListServices with bad JSON = %v, want an error naming the key", err)
	}
}

func newTenant(name string) (model.Tenant, string) {
	token := model.NewToken()
	return model.Tenant{Name: name, TokenHash: model.HashToken(token), Created: time.Unix(1700000000, 0).UTC()}, token
}

func TestCreateTenant(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	acme, token := newTenant("acme")
	if err := store.CreateTenant(ctx, s, acme); err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	got, err := store.TenantByToken(ctx, s, token)
	if err != nil {
		t.Fatalf("TenantByToken: %v", err)
	}
	if got != acme {
		t.Fatalf("TenantByToken = %+v, want %+v", got, acme)
	}

	// Same name, other token: conflict, and the other token is not indexed.
	dup, dupToken := newTenant("acme")
	if err := store.CreateTenant(ctx, s, dup); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CreateTenant with taken name = %v, want ErrConflict", err)
	}
	if _, err := store.TenantByToken(ctx, s, dupToken); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token of the rejected tenant: TenantByToken = %v, want ErrNotFound", err)
	}

	// Other name, same token hash: conflict, and the new tenant is rolled back.
	thief := acme
	thief.Name = "thief"
	if err := store.CreateTenant(ctx, s, thief); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CreateTenant with taken token = %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, store.TenantKey("thief")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("rejected tenant left behind: Get = %v", err)
	}
	if got, err := store.TenantByToken(ctx, s, token); err != nil || got.Name != "acme" {
		t.Fatalf("after rejected create: TenantByToken = %+v, %v; want acme", got, err)
	}
}

func TestCreateTenantInvalid(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	good, token := newTenant("ok")
	for _, c := range []struct {
		name   string
		tenant model.Tenant
		want   string
	}{
		{"bad name", model.Tenant{Name: "Bad_Name", TokenHash: good.TokenHash}, "invalid tenant name"},
		{"empty hash", model.Tenant{Name: "ok"}, "invalid token hash"},
		{"raw token", model.Tenant{Name: "ok", TokenHash: token}, "invalid token hash"},
		{"upper-case hash", model.Tenant{Name: "ok", TokenHash: strings.ToUpper(good.TokenHash)}, "invalid token hash"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := store.CreateTenant(ctx, s, c.tenant)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CreateTenant = %v, want an error containing %q", err, c.want)
			}
		})
	}
	if list, err := s.List(ctx, ""); err != nil || len(list) != 0 {
		t.Fatalf("invalid tenants wrote %d entries (err %v)", len(list), err)
	}
}

// failTokens fails every write of a token index entry, as a full disk would.
type failTokens struct{ store.Store }

var errDiskFull = errors.New("disk full")

func (f failTokens) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if strings.HasPrefix(key, store.TokensPrefix) {
		return 0, errDiskFull
	}
	return f.Store.Put(ctx, key, value, expect)
}

func TestCreateTenantRollback(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	acme, _ := newTenant("acme")
	err := store.CreateTenant(ctx, failTokens{s}, acme)
	if !errors.Is(err, errDiskFull) || errors.Is(err, store.ErrConflict) {
		t.Fatalf("CreateTenant = %v, want the write error", err)
	}
	if _, err := s.Get(ctx, store.TenantKey("acme")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tenant not rolled back: Get = %v", err)
	}
}

func TestTenantByToken(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	acme, _ := newTenant("acme")
	if err := store.CreateTenant(ctx, s, acme); err != nil {
		t.Fatal(err)
	}
	unknown := model.NewToken()
	_, err := store.TenantByToken(ctx, s, unknown)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown token: %v, want ErrNotFound", err)
	}
	if strings.Contains(err.Error(), unknown) {
		t.Fatalf("error reveals the token: %v", err)
	}
	if _, err := store.TenantByToken(ctx, s, ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("empty token: %v, want ErrNotFound", err)
	}

	// A stale index entry pointing at a tenant with another token must not authenticate.
	stale := model.NewToken()
	if _, err := s.Put(ctx, store.TokenKey(model.HashToken(stale)), []byte("acme"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := store.TenantByToken(ctx, s, stale); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stale index entry: %v, want ErrNotFound", err)
	}
}

func TestDeleteTenant(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	acme, acmeToken := newTenant("acme")
	other, otherToken := newTenant("other")
	for _, tn := range []model.Tenant{acme, other} {
		if err := store.CreateTenant(ctx, s, tn); err != nil {
			t.Fatal(err)
		}
	}
	for name, owner := range map[string]string{"shop": "acme", "blog": "acme", "wiki": "other"} {
		svc := model.Service{Name: name, Tenant: owner, Protocol: model.ProtoHTTP}
		if _, err := store.PutJSON(ctx, s, store.ServiceKey(name), svc, 0); err != nil {
			t.Fatal(err)
		}
	}

	if err := store.DeleteTenant(ctx, s, "acme"); err != nil {
		t.Fatalf("DeleteTenant: %v", err)
	}
	for _, key := range []string{store.TenantKey("acme"), store.TokenKey(acme.TokenHash), store.ServiceKey("shop"), store.ServiceKey("blog")} {
		if _, err := s.Get(ctx, key); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s after DeleteTenant: Get = %v, want ErrNotFound", key, err)
		}
	}
	if _, err := store.TenantByToken(ctx, s, acmeToken); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted tenant's token still works: %v", err)
	}
	if got, err := store.TenantByToken(ctx, s, otherToken); err != nil || got.Name != "other" {
		t.Errorf("other tenant: TenantByToken = %+v, %v", got, err)
	}
	services, err := store.ListServices(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(services) != 1 || services[0].Name != "wiki" {
		t.Errorf("services after DeleteTenant = %+v, want only wiki", services)
	}

	if err := store.DeleteTenant(ctx, s, "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteTenant of a missing tenant = %v, want ErrNotFound", err)
	}
}

func TestListRecords(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	tenants, err := store.ListTenants(ctx, s)
	if err != nil || tenants == nil || len(tenants) != 0 {
		t.Fatalf("ListTenants on empty store = %#v, %v; want an empty slice", tenants, err)
	}
	services, err := store.ListServices(ctx, s)
	if err != nil || services == nil || len(services) != 0 {
		t.Fatalf("ListServices on empty store = %#v, %v; want an empty slice", services, err)
	}

	for _, name := range []string{"zeta", "alpha", "mid"} {
		tn, _ := newTenant(name)
		if err := store.CreateTenant(ctx, s, tn); err != nil {
			t.Fatal(err)
		}
		svc := model.Service{Name: "svc-" + name, Tenant: name, Protocol: model.ProtoTLS}
		if _, err := store.PutJSON(ctx, s, store.ServiceKey(svc.Name), svc, 0); err != nil {
			t.Fatal(err)
		}
	}
	if tenants, err = store.ListTenants(ctx, s); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tn := range tenants {
		names = append(names, tn.Name)
	}
	if want := []string{"alpha", "mid", "zeta"}; !slices.Equal(names, want) {
		t.Errorf("ListTenants names = %q, want %q", names, want)
	}
	if services, err = store.ListServices(ctx, s); err != nil {
		t.Fatal(err)
	}
	names = names[:0]
	for _, svc := range services {
		names = append(names, svc.Name)
	}
	if want := []string{"svc-alpha", "svc-mid", "svc-zeta"}; !slices.Equal(names, want) {
		t.Errorf("ListServices names = %q, want %q", names, want)
	}
}

func TestServiceRecords(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	created := time.Unix(1700000000, 0).UTC()
	shop := model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP, Created: created}
	rev, err := store.CreateService(ctx, s, shop)
	if err != nil {
		t.Fatalf("CreateService: %v", err)
	}
	if _, err := store.CreateService(ctx, s, model.Service{Name: "shop", Tenant: "other"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CreateService of a taken name = %v, want ErrConflict", err)
	}
	for _, bad := range []string{"", "Bad", "admin", "-x"} {
		if _, err := store.CreateService(ctx, s, model.Service{Name: bad, Tenant: "acme"}); err == nil || errors.Is(err, store.ErrConflict) {
			t.Errorf("CreateService(%q) = %v, want a name error", bad, err)
		}
	}
	got, grev, err := store.GetService(ctx, s, "shop")
	if err != nil || grev != rev || got.Tenant != "acme" || !got.Created.Equal(created) {
		t.Fatalf("GetService = %+v at %d, %v; want shop at %d", got, grev, err, rev)
	}
	if _, _, err := store.GetService(ctx, s, "none"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetService of a missing name = %v, want ErrNotFound", err)
	}

	// Update: the name is kept whatever the function does.
	up := []model.Upstream{{URL: "http://[2001:db8::10]:8080", Weight: 3}}
	got, nrev, err := store.UpdateService(ctx, s, "shop", 0, func(sv *model.Service) error {
		sv.Upstreams = up
		sv.LB = model.LBLeastRequest
		sv.Name = "renamed"
		return nil
	})
	if err != nil || nrev <= rev || got.Name != "shop" || got.LB != model.LBLeastRequest || len(got.Upstreams) != 1 {
		t.Fatalf("UpdateService = %+v at %d, %v", got, nrev, err)
	}
	if _, _, err := store.GetService(ctx, s, "renamed"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateService renamed the record: %v", err)
	}
	// An error from the function aborts and is returned wrapped.
	errNo := errors.New("not yours")
	if _, _, err := store.UpdateService(ctx, s, "shop", 0, func(*model.Service) error { return errNo }); !errors.Is(err, errNo) {
		t.Errorf("UpdateService with a refusing function = %v, want it wrapped", err)
	}
	// With an old revision: conflict, no retry.
	calls := 0
	if _, _, err := store.UpdateService(ctx, s, "shop", rev, func(*model.Service) error { calls++; return nil }); !errors.Is(err, store.ErrConflict) || calls != 0 {
		t.Errorf("UpdateService at an old revision = %v after %d calls, want ErrConflict and no call", err, calls)
	}
	if _, r2, err := store.UpdateService(ctx, s, "shop", nrev, func(sv *model.Service) error { sv.LB = ""; return nil }); err != nil || r2 <= nrev {
		t.Errorf("UpdateService at the current revision = %d, %v", r2, err)
	} else {
		nrev = r2
	}
	if _, _, err := store.UpdateService(ctx, s, "none", 0, func(*model.Service) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateService of a missing name = %v, want ErrNotFound", err)
	}

	// Delete: check refuses, old revision conflicts, then it goes.
	if err := store.DeleteService(ctx, s, "shop", 0, func(model.Service) error { return errNo }); !errors.Is(err, errNo) {
		t.Errorf("DeleteService with a refusing check = %v", err)
	}
	if err := store.DeleteService(ctx, s, "shop", rev, nil); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DeleteService at an old revision = %v, want ErrConflict", err)
	}
	if err := store.DeleteService(ctx, s, "shop", nrev, func(sv model.Service) error {
		if sv.Tenant != "acme" {
			return errNo
		}
		return nil
	}); err != nil {
		t.Fatalf("DeleteService: %v", err)
	}
	if err := store.DeleteService(ctx, s, "shop", 0, nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteService of a missing name = %v, want ErrNotFound", err)
	}
}

// TestUpdateServiceConcurrent: concurrent read-modify-writes lose no update.
func TestUpdateServiceConcurrent(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	if _, err := store.CreateService(ctx, s, model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP}); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	errc := make(chan error, writers)
	for i := 0; i < writers; i++ {
		go func() {
			_, _, err := store.UpdateService(ctx, s, "shop", 0, func(sv *model.Service) error {
				sv.Upstreams = append(sv.Upstreams, model.Upstream{URL: fmt.Sprintf("http://10.0.0.%d:80", len(sv.Upstreams)+1)})
				return nil
			})
			errc <- err
		}()
	}
	for i := 0; i < writers; i++ {
		if err := <-errc; err != nil {
			t.Errorf("UpdateService: %v", err)
		}
	}
	got, _, err := store.GetService(ctx, s, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Upstreams) != writers {
		t.Errorf("%d upstreams after %d concurrent appends: %+v", len(got.Upstreams), writers, got.Upstreams)
	}
}
