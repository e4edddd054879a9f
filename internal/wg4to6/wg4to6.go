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

// Config configures Start.
type Config struct {
	// ListenPort is the UDP port WireGuard listens on, IPv4 and IPv6; 0
	// picks a free one (tests). The gateway's default is DefaultListenPort.
	ListenPort int
	// PrivateKey is the gateway's WireGuard key (kept in its data dir).
	PrivateKey Key
	// Prefix is routed to the gateway; devices get their addresses from it.
	Prefix netip.Prefix
	// NAT66, when set, masquerades devices' traffic behind the gateway's
	// own IPv6 address NATAddr instead of routing their addresses (for an
	// operator with a single /64 or ULA addresses); off by default. Devices
	// behind NAT66 are reachable through the flows they open only: Peer.Open
	// does not apply.
	NAT66 bool
	// NATAddr is the public address NAT66 traffic leaves from; required
	// with NAT66 and outside Prefix. The engine routes it into its TUN, so
	// it must not be an address of the gateway's interfaces; the upstream
	// router must route it to the gateway (or the gateway answer neighbour
	// discovery for it: ip -6 neigh add proxy ADDR dev UPLINK, with
	// net.ipv6.conf.UPLINK.proxy_ndp=1).
	NATAddr netip.Addr
	// TUN names the kernel TUN interface; "" means "webgw4to6".
	TUN string
	// MTU of the TUN; 0 means 1420.
	MTU int
	// Blocked are networks devices may never reach: the gateway's private
	// side (loopback, its admin API and store networks, the overlay).
	// Device-to-device traffic (Prefix) is always blocked.
	Blocked []netip.Prefix
	// MaxFlows bounds the connection table (flows of all devices); 0 means
	// 65536. Each flow takes about 200 bytes.
	MaxFlows int
	// MaxFlowsPerPeer bounds the flows of one device; 0 means 8192 (or
	// MaxFlows, if smaller). A device at its bound loses its least recently
	// used flow to each new one.
	MaxFlowsPerPeer int
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
	RxBytes, TxBytes int64 // from and to the device: IPv6 packets passed, headers included
	LastHandshake    time.Time
	// Dropped counts the packets from or to the device that the policy
	// dropped (unsolicited inbound, blocked destinations).
	Dropped int64
	// Endpoint is where the device's WireGuard packets last came from
	// (its public IPv4 address and port); invalid before the first.
	Endpoint netip.AddrPort
}
