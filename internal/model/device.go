package model

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Device is a WireGuard client of the gateway's IPv4-to-IPv6 access (4to6):
// a laptop or phone of a tenant, on an IPv4-only network, that gets its own
// public IPv6 address (or /64) through the gateway. It is a resource like a
// port: its address is allocated from the operator's prefix, kept in the
// store across restarts and released when the device is deleted.
type Device struct {
	// Name is the tenant's name for the device (one DNS label); unique
	// within the tenant.
	Name   string `json:"name"`
	Tenant string `json:"tenant"`
	// PublicKey is the device's WireGuard public key (WGKey.String). One
	// key is one device. The gateway never holds the private key.
	PublicKey string `json:"public_key"`
	// Address is the device's own address: a /128, or a /64 per device.
	Address netip.Prefix `json:"address"`
	// Open are the inbound ports opened to the internet, as ParseOpen
	// returns them ("tcp/22", "udp/60000", or "all"). Empty: only
	// established and related traffic comes in.
	Open    []string  `json:"open"`
	Created time.Time `json:"created"`
}

// ID is "TENANT/NAME", which names the device across tenants.
func (d Device) ID() string { return d.Tenant + "/" + d.Name }

// ValidateDeviceName checks a device name: one DNS label (1-63 characters
// of a-z, 0-9 and '-', not starting or ending with '-').
func ValidateDeviceName(name string) error {
	if err := validateLabel(name); err != nil {
		return fmt.Errorf("invalid device name %q: %w", name, err)
	}
	return nil
}

// OpenAll in a device's open list opens every inbound port.
const OpenAll = "all"

// MaxOpen bounds the entries of a device's open list ("all" opens every port).
const MaxOpen = 64

// openForm names the accepted syntax in errors.
const openForm = "use tcp/PORT or udp/PORT (PORT 1-65535), or all"

// ParseOpen checks a list of inbound ports to open and returns it in
// canonical form: sorted (tcp before udp, then by number), without
// duplicates, and just ["all"] when it holds "all". An empty list gives an
// empty, non-nil slice.
func ParseOpen(list []string) ([]string, error) {
	type entry struct {
		proto string
		n     int
	}
	var es []entry
	all := false
	for _, s := range list {
		if s == OpenAll {
			all = true
			continue
		}
		proto, num, ok := strings.Cut(s, "/")
		if !ok || (proto != "tcp" && proto != "udp") {
			return nil, fmt.Errorf("%q not accepted; %s", s, openForm)
		}
		n, err := parsePortNumber(num)
		if err != nil {
			return nil, fmt.Errorf("%q: %v; %s", s, err, openForm)
		}
		es = append(es, entry{proto, n})
	}
	if all {
		return []string{OpenAll}, nil
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.n, b.n)) })
	es = slices.Compact(es)
	if len(es) > MaxOpen {
		return nil, fmt.Errorf("%d ports; at most %d are accepted (all opens every port)", len(es), MaxOpen)
	}
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, e.proto+"/"+strconv.Itoa(e.n))
	}
	return out, nil
}

// Per-device sizes of DevicePlan.Bits.
const (
	// DeviceAddr128: one address per device.
	DeviceAddr128 = 128
	// DeviceAddr64: a /64 per device, for its own machines behind it.
	DeviceAddr64 = 64
)

// DevicePlan is how devices get their addresses from the operator's
// prefix: each a /128 (Bits 128) or each a /64 (Bits 64). The prefix's
// first two addresses (::0 and the gateway's own, ::1) are never handed
// out: with /64 per device that is the whole first /64.
type DevicePlan struct {
	Prefix netip.Prefix
	Bits   int
}

// ParseDevicePlan reads the operator's prefix ("2001:db8:100::/56") and the
// size per device ("/128", the default when "", or "/64"). Errors say
// which of the two is wrong, starting "prefix:" or "per device:".
func ParseDevicePlan(prefix, perDevice string) (DevicePlan, error) {
	var pl DevicePlan
	switch strings.TrimPrefix(perDevice, "/") {
	case "", "128":
		pl.Bits = DeviceAddr128
	case "64":
		pl.Bits = DeviceAddr64
	default:
		return DevicePlan{}, fmt.Errorf("per device: %q not accepted; use /128 (an address per device) or /64 (a /64 per device)", perDevice)
	}
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		return DevicePlan{}, fmt.Errorf("prefix: %q is not an IPv6 prefix such as 2001:db8:100::/56", prefix)
	}
	pl.Prefix = p
	if err := pl.Validate(); err != nil {
		return DevicePlan{}, err
	}
	return pl, nil
}

