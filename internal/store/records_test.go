package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
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

func TestPortKey(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{store.PortKey(model.PortTCP, 20000), "ports/tcp/20000"},
		{store.PortKey(model.PortUDP, 22), "ports/udp/22"},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
	if !strings.HasPrefix(store.PortKey(model.PortTCP, 1), store.PortsPrefix) {
		t.Errorf("PortKey is not under PortsPrefix %q", store.PortsPrefix)
	}
}

var portCreated = time.Unix(1700000000, 0).UTC()

func newPort(proto model.PortProto, n int, tenant, service string) model.Port {
	return model.Port{Proto: proto, Number: n, Tenant: tenant, Service: service, Created: portCreated}
}

func sniPort(proto model.PortProto, n int, tenant string) model.Port {
	return model.Port{Proto: proto, Number: n, Tenant: tenant, SNI: true, Created: portCreated}
}

// TestAllocateSNIPort: an SNI port has no service; asking again for the
// same one is idempotent, and it counts towards the quota.
func TestAllocateSNIPort(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20099}
	want := sniPort(model.PortTCP, 20010, "acme")
	got, err := store.AllocatePort(ctx, s, want, r, 2)
	if err != nil || got != want {
		t.Fatalf("AllocatePort(SNI %s) = %+v, %v; want %+v", want, got, err, want)
	}
	if got, err := store.AllocatePort(ctx, s, want, r, 2); err != nil || got != want {
		t.Fatalf("AllocatePort(SNI %s) again = %+v, %v; want %+v", want, got, err, want)
	}
	if _, err := store.AllocatePort(ctx, s, sniPort(model.PortTCP, 20010, "beta"), r, 0); !errors.Is(err, store.ErrPortTaken) {
		t.Errorf("another tenant's SNI request for a held port = %v, want ErrPortTaken", err)
	}
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 20010, "acme", "ssh"), r, 0); !errors.Is(err, store.ErrPortTaken) {
		t.Errorf("a service's request for the tenant's SNI port = %v, want ErrPortTaken", err)
	}
	anyPort, err := store.AllocatePort(ctx, s, sniPort(model.PortTCP, 0, "acme"), r, 2)
	if err != nil || !anyPort.SNI || anyPort.Service != "" || !r.Contains(anyPort.Number) {
		t.Fatalf("AllocatePort(SNI, any) = %+v, %v", anyPort, err)
	}
	if _, err := store.AllocatePort(ctx, s, sniPort(model.PortTCP, 0, "acme"), r, 2); !errors.Is(err, store.ErrQuota) {
		t.Errorf("a third port with quota 2 = %v, want ErrQuota", err)
	}
	ports, err := store.PortsOf(ctx, s, "acme")
	if err != nil || len(ports) != 2 || ports[0].Service != "" || ports[1].Service != "" {
		t.Errorf("PortsOf(acme) = %+v, %v", ports, err)
	}
}

func TestAllocatePortAny(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20002}
	seen := map[int]bool{}
	for i := 0; i < r.Size(); i++ {
		p, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, 0)
		if err != nil {
			t.Fatalf("AllocatePort #%d: %v", i, err)
		}
		if !r.Contains(p.Number) || seen[p.Number] {
			t.Fatalf("AllocatePort #%d = %d: outside %s or given twice (%v)", i, p.Number, r, seen)
		}
		seen[p.Number] = true
		var stored model.Port
		if _, err := store.GetJSON(ctx, s, store.PortKey(model.PortTCP, p.Number), &stored); err != nil || stored != p {
			t.Fatalf("stored %+v (err %v), want %+v", stored, err, p)
		}
	}
	_, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, 0)
	if !errors.Is(err, store.ErrRangeFull) || !strings.Contains(err.Error(), "20000-20002") {
		t.Fatalf("AllocatePort in a full range = %v, want ErrRangeFull naming the range", err)
	}
	// udp ports are a space of their own.
	if p, err := store.AllocatePort(ctx, s, newPort(model.PortUDP, 0, "acme", "resolver"), r, 0); err != nil || !r.Contains(p.Number) {
		t.Fatalf("AllocatePort udp with tcp full = %+v, %v", p, err)
	}
}

