package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// Key prefixes of the 4to6 device records (IPv4-to-IPv6 access).
const (
	// FourTo6Prefix holds every 4to6 record.
	FourTo6Prefix = "4to6/"
	// DevicesPrefix holds 4to6/devices/<tenant>/<name> (DeviceKey), JSON
	// model.Device. A device is served while its record exists.
	DevicesPrefix = "4to6/devices/"
	// DeviceAddrsPrefix holds 4to6/addrs/<address>: the claim of the
	// device block starting at that address, so that one address goes to
	// one device across every gateway sharing the store.
	DeviceAddrsPrefix = "4to6/addrs/"
	// DeviceKeysPrefix holds 4to6/keys/<hex of the public key>: the claim
	// of a WireGuard public key, so that one key is one device.
	DeviceKeysPrefix = "4to6/keys/"
)

// DeviceKey is the key of the record of tenant's device named name.
func DeviceKey(tenant, name string) string { return DevicesPrefix + tenant + "/" + name }

// deviceAddrKey is the key of the claim of device block p.
func deviceAddrKey(p netip.Prefix) string { return DeviceAddrsPrefix + p.Addr().String() }

// deviceKeyKey is the key of the claim of public key k.
func deviceKeyKey(k model.WGKey) string { return DeviceKeysPrefix + hex.EncodeToString(k[:]) }

// deviceClaim is the value of an address or key claim. Claims are written
// before the device record and removed after it, so a gateway that dies
// half-way through may leave one behind: a claim that its device's record
// does not name and that is older than staleClaim is such a leftover, and
// may be taken over.
type deviceClaim struct {
	// Device is model.Device.ID of the claimant.
	Device  string    `json:"device"`
	Claimed time.Time `json:"claimed"`
}

// staleClaim is how long a claim without its device record counts as a
// creation in progress.
const staleClaim = time.Minute

// Errors of the device records, so the API can decide with errors.Is. The
// status each suggests is in brackets.
var (
	// ErrInvalidDevice: the request is malformed (400).
	ErrInvalidDevice = errors.New("store: invalid device request")
	// ErrDeviceExists: the tenant has a device of that name (409).
	ErrDeviceExists = errors.New("store: device name taken")
	// ErrKeyInUse: another device has the public key (409).
	ErrKeyInUse = errors.New("store: public key in use by another device")
	// ErrAddressesFull: every address block of the prefix is held (409).
	ErrAddressesFull = errors.New("store: device address space full")
	// ErrDeviceQuota: the tenant holds its quota of devices (403).
	ErrDeviceQuota = errors.New("store: device quota reached")
)

// errClaimed: a claim is held by another device, now.
var errClaimed = errors.New("claimed")

// Bounds of one CreateDevice under contention.
const (
	// maxAddrAttempts bounds the claims written for one address.
	maxAddrAttempts = 128
	// maxAddrScan bounds the blocks looked at for one address: a prefix
	// with fewer blocks is searched whole.
	maxAddrScan = 1 << 16
)

// GetDevice returns tenant's device named name and its revision, or an
// error wrapping ErrNotFound.
func GetDevice(ctx context.Context, s Store, tenant, name string) (model.Device, int64, error) {
	var d model.Device
	rev, err := GetJSON(ctx, s, DeviceKey(tenant, name), &d)
	if err != nil {
		return model.Device{}, 0, fmt.Errorf("get device %s/%s: %w", tenant, name, err)
	}
	return d, rev, nil
}

// ListDevices returns every device, sorted by tenant, then name.
func ListDevices(ctx context.Context, s Store) ([]model.Device, error) {
	return listJSON[model.Device](ctx, s, DevicesPrefix)
}

// DevicesOf returns tenant's devices, sorted by name.
func DevicesOf(ctx context.Context, s Store, tenant string) ([]model.Device, error) {
	return listJSON[model.Device](ctx, s, DevicesPrefix+tenant+"/")
}

