package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

func mustPlan(t testing.TB, prefix, per string) model.DevicePlan {
	t.Helper()
	pl, err := model.ParseDevicePlan(prefix, per)
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

// newKey returns a fresh public key.
func newKey(t testing.TB) model.WGKey {
	t.Helper()
	k, err := model.GenerateWGKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func newDevice(t testing.TB, tenant, name string, open ...string) model.Device {
	return model.Device{Tenant: tenant, Name: name, PublicKey: newKey(t).String(), Open: open,
		Created: time.Unix(1700000000, 0).UTC()}
}

// claims returns the keys under prefix.
func claims(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	es, err := s.List(testContext(t), prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Key)
	}
	return out
}

func TestDeviceKey(t *testing.T) {
	if got := store.DeviceKey("acme", "laptop"); got != "4to6/devices/acme/laptop" {
		t.Errorf("DeviceKey = %q", got)
	}
	if got := store.DeviceAddrKey(netip.MustParsePrefix("2001:db8:100:5::/64")); got != "4to6/addrs/2001:db8:100:5::" {
		t.Errorf("address claim key %q", got)
	}
}

func TestCreateDevice(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8:100::/56", "")
	in := newDevice(t, "acme", "laptop", "udp/60000", "tcp/22", "tcp/22")
	d, err := store.CreateDevice(ctx, s, in, pl, 0)
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if !pl.Contains(d.Address) || pl.Reserved(d.Address) || d.Address.Bits() != 128 {
		t.Fatalf("address %s: want a /128 of %s, not a reserved one", d.Address, pl.Prefix)
	}
	want := in
	want.Address, want.Open = d.Address, []string{"tcp/22", "udp/60000"}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("CreateDevice = %+v, want %+v", d, want)
	}
	got, rev, err := store.GetDevice(ctx, s, "acme", "laptop")
	if err != nil || rev == 0 || !reflect.DeepEqual(got, want) {
		t.Fatalf("GetDevice = %+v, %d, %v; want %+v", got, rev, err, want)
	}
	if c := claims(t, s, store.DeviceAddrsPrefix); len(c) != 1 || c[0] != store.DeviceAddrKey(d.Address) {
		t.Errorf("address claims %v", c)
	}
	key, _ := model.ParseWGKey(d.PublicKey)
	if c := claims(t, s, store.DeviceKeysPrefix); len(c) != 1 || c[0] != store.DeviceKeyKey(key) {
		t.Errorf("key claims %v", c)
	}

	// The name is the tenant's: taken for acme, free for beta.
	again := newDevice(t, "acme", "laptop")
	if _, err := store.CreateDevice(ctx, s, again, pl, 0); !errors.Is(err, store.ErrDeviceExists) {
		t.Errorf("a second acme/laptop = %v, want ErrDeviceExists", err)
	}
	b, err := store.CreateDevice(ctx, s, newDevice(t, "beta", "laptop"), pl, 0)
	if err != nil || b.Address == d.Address {
		t.Fatalf("beta/laptop = %+v, %v", b, err)
	}
	// One key, one device, whoever asks.
	for _, tenant := range []string{"acme", "beta"} {
		dup := newDevice(t, tenant, "other")
		dup.PublicKey = d.PublicKey
		if _, err := store.CreateDevice(ctx, s, dup, pl, 0); !errors.Is(err, store.ErrKeyInUse) {
			t.Errorf("%s reusing acme/laptop's key = %v, want ErrKeyInUse", tenant, err)
		}
	}
	// Failed creations leave no claim behind.
	if n := len(claims(t, s, store.DeviceAddrsPrefix)); n != 2 {
		t.Errorf("%d address claims after refused creations, want 2", n)
	}
	if n := len(claims(t, s, store.DeviceKeysPrefix)); n != 2 {
		t.Errorf("%d key claims after refused creations, want 2", n)
	}
	all, err := store.ListDevices(ctx, s)
	if err != nil || len(all) != 2 || all[0].ID() != "acme/laptop" || all[1].ID() != "beta/laptop" {
		t.Errorf("ListDevices = %+v, %v", all, err)
	}
	if of, err := store.DevicesOf(ctx, s, "beta"); err != nil || len(of) != 1 || of[0].Tenant != "beta" {
		t.Errorf("DevicesOf(beta) = %+v, %v", of, err)
	}
}