func TestAllocatePortSpecific(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20099}
	want := newPort(model.PortTCP, 20005, "acme", "ssh")
	got, err := store.AllocatePort(ctx, s, want, r, 0)
	if err != nil || got != want {
		t.Fatalf("AllocatePort(%s) = %+v, %v; want %+v", want, got, err, want)
	}
	// Taking it again for the same owner succeeds and returns the stored record.
	again := want
	again.Created = portCreated.Add(time.Hour)
	if got, err := store.AllocatePort(ctx, s, again, r, 0); err != nil || got != want {
		t.Fatalf("AllocatePort again by its owner = %+v, %v; want %+v", got, err, want)
	}
	for _, other := range []model.Port{
		newPort(model.PortTCP, 20005, "acme", "web"),  // same tenant, other service
		newPort(model.PortTCP, 20005, "other", "ssh"), // other tenant
		newPort(model.PortTCP, 20005, "", "ssh"),      // anonymous
	} {
		_, err := store.AllocatePort(ctx, s, other, r, 0)
		if !errors.Is(err, store.ErrPortTaken) {
			t.Errorf("AllocatePort(%+v) of a held port = %v, want ErrPortTaken", other, err)
		}
		if err != nil && strings.Contains(err.Error(), "acme") {
			t.Errorf("AllocatePort(%+v): %q names the holder", other, err)
		}
	}
	// The same number in udp is another port.
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortUDP, 20005, "other", "resolver"), r, 0); err != nil {
		t.Fatalf("AllocatePort udp/20005: %v", err)
	}
	ports, err := store.ListPorts(ctx, s)
	if err != nil || len(ports) != 2 || ports[0] != want {
		t.Fatalf("ListPorts = %+v, %v", ports, err)
	}
}

func TestAllocatePortRace(t *testing.T) {
	ctx := testContext(t)
	r := model.PortRange{First: 20000, Last: 20001}
	// rivalFirst stores a rival's record just before the first write of a
	// port record, as another gateway winning the race for it would.
	rivalFirst := func(s store.Store) (*putHook, *model.Port) {
		rival := newPort(model.PortTCP, 0, "other", "db")
		return &putHook{Store: s, before: func(key string) {
			if rival.Number != 0 {
				return
			}
			n, err := strconv.Atoi(strings.TrimPrefix(key, "ports/tcp/"))
			if err != nil {
				t.Errorf("port key %q", key)
			}
			rival.Number = n
			if _, err := store.PutJSON(ctx, s, key, rival, 0); err != nil {
				t.Errorf("rival: %v", err)
			}
		}}, &rival
	}

	hook, _ := rivalFirst(openBolt(t))
	if _, err := store.AllocatePort(ctx, hook, newPort(model.PortTCP, 20000, "acme", "ssh"), r, 0); !errors.Is(err, store.ErrPortTaken) {
		t.Fatalf("AllocatePort losing the race for one port = %v, want ErrPortTaken", err)
	}
	// For any port, losing a race means trying the next one.
	hook, rival := rivalFirst(openBolt(t))
	got, err := store.AllocatePort(ctx, hook, newPort(model.PortTCP, 0, "acme", "ssh"), r, 0)
	if err != nil || got.Number == rival.Number || !r.Contains(got.Number) {
		t.Fatalf("AllocatePort after losing a race = %+v, %v; the rival holds %d", got, err, rival.Number)
	}
}

// putHook calls before(key) ahead of every write of a port record.
type putHook struct {
	store.Store
	before func(key string)
}

func (h *putHook) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if strings.HasPrefix(key, store.PortsPrefix) {
		h.before(key)
	}
	return h.Store.Put(ctx, key, value, expect)
}

// conflictPorts makes every write of a port record lose to another writer.
type conflictPorts struct{ store.Store }

func (c conflictPorts) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if strings.HasPrefix(key, store.PortsPrefix) {
		return 0, store.ErrConflict
	}
	return c.Store.Put(ctx, key, value, expect)
}

func TestAllocatePortBoundedTries(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	_, err := store.AllocatePort(ctx, conflictPorts{s}, newPort(model.PortTCP, 0, "acme", "ssh"), model.PortRange{First: 20000, Last: 29999}, 0)
	if !errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrRangeFull) {
		t.Fatalf("AllocatePort under endless contention = %v, want ErrConflict (try again)", err)
	}
	// A small range under the same contention is exhausted first: full.
	_, err = store.AllocatePort(ctx, conflictPorts{s}, newPort(model.PortTCP, 0, "acme", "ssh"), model.PortRange{First: 20000, Last: 20009}, 0)
	if !errors.Is(err, store.ErrRangeFull) {
		t.Fatalf("AllocatePort with every port taken meanwhile = %v, want ErrRangeFull", err)
	}
}