// CreateDevice stores device d of d.Tenant with an address block allocated
// from plan, and returns the record written. d.Open is stored in the form
// model.ParseOpen gives; d.Created is kept as given; d.Address must be
// unset.
//
// The public key and the address are claimed with create-only writes
// before the record is written, so two gateways sharing the store never
// hand out one address or accept one key twice. The address is picked at
// random among the free blocks of the prefix (never a reserved one, see
// model.DevicePlan.Reserved).
//
// quota > 0 is how many devices the tenant may hold; 0 means no bound. It
// holds under concurrent creations: after its record is written, a
// creation checks that fewer than quota of the tenant's devices claimed
// their address before it did, and undoes itself otherwise.
//
// Errors wrap ErrInvalidDevice for bad input, ErrDeviceExists,
// ErrKeyInUse, ErrAddressesFull or ErrDeviceQuota.
func CreateDevice(ctx context.Context, s Store, d model.Device, plan model.DevicePlan, quota int) (model.Device, error) {
	op := "create device " + d.ID()
	key, err := checkDeviceRequest(&d, plan, quota)
	if err != nil {
		return model.Device{}, fmt.Errorf("%s: %w: %w", op, ErrInvalidDevice, err)
	}
	if _, _, err := GetDevice(ctx, s, d.Tenant, d.Name); err == nil {
		return model.Device{}, fmt.Errorf("%s: %w", op, ErrDeviceExists)
	} else if !errors.Is(err, ErrNotFound) {
		return model.Device{}, fmt.Errorf("%s: %w", op, err)
	}
	all, err := ListDevices(ctx, s)
	if err != nil {
		return model.Device{}, fmt.Errorf("%s: %w", op, err)
	}
	held := 0
	for _, o := range all {
		if o.Tenant == d.Tenant {
			held++
		}
	}
	if quota > 0 && held >= quota {
		return model.Device{}, fmt.Errorf("%s: tenant holds %d devices, its quota is %d; remove one first: %w", op, held, quota, ErrDeviceQuota)
	}

	c := deviceClaim{Device: d.ID(), Claimed: time.Now().UTC()}
	var undo []func(context.Context)
	fail := func(err error) (model.Device, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](rctx)
		}
		return model.Device{}, fmt.Errorf("%s: %w", op, err)
	}
	keyKey := deviceKeyKey(key)
	keyRev, err := claim(ctx, s, keyKey, c, func(o model.Device) bool { return o.PublicKey == d.PublicKey })
	if errors.Is(err, errClaimed) {
		return fail(fmt.Errorf("public key %s: %w", d.PublicKey, ErrKeyInUse))
	}
	if err != nil {
		return fail(fmt.Errorf("claim public key: %w", err))
	}
	undo = append(undo, func(ctx context.Context) { s.Delete(ctx, keyKey, keyRev) })

	addr, addrRev, err := claimAddress(ctx, s, plan, c, all)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func(ctx context.Context) { s.Delete(ctx, deviceAddrKey(addr), addrRev) })
	d.Address = addr

	rev, err := PutJSON(ctx, s, DeviceKey(d.Tenant, d.Name), d, 0)
	if errors.Is(err, ErrConflict) {
		return fail(ErrDeviceExists)
	}
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func(ctx context.Context) { s.Delete(ctx, DeviceKey(d.Tenant, d.Name), rev) })
	if quota > 0 {
		if err := devicesWithinQuota(ctx, s, d.Tenant, addrRev, quota); err != nil {
			return fail(err)
		}
	}
	return d, nil
}

// checkDeviceRequest checks CreateDevice's input, puts d.Open in canonical
// form and returns the parsed public key. Errors name the field.
func checkDeviceRequest(d *model.Device, plan model.DevicePlan, quota int) (model.WGKey, error) {
	if err := model.ValidateTenantName(d.Tenant); err != nil {
		return model.WGKey{}, fmt.Errorf("tenant: %w", err)
	}
	if err := model.ValidateDeviceName(d.Name); err != nil {
		return model.WGKey{}, fmt.Errorf("name: %w", err)
	}
	key, err := model.ParseWGKey(d.PublicKey)
	if err != nil {
		return model.WGKey{}, fmt.Errorf("public_key: %w", err)
	}
	if key.IsZero() {
		return model.WGKey{}, errors.New("public_key: the all-zero key is no key")
	}
	if d.Open, err = model.ParseOpen(d.Open); err != nil {
		return model.WGKey{}, fmt.Errorf("open: %w", err)
	}
	if err := plan.Validate(); err != nil {
		return model.WGKey{}, err
	}
	if d.Address.IsValid() {
		return model.WGKey{}, fmt.Errorf("address: %s given; addresses are allocated, give none", d.Address)
	}
	if quota < 0 {
		return model.WGKey{}, fmt.Errorf("quota %d; use a count, or 0 for none", quota)
	}
	return key, nil
}

// claim writes c at key with a create-only write and returns its revision.
// If key holds a live claim (see claimLive; backs says whether a device
// record names the claim) it returns errClaimed; a stale claim is taken
// over with a compare-and-swap.
func claim(ctx context.Context, s Store, key string, c deviceClaim, backs func(model.Device) bool) (int64, error) {
	v, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		rev, err := s.Put(ctx, key, v, 0)
		if !errors.Is(err, ErrConflict) {
			return rev, err
		}
		e, err := s.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return 0, err
		}
		live, err := claimLive(ctx, s, e, backs)
		if err != nil {
			return 0, err
		}
		if live {
			return 0, errClaimed
		}
		rev, err = s.Put(ctx, key, v, e.Rev)
		if !errors.Is(err, ErrConflict) {
			return rev, err
		}
	}
	return 0, fmt.Errorf("claim %s: still changing after %d attempts: %w", key, maxUpdateAttempts, ErrConflict)
}

