package wg4to6

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// verdict is what the policy decided about one packet.
type verdict uint8

const (
	pass            verdict = iota
	dropMalformed           // not a well-formed IPv6 packet
	dropIPv4                // IPv4 inside the tunnel: this is a 4-to-6 service
	dropSource              // from a device: the source is not a device's own address; to a device: from another device
	dropDest                // from a device: to the prefix (another device, the gateway), a blocked or non-global address
	dropICMP                // an ICMPv6 type that does not cross the gateway
	dropNoPeer              // to an address no device has
	dropUnsolicited         // to a device: no flow, not related, port not open
	dropNoNATPort           // NAT66: no free port for this remote
)

var verdictNames = [...]string{"pass", "malformed", "ipv4", "source", "destination", "icmp-type", "no-peer", "unsolicited", "no-nat-port"}

func (v verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// alwaysBlocked are destinations that are never the IPv6 internet.
var alwaysBlocked = []netip.Prefix{
	netip.MustParsePrefix("::/96"),         // unspecified, loopback, IPv4-compatible
	netip.MustParsePrefix("::ffff:0:0/96"), // IPv4-mapped
	netip.MustParsePrefix("100::/64"),      // discard-only
	netip.MustParsePrefix("fc00::/7"),      // unique local: private networks
	netip.MustParsePrefix("fe80::/10"),     // link-local
	netip.MustParsePrefix("fec0::/10"),     // site-local (deprecated)
	netip.MustParsePrefix("ff00::/8"),      // multicast
}

// counters are one device's, kept across SetPeers calls.
type counters struct {
	rx, tx, dropped atomic.Int64
}

// peerState is one device as the policy sees it; immutable but for the
// counters.
type peerState struct {
	key  Key
	addr netip.Prefix
	open openSet
	ctr  *counters
}

// peerSet is the devices, looked up by address; immutable, replaced whole.
type peerSet struct {
	lens   []int // the prefix lengths of device addresses, longest first
	byAddr map[netip.Prefix]*peerState
}

func newPeerSet(peers []*peerState) *peerSet {
	s := &peerSet{byAddr: make(map[netip.Prefix]*peerState, len(peers))}
	for _, p := range peers {
		s.byAddr[p.addr] = p
		if !slices.Contains(s.lens, p.addr.Bits()) {
			s.lens = append(s.lens, p.addr.Bits())
		}
	}
	slices.Sort(s.lens)
	slices.Reverse(s.lens)
	return s
}

// lookup returns the device whose address a is.
func (s *peerSet) lookup(a [16]byte) *peerState {
	addr := netip.AddrFrom16(a)
	for _, l := range s.lens {
		pfx, _ := addr.Prefix(l)
		if p := s.byAddr[pfx]; p != nil {
			return p
		}
	}
	return nil
}

type portRange struct{ lo, hi uint16 }

// openSet is a device's open inbound ports (Peer.Open).
type openSet struct {
	all, icmp bool
	tcp, udp  []portRange
}

// allows reports whether a new inbound flow to port may reach the device.
func (o *openSet) allows(proto uint8, port uint16) bool {
	if o.all {
		return true
	}
	var rs []portRange
	switch proto {
	case protoTCP:
		rs = o.tcp
	case protoUDP:
		rs = o.udp
	}
	for _, r := range rs {
		if port >= r.lo && port <= r.hi {
			return true
		}
	}
	return false
}

func (o *openSet) equal(p *openSet) bool {
	return o.all == p.all && o.icmp == p.icmp && slices.Equal(o.tcp, p.tcp) && slices.Equal(o.udp, p.udp)
}

// ValidateOpen reports whether s is a valid Peer.Open entry: "tcp/PORT",
// "udp/PORT", "tcp/LOW-HIGH", "udp/LOW-HIGH" (ports 1-65535), "icmp" (echo
// requests: ping) or "all" (everything).
func ValidateOpen(s string) error {
	var o openSet
	return o.add(s)
}

func parseOpen(list []string) (openSet, error) {
	var o openSet
	for _, s := range list {
		if err := o.add(s); err != nil {
			return openSet{}, err
		}
	}
	return o, nil
}

func (o *openSet) add(s string) error {
	const accepted = `want "tcp/PORT", "udp/PORT", "tcp/LOW-HIGH", "udp/LOW-HIGH", "icmp" or "all"`
	switch s {
	case "all":
		o.all = true
		return nil
	case "icmp":
		o.icmp = true
		return nil
	}
	proto, ports, ok := strings.Cut(s, "/")
	if !ok || proto != "tcp" && proto != "udp" {
		return fmt.Errorf("open port %q: %s", s, accepted)
	}
	lo, hi, isRange := strings.Cut(ports, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h < l {
		return fmt.Errorf("open port %q: ports are 1-65535, a range LOW-HIGH with LOW <= HIGH; %s", s, accepted)
	}
	r := portRange{uint16(l), uint16(h)}
	if proto == "tcp" {
		o.tcp = append(o.tcp, r)
	} else {
		o.udp = append(o.udp, r)
	}
	return nil
}

// policy decides on every packet between the devices and the internet:
// out for those from devices (which WireGuard writes to the TUN), in for
// those to devices (which it reads). It is safe for concurrent use; the
// device set is swapped whole.
type policy struct {
	prefix  netip.Prefix
	gw      [16]byte // the gateway's own address in prefix (the kernel's ICMPv6 errors come from it)
	nat     bool
	natAddr [16]byte
	blocked []netip.Prefix
	flows   *flowTable

	peers   atomic.Pointer[peerSet]
	dropped atomic.Int64 // drops no device can be charged with
}

func newPolicy(cfg *Config) *policy {
	p := &policy{
		prefix:  cfg.Prefix,
		gw:      gatewayAddr(cfg.Prefix).As16(),
		nat:     cfg.NAT66,
		blocked: append(slices.Clone(cfg.Blocked), alwaysBlocked...),
		flows:   newFlowTable(cfg.MaxFlows, cfg.MaxFlowsPerPeer, cfg.NAT66),
	}
	if cfg.NAT66 {
		p.natAddr = cfg.NATAddr.As16()
		p.blocked = append(p.blocked, netip.PrefixFrom(cfg.NATAddr, 128))
	}
	p.peers.Store(newPeerSet(nil))
	return p
}

// gatewayAddr is the gateway's own address in prefix: its first after the
// subnet-router anycast one (prefix::1). It is never a device's.
func gatewayAddr(prefix netip.Prefix) netip.Addr { return prefix.Addr().Next() }

func (p *policy) blockedDest(a [16]byte) bool {
	addr := netip.AddrFrom16(a)
	if p.prefix.Contains(addr) {
		return true
	}
	for _, b := range p.blocked {
		if b.Contains(addr) {
			return true
		}
	}
	return false
}

// out decides on packet b from a device (rewriting it for NAT66).
func (p *policy) out(now int64, b []byte) verdict {
	if len(b) > 0 && b[0]>>4 == 4 {
		p.dropped.Add(1)
		return dropIPv4
	}
	var pk packet
	if !parse(b, &pk, false) {
		p.dropped.Add(1)
		return dropMalformed
	}
	ps := p.peers.Load().lookup(pk.src)
	if ps == nil {
		p.dropped.Add(1)
		return dropSource
	}
	v := p.outPeer(now, b, &pk, ps)
	if v == pass {
		ps.ctr.rx.Add(int64(pk.length))
	} else {
		ps.ctr.dropped.Add(1)
	}
	return v
}

func (p *policy) outPeer(now int64, b []byte, pk *packet, ps *peerState) verdict {
	if p.blockedDest(pk.dst) {
		return dropDest
	}
	switch {
	case pk.laterFragment():
		// Its first fragment passed, or the destination drops it.
	case pk.proto == protoICMPv6:
		switch {
		case pk.icmpType == icmpEchoRequest:
			natPort, ok := p.flows.outbound(now, ps.key, outKey(pk), 0, true)
			if !ok {
				return dropNoNATPort
			}
			if p.nat {
				setAddrPort(b, pk, true, p.natAddr, natPort)
			}
			return pass
		case pk.icmpType == icmpEchoReply:
			if p.nat {
				return dropICMP // no echo request reaches a device behind NAT66
			}
			return pass
		case pk.icmpError():
			return p.outICMPError(now, b, pk, ps)
		}
		return dropICMP
	default:
		create := pk.proto != protoTCP || pk.tcpFlags&tcpRST == 0
		natPort, ok := p.flows.outbound(now, ps.key, outKey(pk), pk.tcpFlags, create)
		if !ok && create {
			return dropNoNATPort
		}
		if p.nat {
			if !ok {
				return dropUnsolicited // a RST on no flow
			}
			setAddrPort(b, pk, true, p.natAddr, natPort)
			return pass
		}
	}
	if p.nat {
		setAddrPort(b, pk, true, p.natAddr, 0)
	}
	return pass
}

// outICMPError passes an ICMPv6 error from a device about a packet it was
// sent (port unreachable, packet too big).
func (p *policy) outICMPError(now int64, b []byte, pk *packet, ps *peerState) verdict {
	inner := b[pk.l4+8 : pk.length]
	var ip packet
	if !parse(inner, &ip, true) || !ps.addr.Contains(netip.AddrFrom16(ip.dst)) {
		return dropICMP
	}
	if !p.nat {
		return pass
	}
	// The embedded packet came from the internet to the NAT66 address.
	natPort, ok := p.flows.has(now, flowKey{dev: ip.dst, remote: ip.src, devPort: ip.dport, remotePort: ip.sport, proto: ip.proto})
	if !ok || ip.l4 == 0 {
		return dropICMP
	}
	copy(inner[24:40], p.natAddr[:])
	if _, dpo := ip.portOffsets(); dpo >= 0 {
		binary.BigEndian.PutUint16(inner[dpo:], natPort)
	}
	copy(b[8:24], p.natAddr[:])
	binary.BigEndian.PutUint16(b[pk.l4+2:], icmpChecksum(b, pk.l4, pk.length))
	return pass
}

// outKey is the flow key of a packet from a device.
func outKey(pk *packet) flowKey {
	return flowKey{dev: pk.src, remote: pk.dst, devPort: pk.sport, remotePort: pk.dport, proto: pk.proto}
}

// inKey is the flow key of a packet to a device.
func inKey(pk *packet) flowKey {
	return flowKey{dev: pk.dst, remote: pk.src, devPort: pk.dport, remotePort: pk.sport, proto: pk.proto}
}

// in decides on packet b to a device (rewriting it for NAT66).
func (p *policy) in(now int64, b []byte) verdict {
	var pk packet
	if !parse(b, &pk, false) {
		p.dropped.Add(1)
		if len(b) > 0 && b[0]>>4 == 4 {
			return dropIPv4
		}
		return dropMalformed
	}
	if p.nat && pk.dst == p.natAddr {
		return p.inNAT(now, b, &pk)
	}
	ps := p.peers.Load().lookup(pk.dst)
	if ps == nil {
		p.dropped.Add(1)
		return dropNoPeer
	}
	v := p.inPeer(now, b, &pk, ps)
	if v == pass {
		ps.ctr.tx.Add(int64(pk.length))
	} else {
		ps.ctr.dropped.Add(1)
	}
	return v
}

func (p *policy) inPeer(now int64, b []byte, pk *packet, ps *peerState) verdict {
	if p.nat {
		return dropUnsolicited // devices are reachable through the NAT66 address only
	}
	if pk.src != p.gw && p.prefix.Contains(netip.AddrFrom16(pk.src)) {
		return dropSource
	}
	switch {
	case pk.laterFragment():
		if _, ok := p.flows.frag(now, pk.src, pk.dst, pk.fragID); !ok {
			return dropUnsolicited
		}
		return pass
	case pk.proto == protoICMPv6:
		switch {
		case pk.icmpType == icmpEchoReply:
			if !p.flows.inbound(now, inKey(pk), 0) {
				return dropUnsolicited
			}
		case pk.icmpType == icmpEchoRequest:
			if !ps.open.icmp && !ps.open.all {
				return dropUnsolicited
			}
		case pk.icmpError():
			inner := b[pk.l4+8 : pk.length]
			var ip packet
			if !parse(inner, &ip, true) || !ps.addr.Contains(netip.AddrFrom16(ip.src)) {
				return dropICMP
			}
			if _, ok := p.flows.has(now, outKey(&ip)); !ok {
				return dropUnsolicited
			}
		default:
			return dropICMP
		}
	default:
		k := inKey(pk)
		if !p.flows.inbound(now, k, pk.tcpFlags) {
			if !ps.open.allows(pk.proto, pk.dport) {
				return dropUnsolicited
			}
			p.flows.openInbound(now, ps.key, k, pk.tcpFlags)
		}
	}
	if pk.firstFragment() {
		p.flows.addFrag(now, pk.src, pk.dst, pk.fragID, pk.dst)
	}
	return pass
}

// inNAT decides on packet b to the NAT66 address and rewrites it for the
// device whose flow it belongs to.
func (p *policy) inNAT(now int64, b []byte, pk *packet) verdict {
	var dev [16]byte
	switch {
	case pk.laterFragment():
		d, ok := p.flows.frag(now, pk.src, pk.dst, pk.fragID)
		if !ok {
			p.dropped.Add(1)
			return dropUnsolicited
		}
		dev = d
		setAddrPort(b, pk, false, dev, 0)
	case pk.icmpError():
		inner := b[pk.l4+8 : pk.length]
		var ip packet
		if !parse(inner, &ip, true) || ip.src != p.natAddr || ip.l4 == 0 {
			p.dropped.Add(1)
			return dropICMP
		}
		k, ok := p.flows.inboundNAT(now, natKey{remote: ip.dst, natPort: ip.sport, remotePort: ip.dport, proto: ip.proto}, 0, false)
		if !ok {
			p.dropped.Add(1)
			return dropUnsolicited
		}
		dev = k.dev
		copy(inner[8:24], k.dev[:])
		if spo, _ := ip.portOffsets(); spo >= 0 {
			binary.BigEndian.PutUint16(inner[spo:], k.devPort)
		}
		copy(b[24:40], k.dev[:])
		binary.BigEndian.PutUint16(b[pk.l4+2:], icmpChecksum(b, pk.l4, pk.length))
	case pk.proto == protoICMPv6 && pk.icmpType != icmpEchoReply:
		p.dropped.Add(1)
		return dropICMP
	default:
		k, ok := p.flows.inboundNAT(now, natKey{remote: pk.src, natPort: pk.dport, remotePort: pk.sport, proto: pk.proto}, pk.tcpFlags, true)
		if !ok {
			p.dropped.Add(1)
			return dropUnsolicited
		}
		dev = k.dev
		setAddrPort(b, pk, false, k.dev, k.devPort)
		if pk.firstFragment() {
			p.flows.addFrag(now, pk.src, p.natAddr, pk.fragID, k.dev)
		}
	}
	if ps := p.peers.Load().lookup(dev); ps != nil {
		ps.ctr.tx.Add(int64(pk.length))
		return pass
	}
	p.dropped.Add(1)
	return dropNoPeer // revoked since; its flows are being purged
}