func TestAllocatePortInvalid(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20099}
	tests := []struct {
		name    string
		p       model.Port
		r       model.PortRange
		quota   int
		wantErr string
	}{
		{"no protocol", newPort("", 0, "acme", "ssh"), r, 0, `protocol ""`},
		{"sctp", newPort("sctp", 0, "acme", "ssh"), r, 0, `protocol "sctp" not accepted; use tcp or udp`},
		{"negative number", newPort(model.PortTCP, -1, "acme", "ssh"), r, 0, "use 1-65535"},
		{"number too big", newPort(model.PortTCP, 65536, "acme", "ssh"), r, 0, "use 1-65535"},
		{"outside the range", newPort(model.PortTCP, 22, "acme", "ssh"), r, 0, "outside the gateway's range 20000-20099"},
		{"empty range", newPort(model.PortTCP, 0, "acme", "ssh"), model.PortRange{}, 0, "port range"},
		{"reversed range", newPort(model.PortTCP, 0, "acme", "ssh"), model.PortRange{First: 20, Last: 10}, 0, "port range"},
		{"bad tenant", newPort(model.PortTCP, 0, "Acme", "ssh"), r, 0, "tenant name"},
		{"no service", newPort(model.PortTCP, 0, "acme", ""), r, 0, "service"},
		{"bad service", newPort(model.PortTCP, 0, "acme", "my_ssh"), r, 0, "service"},
		{"negative quota", newPort(model.PortTCP, 0, "acme", "ssh"), r, -1, "quota -1"},
		{"sni udp", sniPort(model.PortUDP, 0, "acme"), r, 0, "sni: only a tcp port"},
		{"sni with service", model.Port{Proto: model.PortTCP, Tenant: "acme", Service: "web", SNI: true}, r, 0, "service: an SNI port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := store.AllocatePort(ctx, s, tt.p, tt.r, tt.quota)
			if !errors.Is(err, store.ErrInvalidPort) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("AllocatePort = %v, want ErrInvalidPort containing %q", err, tt.wantErr)
			}
		})
	}
	if list, err := s.List(ctx, ""); err != nil || len(list) != 0 {
		t.Fatalf("invalid requests wrote %d entries (err %v)", len(list), err)
	}
}

func TestAllocatePortQuota(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20099}
	const quota = 2
	a, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, quota)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortUDP, 20050, "acme", "resolver"), r, quota); err != nil {
		t.Fatal(err)
	}
	// tcp and udp count together. (The fixed number is not the one picked
	// at random for the first port: that would be taking it again.)
	fixed := 20060
	if a.Number == fixed {
		fixed = 20061
	}
	for _, p := range []model.Port{newPort(model.PortTCP, 0, "acme", "ssh"), newPort(model.PortTCP, fixed, "acme", "ssh")} {
		if _, err := store.AllocatePort(ctx, s, p, r, quota); !errors.Is(err, store.ErrQuota) || !strings.Contains(err.Error(), "quota is 2") {
			t.Errorf("AllocatePort(%s) beyond the quota = %v, want ErrQuota naming it", p, err)
		}
	}
	// Taking a held port again is not a new port.
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortUDP, 20050, "acme", "resolver"), r, quota); err != nil {
		t.Errorf("AllocatePort of an own port at the quota = %v, want success", err)
	}
	// Other tenants have quotas of their own; 0 means none.
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "other", "ssh"), r, quota); err != nil {
		t.Errorf("AllocatePort for another tenant = %v", err)
	}
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, 0); err != nil {
		t.Errorf("AllocatePort with no quota = %v", err)
	}
	if err := store.ReleasePort(ctx, s, model.PortTCP, a.Number, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, 4); err != nil {
		t.Errorf("AllocatePort after a release = %v", err)
	}
	if mine, err := store.PortsOf(ctx, s, "acme"); err != nil || len(mine) != 3 {
		t.Errorf("PortsOf(acme) = %+v, %v; want 3 ports", mine, err)
	}
}