func TestCreateDeviceInvalid(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8:100::/56", "")
	ok := newDevice(t, "acme", "laptop")
	tests := []struct {
		name    string
		mutate  func(*model.Device, *model.DevicePlan, *int)
		wantErr string
	}{
		{"tenant", func(d *model.Device, _ *model.DevicePlan, _ *int) { d.Tenant = "Acme" }, "tenant: invalid tenant name"},
		{"name", func(d *model.Device, _ *model.DevicePlan, _ *int) { d.Name = "my_laptop" }, "name: invalid device name"},
		{"no name", func(d *model.Device, _ *model.DevicePlan, _ *int) { d.Name = "" }, "name: invalid device name"},
		{"key", func(d *model.Device, _ *model.DevicePlan, _ *int) { d.PublicKey = "x" }, "public_key: wireguard key of 1 characters"},
		{"zero key", func(d *model.Device, _ *model.DevicePlan, _ *int) { d.PublicKey = model.WGKey{}.String() }, "public_key: the all-zero key"},
		{"open", func(d *model.Device, _ *model.DevicePlan, _ *int) { d.Open = []string{"tcp/0"} }, "open:"},
		{"address", func(d *model.Device, _ *model.DevicePlan, _ *int) {
			d.Address = netip.MustParsePrefix("2001:db8:100::9/128")
		}, "address: 2001:db8:100::9/128 given"},
		{"plan", func(_ *model.Device, p *model.DevicePlan, _ *int) { p.Bits = 96 }, "per device"},
		{"no plan", func(_ *model.Device, p *model.DevicePlan, _ *int) { *p = model.DevicePlan{Bits: 128} }, "prefix: none given"},
		{"quota", func(_ *model.Device, _ *model.DevicePlan, q *int) { *q = -1 }, "quota -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, p, q := ok, pl, 0
			tt.mutate(&d, &p, &q)
			_, err := store.CreateDevice(ctx, s, d, p, q)
			if !errors.Is(err, store.ErrInvalidDevice) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CreateDevice = %v, want ErrInvalidDevice containing %q", err, tt.wantErr)
			}
		})
	}
	if n := len(claims(t, s, store.FourTo6Prefix)); n != 0 {
		t.Errorf("%d records after refused creations", n)
	}
}

// TestDeviceAddresses64: with a /64 per device, the first /64 is never
// handed out, every other one is handed out once, a full prefix refuses,
// and a deleted device's /64 is free again.
func TestDeviceAddresses64(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8:100::/60", "/64") // 16 /64s, 15 for devices
	seen := map[netip.Prefix]string{}
	for i := range 15 {
		d, err := store.CreateDevice(ctx, s, newDevice(t, "acme", fmt.Sprintf("d%d", i)), pl, 0)
		if err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
		if d.Address.Bits() != 64 || !pl.Contains(d.Address) || d.Address.Addr() == pl.Prefix.Addr() {
			t.Fatalf("device %d got %s", i, d.Address)
		}
		if other, dup := seen[d.Address]; dup {
			t.Fatalf("%s given to %s and d%d", d.Address, other, i)
		}
		seen[d.Address] = d.Name
	}
	_, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "one-too-many"), pl, 0)
	if !errors.Is(err, store.ErrAddressesFull) || !strings.Contains(err.Error(), "2001:db8:100::/60") {
		t.Fatalf("creation in a full prefix = %v, want ErrAddressesFull naming the prefix", err)
	}
	gone, err := store.DeleteDevice(ctx, s, "acme", "d7", 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.CreateDevice(ctx, s, newDevice(t, "beta", "new"), pl, 0)
	if err != nil || d.Address != gone.Address {
		t.Fatalf("after deleting d7 (%s) the new device got %s, %v", gone.Address, d.Address, err)
	}
}

// TestDeviceAddressesSmall128: in a /126 only ::2 and ::3 are handed out.
func TestDeviceAddressesSmall128(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8::/126", "")
	got := map[string]bool{}
	for i := range 2 {
		d, err := store.CreateDevice(ctx, s, newDevice(t, "acme", fmt.Sprintf("d%d", i)), pl, 0)
		if err != nil {
			t.Fatal(err)
		}
		got[d.Address.String()] = true
	}
	if !got["2001:db8::2/128"] || !got["2001:db8::3/128"] {
		t.Fatalf("addresses %v, want ::2 and ::3", got)
	}
	if _, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "d2"), pl, 0); !errors.Is(err, store.ErrAddressesFull) {
		t.Fatalf("third device in a /126 = %v, want ErrAddressesFull", err)
	}
}