var (
	globalUnicast = netip.MustParsePrefix("2000::/3")
	uniqueLocal   = netip.MustParsePrefix("fc00::/7")
)

// Validate checks the plan; see ParseDevicePlan.
func (pl DevicePlan) Validate() error {
	p := pl.Prefix
	switch {
	case pl.Bits != DeviceAddr128 && pl.Bits != DeviceAddr64:
		return fmt.Errorf("per device: /%d not accepted; use /128 or /64", pl.Bits)
	case !p.IsValid():
		return fmt.Errorf("prefix: none given; use the IPv6 prefix routed to the gateway, such as 2001:db8:100::/56")
	case p.Addr().Is4() || p.Addr().Is4In6():
		return fmt.Errorf("prefix: %s is IPv4; use the IPv6 prefix routed to the gateway, such as 2001:db8:100::/56", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("prefix: %s has a zone; use a prefix without one", p)
	case p != p.Masked():
		return fmt.Errorf("prefix: %s has bits set past /%d; use %s", p, p.Bits(), p.Masked())
	case p.Bits() < 8:
		return fmt.Errorf("prefix: %s is too wide; use the prefix routed to the gateway, /8 or longer", p)
	case !globalUnicast.Contains(p.Addr()) && !uniqueLocal.Contains(p.Addr()):
		return fmt.Errorf("prefix: %s is neither global unicast (2000::/3) nor unique local (fc00::/7) address space", p)
	case pl.Bits == DeviceAddr64 && p.Bits() >= 64:
		return fmt.Errorf("prefix: a /64 per device needs a prefix shorter than /64, not %s; use a /56 or /48, or /128 per device", p)
	case pl.Bits == DeviceAddr128 && p.Bits() > 126:
		return fmt.Errorf("prefix: %s leaves no address for devices (its first two are the gateway's); use /126 or shorter", p)
	}
	return nil
}

// Slots is how many device-sized blocks the prefix holds, reserved ones included.
func (pl DevicePlan) Slots() *big.Int {
	return new(big.Int).Lsh(big.NewInt(1), uint(pl.Bits-pl.Prefix.Bits()))
}

// Slot is the i-th device-sized block of the prefix, 0 <= i < Slots().
func (pl DevicePlan) Slot(i *big.Int) netip.Prefix {
	v := new(big.Int).SetBytes(pl.Prefix.Addr().AsSlice())
	v.Add(v, new(big.Int).Lsh(i, uint(128-pl.Bits)))
	var b [16]byte
	v.FillBytes(b[:])
	return netip.PrefixFrom(netip.AddrFrom16(b), pl.Bits)
}

// Contains reports whether p is a device-sized block of the prefix.
func (pl DevicePlan) Contains(p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == pl.Bits && p == p.Masked() && pl.Prefix.Contains(p.Addr())
}

// Reserved reports whether block p of the prefix is never handed out: the
// one holding the prefix's ::0 or ::1 (the gateway's own address), and,
// for single addresses in a prefix of /64 or wider, each /64's
// subnet-router anycast address (interface identifier 0) and its reserved
// anycast addresses (RFC 2526: the highest 128 interface identifiers).
func (pl DevicePlan) Reserved(p netip.Prefix) bool {
	first := pl.Prefix.Addr()
	if p.Contains(first) || p.Contains(first.Next()) {
		return true
	}
	if pl.Bits == DeviceAddr128 && pl.Prefix.Bits() <= 64 {
		b := p.Addr().As16()
		iid := binary.BigEndian.Uint64(b[8:])
		return iid == 0 || iid >= 0xffff_ffff_ffff_ff80
	}
	return false
}

// GatewayAddr is the gateway's own address in the prefix: its ::1.
func (pl DevicePlan) GatewayAddr() netip.Addr { return pl.Prefix.Addr().Next() }

// String is "2001:db8:100::/56, /128 per device".
func (pl DevicePlan) String() string {
	return fmt.Sprintf("%s, /%d per device", pl.Prefix, pl.Bits)
}

// InterfaceAddr is the address a device puts on its WireGuard interface
// (wg-quick's Address) for its block p: p itself for a /128; for a /64,
// the /64's ::1 with the /64's length.
func InterfaceAddr(p netip.Prefix) netip.Prefix {
	if p.Bits() == 128 {
		return p
	}
	return netip.PrefixFrom(p.Masked().Addr().Next(), p.Bits())
}