// allocateConcurrently runs AllocatePort from workers goroutines until each
// gets an error; it returns the ports given and the errors that ended them.
func allocateConcurrently(t *testing.T, s store.Store, workers int, r model.PortRange, quota int) ([]model.Port, []error) {
	t.Helper()
	ctx := testContext(t)
	type result struct {
		ports []model.Port
		err   error
	}
	results := make(chan result, workers)
	for i := 0; i < workers; i++ {
		go func() {
			var res result
			for {
				p, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, quota)
				if err != nil {
					res.err = err
					break
				}
				res.ports = append(res.ports, p)
			}
			results <- res
		}()
	}
	var ports []model.Port
	var errs []error
	for i := 0; i < workers; i++ {
		res := <-results
		ports = append(ports, res.ports...)
		errs = append(errs, res.err)
	}
	return ports, errs
}

// TestAllocatePortConcurrent: 8 allocators sharing a range of 20 ports get
// 20 distinct ports, then all see the range full.
func TestAllocatePortConcurrent(t *testing.T) {
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20019}
	ports, errs := allocateConcurrently(t, s, 8, r, 0)
	for _, err := range errs {
		if !errors.Is(err, store.ErrRangeFull) {
			t.Errorf("allocator ended with %v, want ErrRangeFull", err)
		}
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p.Number] || !r.Contains(p.Number) {
			t.Errorf("port %d given twice or outside %s", p.Number, r)
		}
		seen[p.Number] = true
	}
	if len(ports) != r.Size() {
		t.Errorf("%d ports given, want %d", len(ports), r.Size())
	}
	stored, err := store.ListPorts(testContext(t), s)
	if err != nil || len(stored) != r.Size() {
		t.Errorf("ListPorts = %d ports, %v; want %d", len(stored), err, r.Size())
	}
}

// TestAllocatePortConcurrentQuota: concurrent allocators never take the
// tenant past its quota, and together take all of it.
func TestAllocatePortConcurrentQuota(t *testing.T) {
	s := openBolt(t)
	const quota = 3
	ports, errs := allocateConcurrently(t, s, 8, model.PortRange{First: 20000, Last: 20099}, quota)
	for _, err := range errs {
		if !errors.Is(err, store.ErrQuota) {
			t.Errorf("allocator ended with %v, want ErrQuota", err)
		}
	}
	if len(ports) != quota {
		t.Errorf("%d ports given (%+v), want the quota, %d", len(ports), ports, quota)
	}
	stored, err := store.PortsOf(testContext(t), s, "acme")
	if err != nil || len(stored) != quota {
		t.Errorf("PortsOf = %+v, %v; want %d ports (quota losers rolled back)", stored, err, quota)
	}
}

func TestReleasePort(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 20000, Last: 20099}
	for _, p := range []model.Port{newPort(model.PortTCP, 20001, "acme", "ssh"), newPort(model.PortUDP, 20001, "", "quick")} {
		if _, err := store.AllocatePort(ctx, s, p, r, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range []string{"other", ""} {
		if err := store.ReleasePort(ctx, s, model.PortTCP, 20001, tenant); !errors.Is(err, store.ErrNotOwner) {
			t.Errorf("ReleasePort by %q = %v, want ErrNotOwner", tenant, err)
		}
	}
	if err := store.ReleasePort(ctx, s, model.PortUDP, 20001, "acme"); !errors.Is(err, store.ErrNotOwner) {
		t.Errorf("ReleasePort of an anonymous port by a tenant = %v, want ErrNotOwner", err)
	}
	if ports, err := store.ListPorts(ctx, s); err != nil || len(ports) != 2 {
		t.Fatalf("refused releases changed the ports: %+v, %v", ports, err)
	}
	if err := store.ReleasePort(ctx, s, model.PortTCP, 20001, "acme"); err != nil {
		t.Fatalf("ReleasePort by the owner: %v", err)
	}
	if err := store.ReleasePort(ctx, s, model.PortTCP, 20001, "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ReleasePort twice = %v, want ErrNotFound", err)
	}
	if err := store.ReleasePort(ctx, s, model.PortUDP, 20001, ""); err != nil {
		t.Errorf("ReleasePort of an anonymous port: %v", err)
	}
	for _, c := range []struct {
		proto model.PortProto
		n     int
	}{{"sctp", 20001}, {"", 20001}, {model.PortTCP, 0}, {model.PortTCP, 65536}} {
		if err := store.ReleasePort(ctx, s, c.proto, c.n, "acme"); !errors.Is(err, store.ErrInvalidPort) {
			t.Errorf("ReleasePort(%q, %d) = %v, want ErrInvalidPort", c.proto, c.n, err)
		}
	}
	// A released port can be taken by anyone.
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 20001, "other", "db"), r, 0); err != nil {
		t.Errorf("AllocatePort of a released port: %v", err)
	}
}