// TestDeviceStable: a device keeps its address across a reopened store and
// across changes of its open ports.
func TestDeviceStable(t *testing.T) {
	ctx := testContext(t)
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	pl := mustPlan(t, "2001:db8:100::/56", "")
	d, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "laptop"), pl, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := store.GetDevice(ctx, s, "acme", "laptop")
	if err != nil || got.Address != d.Address || got.PublicKey != d.PublicKey {
		t.Fatalf("after reopening: %+v, %v; want %+v", got, err, d)
	}
	up, _, err := store.UpdateDevice(ctx, s, "acme", "laptop", 0, func(d *model.Device) error {
		d.Open = []string{"tcp/22"}
		return nil
	})
	if err != nil || up.Address != d.Address {
		t.Fatalf("UpdateDevice = %+v, %v", up, err)
	}
}

func TestDeviceQuota(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8:100::/56", "")
	for i := range 2 {
		if _, err := store.CreateDevice(ctx, s, newDevice(t, "acme", fmt.Sprintf("d%d", i)), pl, 2); err != nil {
			t.Fatal(err)
		}
	}
	_, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "d2"), pl, 2)
	if !errors.Is(err, store.ErrDeviceQuota) || !strings.Contains(err.Error(), "quota is 2") {
		t.Fatalf("third device with quota 2 = %v, want ErrDeviceQuota", err)
	}
	if _, err := store.CreateDevice(ctx, s, newDevice(t, "beta", "d0"), pl, 2); err != nil {
		t.Fatalf("another tenant's device: %v", err)
	}
	if _, err := store.DeleteDevice(ctx, s, "acme", "d0", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "d2"), pl, 2); err != nil {
		t.Fatalf("after removing one: %v", err)
	}
}

// TestDeviceQuotaConcurrent: creations racing for a tenant's last places
// never exceed its quota, on bolt and on etcd with two clients (two
// gateways).
func TestDeviceQuotaConcurrent(t *testing.T) {
	for _, kind := range []string{"bolt", "etcd"} {
		t.Run(kind, func(t *testing.T) {
			ctx := testContext(t)
			stores := twoStores(t, kind)
			pl := mustPlan(t, "2001:db8:100::/56", "")
			const quota, tries = 3, 12
			var wg sync.WaitGroup
			errs := make([]error, tries)
			for i := range tries {
				wg.Go(func() {
					_, errs[i] = store.CreateDevice(ctx, stores[i%2], newDevice(t, "acme", fmt.Sprintf("d%d", i)), pl, quota)
				})
			}
			wg.Wait()
			ok := 0
			for i, err := range errs {
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, store.ErrDeviceQuota):
					t.Errorf("d%d: %v, want success or ErrDeviceQuota", i, err)
				}
			}
			held, err := store.DevicesOf(ctx, stores[0], "acme")
			if err != nil || len(held) != ok || ok > quota || ok == 0 {
				t.Fatalf("%d creations succeeded, %d devices held (%v); quota %d", ok, len(held), err, quota)
			}
			if n := len(claims(t, stores[0], store.DeviceAddrsPrefix)); n != ok {
				t.Errorf("%d address claims for %d devices", n, ok)
			}
		})
	}
}

// twoStores opens two clients of one store: one bolt file shared, or two
// etcd clients on one key prefix, as two gateways of a cluster.
func twoStores(t *testing.T, kind string) [2]store.Store {
	if kind == "bolt" {
		s := openBolt(t)
		return [2]store.Store{s, s}
	}
	prefix := uniquePrefix(t)
	return [2]store.Store{openEtcd(t, prefix), openEtcd(t, prefix)}
}

