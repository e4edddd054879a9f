// Package ygg is the gateway's embedded Yggdrasil node (yggdrasil-go v0.5
// src/core): an access point of the planetary network that peers outward
// and accepts users' nodes, and a userspace network stack on the node's
// 200::/7 address (no TUN) through which the gateway dials backends that
// live only on the overlay and serves the services published there.
package ygg

import (
	"net/netip"
	"time"
)

// Config configures Start.
type Config struct {
	// PrivateKey is the node's ed25519 private key (64 bytes; the caller
	// keeps it in the data dir, so the address is stable).
	PrivateKey []byte
	// Peers are outbound peer URIs (tls://host:port, tcp://, quic://).
	Peers []string
	// Listen are the access point's listeners (tls://0.0.0.0:PORT, tcp://, quic://).
	Listen []string
	// Password, when set, is the peering password required of inbound
	// peers on every listener that has none in its URI (?password=). Empty:
	// no password. An outbound peer that needs one carries it in its URI.
	// At most 64 bytes.
	Password string
	// AllowedKeys, when set, are the only peers' public keys (hex) accepted
	// inbound. Empty: any key.
	AllowedKeys []string
	// TUN, when set, also puts the host on the network through a TUN with
	// this name (the library's TUN adapter; needs CAP_NET_ADMIN). The node's
	// packets then go to the kernel instead of the userspace stack, so
	// DialContext and Listen use the host's sockets on the TUN's address.
	// Empty: no TUN, userspace stack only.
	TUN string
}

// PeerStatus is one peer of the node.
type PeerStatus struct {
	URI       string
	Inbound   bool
	Up        bool
	PublicKey string // hex
	Addr      netip.Addr
	RxBytes   uint64
	TxBytes   uint64
	Uptime    time.Duration
	LastError string
}

// Status is the node's state for `webgw ygg status`.
type Status struct {
	Addr      netip.Addr   // the node's 200::/7 address
	Subnet    netip.Prefix // its routed /64 in 300::/8
	PublicKey string       // hex
	Listeners []string     // listener URIs with the bound address (port 0 resolved)
	TUN       string       // the TUN's name, empty without one
	Peers     []PeerStatus
}
