// Package wg4to6 is the gateway's IPv4-to-IPv6 access endpoint: a
// userspace WireGuard device (golang.zx2c4.com/wireguard) on a kernel TUN
// that gives each device (peer) its own routed public IPv6 address or /64
// from the operator's prefix, and forwards between the devices and the IPv6
// internet, with a stateful inbound policy per device, anti-spoofing, no
// device-to-device traffic, no IPv4 inside the tunnel and no access to the
// gateway's private side.
package wg4to6

import (
	"net/netip"
	"time"
)

// Key is a WireGuard (Curve25519) key.
type Key [32]byte

// Config configures Start.
type Config struct {
	// ListenPort is the UDP port WireGuard listens on, IPv4 and IPv6.
	ListenPort int
	// PrivateKey is the gateway's WireGuard key (kept in its data dir).
	PrivateKey Key
	// Prefix is routed to the gateway; devices get their addresses from it.
	Prefix netip.Prefix
	// NAT66, when set, masquerades devices' traffic behind the gateway's
	// own IPv6 address instead of routing their addresses (for an operator
	// with a single /64 or ULA addresses); off by default.
	NAT66 bool
	// TUN names the kernel TUN interface; "" means "webgw4to6".
	TUN string
	// MTU of the TUN; 0 means 1420.
	MTU int
	// Blocked are networks devices may never reach: the gateway's private
	// side (loopback, its admin API and store networks, the overlay).
	// Device-to-device traffic (Prefix) is always blocked.
	Blocked []netip.Prefix
}

// Peer is one device.
type Peer struct {
	PublicKey Key
	// Addr is the device's own address: a /128, or a /64 per device.
	Addr netip.Prefix
	// Open are the inbound ports opened to the internet ("tcp/22",
	// "udp/51820"); "all" opens everything. Empty: established and related
	// traffic only.
	Open []string
}

// PeerStats are one device's counters.
type PeerStats struct {
	RxBytes, TxBytes int64 // from and to the device
	LastHandshake    time.Time
}