func TestListPorts(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	r := model.PortRange{First: 1, Last: 65535}
	// Key order ("ports/tcp/100" < "ports/tcp/20000" < "ports/tcp/3000") is not number order.
	for _, p := range []model.Port{
		newPort(model.PortUDP, 53, "acme", "resolver"),
		newPort(model.PortTCP, 3000, "other", "web"),
		newPort(model.PortTCP, 20000, "acme", "ssh"),
		newPort(model.PortTCP, 100, "acme", "ssh"),
	} {
		if _, err := store.AllocatePort(ctx, s, p, r, 0); err != nil {
			t.Fatal(err)
		}
	}
	all, err := store.ListPorts(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range all {
		got = append(got, p.String())
	}
	if want := []string{"tcp/100", "tcp/3000", "tcp/20000", "udp/53"}; !slices.Equal(got, want) {
		t.Errorf("ListPorts = %v, want %v", got, want)
	}
	mine, err := store.PortsOf(ctx, s, "acme")
	if err != nil || len(mine) != 3 || mine[0].Number != 100 || mine[2].Proto != model.PortUDP {
		t.Errorf("PortsOf(acme) = %+v, %v", mine, err)
	}
	if none, err := store.PortsOf(ctx, s, "nobody"); err != nil || none == nil || len(none) != 0 {
		t.Errorf("PortsOf(nobody) = %#v, %v; want an empty, non-nil slice", none, err)
	}
	if _, err := s.Put(ctx, "ports/tcp/9", []byte("{not json"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ListPorts(ctx, s); err == nil || !strings.Contains(err.Error(), "ports/tcp/9") {
		t.Errorf("ListPorts with bad JSON = %v, want an error naming the key", err)
	}
	if _, err := store.AllocatePort(ctx, s, newPort(model.PortTCP, 0, "acme", "ssh"), r, 0); err == nil || !strings.Contains(err.Error(), "ports/tcp/9") {
		t.Errorf("AllocatePort with bad JSON = %v, want an error naming the key", err)
	}
}

// TestDeleteReleasesPorts: deleting a service releases its ports, and
// deleting a tenant releases every port it holds; others' ports stay.
func TestDeleteReleasesPorts(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	acme, _ := newTenant("acme")
	other, _ := newTenant("other")
	for _, tn := range []model.Tenant{acme, other} {
		if err := store.CreateTenant(ctx, s, tn); err != nil {
			t.Fatal(err)
		}
	}
	for name, owner := range map[string]string{"ssh": "acme", "resolver": "acme", "game": "other"} {
		if _, err := store.PutJSON(ctx, s, store.ServiceKey(name), model.Service{Name: name, Tenant: owner, Protocol: model.ProtoTLS}, 0); err != nil {
			t.Fatal(err)
		}
	}
	r := model.PortRange{First: 20000, Last: 20099}
	for _, p := range []model.Port{
		newPort(model.PortTCP, 20001, "acme", "ssh"), newPort(model.PortTCP, 20002, "acme", "ssh"),
		newPort(model.PortUDP, 20003, "acme", "resolver"), newPort(model.PortUDP, 20004, "other", "game"),
	} {
		if _, err := store.AllocatePort(ctx, s, p, r, 0); err != nil {
			t.Fatal(err)
		}
	}
	numbers := func() []int {
		ports, err := store.ListPorts(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for _, p := range ports {
			out = append(out, p.Number)
		}
		slices.Sort(out)
		return out
	}
	if err := store.DeleteService(ctx, s, "ssh", 0, nil); err != nil {
		t.Fatal(err)
	}
	if got := numbers(); !slices.Equal(got, []int{20003, 20004}) {
		t.Fatalf("ports after deleting ssh: %v, want 20003 and 20004", got)
	}
	if err := store.DeleteTenant(ctx, s, "acme"); err != nil {
		t.Fatal(err)
	}
	if got := numbers(); !slices.Equal(got, []int{20004}) {
		t.Fatalf("ports after deleting tenant acme: %v, want only other's 20004", got)
	}
}