// claimLive reports whether claim entry e holds: its device's record
// exists and backs it, or it is younger than staleClaim (a creation in
// progress). An unreadable claim does not hold.
func claimLive(ctx context.Context, s Store, e Entry, backs func(model.Device) bool) (bool, error) {
	var c deviceClaim
	if err := json.Unmarshal(e.Value, &c); err != nil {
		return false, nil
	}
	if tenant, name, ok := strings.Cut(c.Device, "/"); ok {
		var d model.Device
		_, err := GetJSON(ctx, s, DeviceKey(tenant, name), &d)
		switch {
		case err == nil && backs(d):
			return true, nil
		case err != nil && !errors.Is(err, ErrNotFound):
			return false, err
		}
	}
	return time.Since(c.Claimed) < staleClaim, nil
}

// backsAddr is claim's backs for the address claim at key.
func backsAddr(key string) func(model.Device) bool {
	return func(d model.Device) bool { return d.Address.IsValid() && deviceAddrKey(d.Address) == key }
}

// claimAddress claims a free block of plan for c and returns it with the
// claim's revision. devices are every stored device: their blocks (also
// those of another per-device size, after the operator changed it) are
// not tried.
func claimAddress(ctx context.Context, s Store, plan model.DevicePlan, c deviceClaim, devices []model.Device) (netip.Prefix, int64, error) {
	used := make(map[netip.Addr]bool, len(devices))
	var other []netip.Prefix // blocks of another size
	for _, d := range devices {
		used[d.Address.Addr()] = true
		if d.Address.Bits() != plan.Bits && d.Address.Overlaps(plan.Prefix) {
			other = append(other, d.Address)
		}
	}
	slots := plan.Slots()
	start, err := rand.Int(rand.Reader, slots)
	if err != nil {
		return netip.Prefix{}, 0, fmt.Errorf("pick an address: %w", err)
	}
	scan := int64(maxAddrScan)
	if slots.IsInt64() && slots.Int64() < scan {
		scan = slots.Int64()
	}
	idx := new(big.Int)
	attempts := 0
	for i := int64(0); i < scan; i++ {
		idx.Add(start, big.NewInt(i))
		idx.Mod(idx, slots)
		p := plan.Slot(idx)
		if plan.Reserved(p) || used[p.Addr()] || overlapsAny(p, other) {
			continue
		}
		if attempts == maxAddrAttempts {
			return netip.Prefix{}, 0, fmt.Errorf("%d addresses of %s tried, all taken meanwhile by other devices; try again: %w", attempts, plan.Prefix, ErrConflict)
		}
		attempts++
		key := deviceAddrKey(p)
		rev, err := claim(ctx, s, key, c, backsAddr(key))
		if errors.Is(err, errClaimed) {
			continue
		}
		if err != nil {
			return netip.Prefix{}, 0, fmt.Errorf("claim address %s: %w", p, err)
		}
		return p, rev, nil
	}
	if scan == maxAddrScan && !(slots.IsInt64() && slots.Int64() == scan) {
		return netip.Prefix{}, 0, fmt.Errorf("no free address among %d looked at in %s; try again: %w", scan, plan.Prefix, ErrConflict)
	}
	return netip.Prefix{}, 0, fmt.Errorf("every address block of %s is held: %w", plan, ErrAddressesFull)
}

func overlapsAny(p netip.Prefix, list []netip.Prefix) bool {
	for _, o := range list {
		if p.Overlaps(o) {
			return true
		}
	}
	return false
}

// devicesWithinQuota runs after a creation for tenant claimed its address
// at revision rev and wrote its record. It returns an error wrapping
// ErrDeviceQuota if quota or more of the tenant's live address claims (see
// claimLive) were written before rev. The first quota creations by
// revision always stay, so concurrent creations never exceed the quota.
func devicesWithinQuota(ctx context.Context, s Store, tenant string, rev int64, quota int) error {
	entries, err := s.List(ctx, DeviceAddrsPrefix)
	if err != nil {
		return fmt.Errorf("check quota: %w", err)
	}
	before := 0
	for _, e := range entries {
		var c deviceClaim
		if e.Rev >= rev || json.Unmarshal(e.Value, &c) != nil || !strings.HasPrefix(c.Device, tenant+"/") {
			continue
		}
		live, err := claimLive(ctx, s, e, backsAddr(e.Key))
		if err != nil {
			return fmt.Errorf("check quota: %w", err)
		}
		if live {
			before++
		}
	}
	if before >= quota {
		return fmt.Errorf("tenant holds %d devices, its quota is %d; remove one first: %w", before, quota, ErrDeviceQuota)
	}
	return nil
}