// TestDeviceAllocatorsNeverCollide: two gateways creating devices at once
// on one store hand out every address once; in a small prefix exactly as
// many creations succeed as there are addresses.
func TestDeviceAllocatorsNeverCollide(t *testing.T) {
	for _, kind := range []string{"bolt", "etcd"} {
		t.Run(kind, func(t *testing.T) {
			ctx := testContext(t)
			stores := twoStores(t, kind)
			pl := mustPlan(t, "2001:db8:100::/124", "") // 14 addresses for devices
			const tries = 20
			var wg sync.WaitGroup
			errs := make([]error, tries)
			got := make([]model.Device, tries)
			for i := range tries {
				wg.Go(func() {
					got[i], errs[i] = store.CreateDevice(ctx, stores[i%2], newDevice(t, fmt.Sprintf("t%d", i%3), fmt.Sprintf("d%d", i)), pl, 0)
				})
			}
			wg.Wait()
			seen := map[netip.Prefix]int{}
			ok := 0
			for i, err := range errs {
				if err != nil {
					if !errors.Is(err, store.ErrAddressesFull) {
						t.Errorf("d%d: %v, want success or ErrAddressesFull", i, err)
					}
					continue
				}
				ok++
				if j, dup := seen[got[i].Address]; dup {
					t.Errorf("%s given to d%d and d%d", got[i].Address, j, i)
				}
				seen[got[i].Address] = i
				if pl.Reserved(got[i].Address) {
					t.Errorf("d%d got reserved %s", i, got[i].Address)
				}
			}
			if ok != 14 {
				t.Errorf("%d creations succeeded, want 14 (every address of the /124 but ::0 and ::1)", ok)
			}
			all, err := store.ListDevices(ctx, stores[1])
			if err != nil || len(all) != ok {
				t.Errorf("ListDevices: %d, %v; want %d", len(all), err, ok)
			}
		})
	}
}

// claimHook writes a rival's fresh claim just before the first claim of an
// address, as another gateway winning the race for it would.
type claimHook struct {
	store.Store
	mu    sync.Mutex
	rival string // the address key taken by the rival
}

func (h *claimHook) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	h.mu.Lock()
	if strings.HasPrefix(key, store.DeviceAddrsPrefix) && h.rival == "" {
		h.rival = key
		v := fmt.Sprintf(`{"device":"other/rival","claimed":%q}`, time.Now().UTC().Format(time.RFC3339Nano))
		if _, err := h.Store.Put(ctx, key, []byte(v), 0); err != nil {
			h.mu.Unlock()
			return 0, err
		}
	}
	h.mu.Unlock()
	return h.Store.Put(ctx, key, value, expect)
}

func TestDeviceAddressRace(t *testing.T) {
	ctx := testContext(t)
	h := &claimHook{Store: openBolt(t)}
	d, err := store.CreateDevice(ctx, h, newDevice(t, "acme", "laptop"), mustPlan(t, "2001:db8:100::/56", ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	if store.DeviceAddrKey(d.Address) == h.rival {
		t.Fatalf("got %s, which the rival claimed first", d.Address)
	}
}

// TestDeviceStaleClaims: a claim left by a creation that died half-way
// (no device record names it) is taken over once it is a minute old; a
// fresh one is a creation in progress and is respected.
func TestDeviceStaleClaims(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8::/126", "") // ::2 and ::3
	put := func(key string, age time.Duration) {
		t.Helper()
		v := fmt.Sprintf(`{"device":"acme/ghost","claimed":%q}`, time.Now().Add(-age).UTC().Format(time.RFC3339Nano))
		if _, err := s.Put(ctx, key, []byte(v), store.AnyRev); err != nil {
			t.Fatal(err)
		}
	}
	// Keys.
	fresh, stale := newDevice(t, "acme", "a"), newDevice(t, "acme", "b")
	fk, _ := model.ParseWGKey(fresh.PublicKey)
	sk, _ := model.ParseWGKey(stale.PublicKey)
	put(store.DeviceKeyKey(fk), time.Second)
	put(store.DeviceKeyKey(sk), 2*time.Minute)
	if _, err := store.CreateDevice(ctx, s, fresh, pl, 0); !errors.Is(err, store.ErrKeyInUse) {
		t.Errorf("a key claimed a second ago = %v, want ErrKeyInUse", err)
	}
	if _, err := store.CreateDevice(ctx, s, stale, pl, 0); err != nil {
		t.Errorf("a key claimed two minutes ago by no device: %v", err)
	}
	// Addresses: one of the two is held by b now; claim the other.
	b, _, _ := store.GetDevice(ctx, s, "acme", "b")
	other := netip.MustParsePrefix("2001:db8::2/128")
	if b.Address == other {
		other = netip.MustParsePrefix("2001:db8::3/128")
	}
	put(store.DeviceAddrKey(other), time.Second)
	if _, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "c"), pl, 0); !errors.Is(err, store.ErrAddressesFull) {
		t.Errorf("the last address claimed a second ago = %v, want ErrAddressesFull", err)
	}
	put(store.DeviceAddrKey(other), 2*time.Minute)
	c, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "c"), pl, 0)
	if err != nil || c.Address != other {
		t.Errorf("the last address claimed two minutes ago by no device: %+v, %v", c, err)
	}
	// A held device's claims are never taken over, however old.
	put(store.DeviceAddrKey(b.Address), time.Hour)
	if _, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "d"), pl, 0); !errors.Is(err, store.ErrAddressesFull) {
		t.Errorf("creation when every address is held = %v, want ErrAddressesFull", err)
	}
}

func TestUpdateDevice(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	d, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "laptop"), mustPlan(t, "2001:db8:100::/56", ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	_, rev, _ := store.GetDevice(ctx, s, "acme", "laptop")
	up, nrev, err := store.UpdateDevice(ctx, s, "acme", "laptop", rev, func(x *model.Device) error {
		x.Open = append(x.Open, "udp/60000", "tcp/22")
		x.Address, x.PublicKey, x.Name, x.Tenant, x.Created = netip.Prefix{}, "", "x", "y", time.Time{}
		return nil
	})
	want := d
	want.Open = []string{"tcp/22", "udp/60000"}
	if err != nil || nrev <= rev || !reflect.DeepEqual(up, want) {
		t.Fatalf("UpdateDevice = %+v, %d, %v; want %+v after %d", up, nrev, err, want, rev)
	}
	if got, _, _ := store.GetDevice(ctx, s, "acme", "laptop"); !reflect.DeepEqual(got, want) {
		t.Errorf("stored %+v, want %+v", got, want)
	}
	if _, _, err := store.UpdateDevice(ctx, s, "acme", "laptop", rev, func(*model.Device) error { return nil }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("update of an old revision = %v, want ErrConflict", err)
	}
	_, _, err = store.UpdateDevice(ctx, s, "acme", "laptop", 0, func(x *model.Device) error { x.Open = []string{"icmp/1"}; return nil })
	if !errors.Is(err, store.ErrInvalidDevice) || !strings.Contains(err.Error(), "open:") {
		t.Errorf("bad open list = %v, want ErrInvalidDevice", err)
	}
	if _, _, err := store.UpdateDevice(ctx, s, "beta", "laptop", 0, func(*model.Device) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("another tenant's name = %v, want ErrNotFound", err)
	}
}

func TestDeleteDevice(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8:100::/56", "")
	d, err := store.CreateDevice(ctx, s, newDevice(t, "acme", "laptop"), pl, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.DeleteDevice(ctx, s, "beta", "laptop", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete of another tenant's name = %v, want ErrNotFound", err)
	}
	_, rev, _ := store.GetDevice(ctx, s, "acme", "laptop")
	if _, err := store.DeleteDevice(ctx, s, "acme", "laptop", rev+100); !errors.Is(err, store.ErrConflict) {
		t.Errorf("delete of another revision = %v, want ErrConflict", err)
	}
	gone, err := store.DeleteDevice(ctx, s, "acme", "laptop", rev)
	if err != nil || gone.Address != d.Address {
		t.Fatalf("DeleteDevice = %+v, %v", gone, err)
	}
	if n := len(claims(t, s, store.FourTo6Prefix)); n != 0 {
		t.Errorf("%d records left after the delete", n)
	}
	if _, err := store.DeleteDevice(ctx, s, "acme", "laptop", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete again = %v, want ErrNotFound", err)
	}
	// Its key is free again.
	again := newDevice(t, "beta", "phone")
	again.PublicKey = d.PublicKey
	if _, err := store.CreateDevice(ctx, s, again, pl, 0); err != nil {
		t.Errorf("reusing a deleted device's key: %v", err)
	}
}

func TestDeleteTenantRemovesDevices(t *testing.T) {
	ctx := testContext(t)
	s := openBolt(t)
	pl := mustPlan(t, "2001:db8:100::/56", "")
	for _, name := range []string{"acme", "beta"} {
		ten, _ := newTenant(name)
		if err := store.CreateTenant(ctx, s, ten); err != nil {
			t.Fatal(err)
		}
		for _, dev := range []string{"laptop", "phone"} {
			if _, err := store.CreateDevice(ctx, s, newDevice(t, name, dev), pl, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := store.DeleteTenant(ctx, s, "acme"); err != nil {
		t.Fatal(err)
	}
	all, err := store.ListDevices(ctx, s)
	if err != nil || len(all) != 2 || all[0].Tenant != "beta" || all[1].Tenant != "beta" {
		t.Fatalf("devices after deleting acme: %+v, %v", all, err)
	}
	if n := len(claims(t, s, store.DeviceAddrsPrefix)); n != 2 {
		t.Errorf("%d address claims, want beta's 2", n)
	}
}