// UpdateDevice changes tenant's device named name with a compare-and-swap,
// calling update again when another writer came in between (so update must
// have no other side effects). Only the open ports may change: the name,
// tenant, key, address and creation time are kept whatever update does,
// and the open list is put in canonical form (a bad one returns an error
// wrapping ErrInvalidDevice). With ifRev > 0 the update applies only to
// that revision, as for UpdateService. A missing record returns an error
// wrapping ErrNotFound.
func UpdateDevice(ctx context.Context, s Store, tenant, name string, ifRev int64, update func(*model.Device) error) (model.Device, int64, error) {
	op := "update device " + tenant + "/" + name
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		d, rev, err := GetDevice(ctx, s, tenant, name)
		if err != nil {
			return model.Device{}, 0, fmt.Errorf("%s: %w", op, errors.Unwrap(err))
		}
		if ifRev > 0 && rev != ifRev {
			return model.Device{}, 0, fmt.Errorf("%s: at revision %d, not %d: %w", op, rev, ifRev, ErrConflict)
		}
		orig := d
		d.Open = append([]string(nil), d.Open...)
		if err := update(&d); err != nil {
			return model.Device{}, 0, fmt.Errorf("%s: %w", op, err)
		}
		open, err := model.ParseOpen(d.Open)
		if err != nil {
			return model.Device{}, 0, fmt.Errorf("%s: %w: open: %w", op, ErrInvalidDevice, err)
		}
		d = orig
		d.Open = open
		nrev, err := PutJSON(ctx, s, DeviceKey(tenant, name), d, rev)
		switch {
		case err == nil:
			return d, nrev, nil
		case errors.Is(err, ErrConflict) && ifRev <= 0:
			continue
		default:
			return model.Device{}, 0, fmt.Errorf("%s: %w", op, err)
		}
	}
	return model.Device{}, 0, fmt.Errorf("%s: still changing after %d attempts: %w", op, maxUpdateAttempts, ErrConflict)
}

// DeleteDevice removes tenant's device named name and releases its
// address and public key; it returns the record removed. The record goes
// first, so the device is cut off at once wherever it is served. With
// ifRev > 0 only that revision is deleted, as for DeleteService. A missing
// record returns an error wrapping ErrNotFound.
func DeleteDevice(ctx context.Context, s Store, tenant, name string, ifRev int64) (model.Device, error) {
	op := "delete device " + tenant + "/" + name
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		d, rev, err := GetDevice(ctx, s, tenant, name)
		if err != nil {
			return model.Device{}, fmt.Errorf("%s: %w", op, errors.Unwrap(err))
		}
		if ifRev > 0 && rev != ifRev {
			return model.Device{}, fmt.Errorf("%s: at revision %d, not %d: %w", op, rev, ifRev, ErrConflict)
		}
		// Note the claims first: once the record is gone, a new device may
		// take them over, and its claims must stay.
		var claims []Entry
		keys := []string{deviceAddrKey(d.Address)}
		if k, err := model.ParseWGKey(d.PublicKey); err == nil {
			keys = append(keys, deviceKeyKey(k))
		}
		for _, key := range keys {
			e, err := s.Get(ctx, key)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return model.Device{}, fmt.Errorf("%s: %w", op, err)
			}
			var c deviceClaim
			if json.Unmarshal(e.Value, &c) == nil && c.Device == d.ID() {
				claims = append(claims, e)
			}
		}
		err = s.Delete(ctx, DeviceKey(tenant, name), rev)
		switch {
		case err == nil:
			for _, e := range claims {
				// A conflict means another device took the claim over.
				if err := s.Delete(ctx, e.Key, e.Rev); err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
					return d, fmt.Errorf("%s: release %s: %w", op, e.Key, err)
				}
			}
			return d, nil
		case errors.Is(err, ErrConflict) && ifRev <= 0:
			continue
		default:
			return model.Device{}, fmt.Errorf("%s: %w", op, err)
		}
	}
	return model.Device{}, fmt.Errorf("%s: still changing after %d attempts: %w", op, maxUpdateAttempts, ErrConflict)
}

// deleteDevicesOf removes every device of tenant.
func deleteDevicesOf(ctx context.Context, s Store, tenant string) error {
	ds, err := DevicesOf(ctx, s, tenant)
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	for _, d := range ds {
		if _, err := DeleteDevice(ctx, s, tenant, d.Name, 0); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}
