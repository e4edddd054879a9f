package wg4to6

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The devices of the policy tests.
var (
	keyA = Key{1}
	keyB = Key{2}
	keyC = Key{3}
)

const (
	devA   = "2001:db8:100::10"  // a /128, nothing open
	devB   = "2001:db8:100:1::5" // inside B's /64: tcp/22, udp/5000-5010, icmp open
	devC   = "2001:db8:100::30"  // a /128, all open
	remote = "2001:db8:1::2"     // a host on the internet
	router = "2001:db8:1::1"     // a router on the way
	gwAddr = "2001:db8:100::1"   // the gateway's own address in the prefix

	natDevA = "fd00:46::10"
	natDevB = "fd00:46::20"
	natAddr = "2001:db8:2::46"
)

// testPolicy returns a policy with devices A, B and C (routed) or A and B
// (NAT66, behind natAddr).
func testPolicy(tb testing.TB, nat bool) *policy {
	tb.Helper()
	cfg := Config{
		PrivateKey: Key{9},
		Prefix:     netip.MustParsePrefix("2001:db8:100::/56"),
		Blocked:    []netip.Prefix{netip.MustParsePrefix("2001:db8:ff::/48")},
	}
	peers := []Peer{
		{PublicKey: keyA, Addr: netip.MustParsePrefix(devA + "/128")},
		{PublicKey: keyB, Addr: netip.MustParsePrefix("2001:db8:100:1::/64"), Open: []string{"tcp/22", "udp/5000-5010", "icmp"}},
		{PublicKey: keyC, Addr: netip.MustParsePrefix(devC + "/128"), Open: []string{"all"}},
	}
	if nat {
		cfg.Prefix = netip.MustParsePrefix("fd00:46::/64")
		cfg.NAT66 = true
		cfg.NATAddr = netip.MustParseAddr(natAddr)
		peers = []Peer{
			{PublicKey: keyA, Addr: netip.MustParsePrefix(natDevA + "/128")},
			{PublicKey: keyB, Addr: netip.MustParsePrefix(natDevB + "/128"), Open: []string{"all"}},
		}
	}
	cfg, err := cfg.complete()
	if err != nil {
		tb.Fatal(err)
	}
	p := newPolicy(&cfg)
	e := &Engine{cfg: cfg, pub: cfg.PrivateKey.Public(), log: discardLog()}
	states, err := e.checkPeers(peers)
	if err != nil {
		tb.Fatal(err)
	}
	var list []*peerState
	for _, ps := range states {
		ps.ctr = new(counters)
		list = append(list, ps)
	}
	p.peers.Store(newPeerSet(list))
	return p
}

// step is one packet through the policy and the verdict expected.
type step struct {
	out  bool // from a device (else to one)
	b    []byte
	want verdict
}

func runSteps(t *testing.T, p *policy, now int64, steps []step) {
	t.Helper()
	for i, s := range steps {
		dir, f := "in", p.in
		if s.out {
			dir, f = "out", p.out
		}
		if got := f(now, s.b); got != s.want {
			var pk packet
			parse(s.b, &pk, false)
			t.Errorf("step %d (%s, %s -> %s, proto %d, ports %d -> %d): %v, want %v",
				i, dir, netip.AddrFrom16(pk.src), netip.AddrFrom16(pk.dst), pk.proto, pk.sport, pk.dport, got, s.want)
		}
	}
}

func TestPolicyRouted(t *testing.T) {
	udpA := ip6(devA, remote, protoUDP, udpDgram(5000, 53))
	tests := []struct {
		name  string
		steps []step
	}{
		{"outbound records a flow, the reply passes", []step{
			{true, ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)), pass},
			{false, ip6(remote, devA, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK)), pass},
			{true, ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpACK)), pass},
			{false, ip6(remote, devA, protoTCP, tcpSeg(443, 40001, tcpACK)), dropUnsolicited},
			{false, ip6(remote, devA, protoTCP, tcpSeg(444, 40000, tcpACK)), dropUnsolicited},
			{false, ip6(router, devA, protoTCP, tcpSeg(443, 40000, tcpACK)), dropUnsolicited},
		}},
		{"udp reply", []step{
			{true, udpA, pass},
			{false, ip6(remote, devA, protoUDP, udpDgram(53, 5000)), pass},
			{false, ip6(remote, devA, protoUDP, udpDgram(53, 5001)), dropUnsolicited},
		}},
		{"unsolicited inbound is dropped", []step{
			{false, ip6(remote, devA, protoTCP, tcpSeg(50000, 22, tcpSYN)), dropUnsolicited},
			{false, ip6(remote, devA, protoUDP, udpDgram(50000, 5000)), dropUnsolicited},
			{false, ip6(remote, devA, protoICMPv6, echo(icmpEchoRequest, 1, 1)), dropUnsolicited},
			{false, ip6(remote, devA, protoICMPv6, echo(icmpEchoReply, 1, 1)), dropUnsolicited},
			{false, ip6(remote, devB, protoTCP, tcpSeg(50000, 23, tcpSYN)), dropUnsolicited},
			{false, ip6(remote, devB, protoUDP, udpDgram(50000, 5011)), dropUnsolicited},
		}},
		{"open ports", []step{
			{false, ip6(remote, devB, protoTCP, tcpSeg(50000, 22, tcpSYN)), pass},
			{true, ip6(devB, remote, protoTCP, tcpSeg(22, 50000, tcpSYN|tcpACK)), pass},
			{false, ip6(remote, "2001:db8:100:1::99", protoTCP, tcpSeg(50000, 22, tcpSYN)), pass}, // anywhere in B's /64
			{false, ip6(remote, devB, protoUDP, udpDgram(50000, 5000)), pass},
			{false, ip6(remote, devB, protoUDP, udpDgram(50000, 5010)), pass},
			{false, ip6(remote, devB, protoICMPv6, echo(icmpEchoRequest, 1, 1)), pass},
			{true, ip6(devB, remote, protoICMPv6, echo(icmpEchoReply, 1, 1)), pass},
			{false, ip6(remote, devC, protoTCP, tcpSeg(50000, 8080, tcpSYN)), pass},
			{false, ip6(remote, devC, protoUDP, udpDgram(50000, 9)), pass},
			{false, ip6(remote, devC, 47, make([]byte, 8)), pass}, // GRE, say
			{false, ip6(remote, devC, protoICMPv6, echo(icmpEchoRequest, 1, 1)), pass},
		}},
		{"ping", []step{
			{true, ip6(devA, remote, protoICMPv6, echo(icmpEchoRequest, 7, 1)), pass},
			{false, ip6(remote, devA, protoICMPv6, echo(icmpEchoReply, 7, 1)), pass},
			{false, ip6(remote, devA, protoICMPv6, echo(icmpEchoReply, 8, 1)), dropUnsolicited},
		}},
		{"related icmp errors pass, unrelated do not", []step{
			{true, udpA, pass},
			{false, ip6(router, devA, protoICMPv6, icmpErr(icmpPacketTooBig, udpA)), pass},
			{false, ip6(router, devA, protoICMPv6, icmpErr(icmpDstUnreach, udpA[:48])), pass}, // cut short
			{false, ip6(gwAddr, devA, protoICMPv6, icmpErr(icmpTimeExceeded, udpA)), pass},    // the gateway's kernel
			{false, ip6(router, devA, protoICMPv6, icmpErr(icmpPacketTooBig, ip6(devA, remote, protoUDP, udpDgram(5001, 53)))), dropUnsolicited},
			{false, ip6(router, devA, protoICMPv6, icmpErr(icmpPacketTooBig, ip6(devC, remote, protoUDP, udpDgram(5000, 53)))), dropICMP},
			{false, ip6(router, devA, protoICMPv6, icmpErr(icmpPacketTooBig, udpA[:44])), dropICMP},
		}},
		{"icmp errors from a device about what it was sent", []step{
			{true, ip6(devB, remote, protoICMPv6, icmpErr(icmpDstUnreach, ip6(remote, devB, protoUDP, udpDgram(1, 2)))), pass},
			{true, ip6(devB, remote, protoICMPv6, icmpErr(icmpDstUnreach, ip6(remote, devC, protoUDP, udpDgram(1, 2)))), dropICMP},
		}},
		{"other icmp types do not cross", []step{
			{true, ip6(devA, remote, protoICMPv6, icmpMsg(133, 0, make([]byte, 4))), dropICMP},   // router solicitation
			{false, ip6(remote, devA, protoICMPv6, icmpMsg(134, 0, make([]byte, 12))), dropICMP}, // router advertisement
			{false, ip6(remote, devA, protoICMPv6, icmpMsg(135, 0, make([]byte, 20))), dropICMP}, // neighbour solicitation
		}},
		{"ipv4 is refused", []step{
			{true, []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 8, 8, 8, 8, 0, 1, 0, 53, 0, 8, 0, 0}, dropIPv4},
			{false, []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 8, 8, 8, 8, 10, 0, 0, 1, 0, 53, 0, 1, 0, 8, 0, 0}, dropIPv4},
		}},
		{"destinations a device may not reach", []step{
			{true, ip6(devA, devC, protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},                  // another device
			{true, ip6(devA, "2001:db8:100:1::5", protoUDP, udpDgram(1, 2)), dropDest},              // inside another's /64
			{true, ip6(devA, "2001:db8:100:ff::1", protoUDP, udpDgram(1, 2)), dropDest},             // the prefix, unassigned
			{true, ip6(devA, gwAddr, protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},                // the gateway
			{true, ip6(devA, "2001:db8:ff::1", protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},      // Blocked
			{true, ip6(devA, "fe80::1", protoICMPv6, echo(icmpEchoRequest, 1, 1)), dropDest},        // link-local
			{true, ip6(devA, "ff02::1", protoICMPv6, echo(icmpEchoRequest, 1, 1)), dropDest},        // multicast
			{true, ip6(devA, "::1", protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},                 // loopback
			{true, ip6(devA, "::", protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},                  // unspecified
			{true, ip6(devA, "::ffff:10.0.0.1", protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},     // IPv4-mapped
			{true, ip6(devA, "fd12::1", protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},             // unique local
			{true, ip6(devA, "2001:db8:1::3", protoTCP, tcpSeg(40000, 22, tcpSYN)), pass},           // the internet
			{false, ip6(devC, devA, protoTCP, tcpSeg(22, 40000, tcpACK)), dropSource},               // device to device, in
			{false, ip6("2001:db8:100::77", devA, protoTCP, tcpSeg(22, 40000, tcpACK)), dropSource}, // from the prefix
		}},
		{"spoofed sources", []step{
			{true, ip6("2001:db8:100::11", remote, protoTCP, tcpSeg(40000, 443, tcpSYN)), dropSource}, // no device's
			{true, ip6(remote, "2001:db8:1::3", protoTCP, tcpSeg(40000, 443, tcpSYN)), dropSource},    // outside the prefix
			{true, ip6(gwAddr, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)), dropSource},             // the gateway's
		}},
		{"fragments", []step{
			{true, fragmented(ip6(devA, remote, protoUDP, udpDgram(5000, 53, make([]byte, 64)...)), 0, true, 1), pass},
			{true, fragmented(ip6(devA, remote, protoUDP, make([]byte, 16)), 72, false, 1), pass},
			{false, fragmented(ip6(remote, devA, protoUDP, udpDgram(53, 5000, make([]byte, 64)...)), 0, true, 2), pass},
			{false, fragmented(ip6(remote, devA, protoUDP, make([]byte, 16)), 72, false, 2), pass},
			{false, fragmented(ip6(remote, devA, protoUDP, make([]byte, 16)), 72, false, 3), dropUnsolicited},
			{false, fragmented(ip6(remote, devA, protoUDP, udpDgram(53, 5999, make([]byte, 64)...)), 0, true, 4), dropUnsolicited},
			{false, fragmented(ip6(remote, devA, protoUDP, make([]byte, 16)), 72, false, 4), dropUnsolicited},
		}},
		{"malformed", []step{
			{true, ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpSYN))[:50], dropMalformed},
			{false, []byte{0x60}, dropMalformed},
			{true, nil, dropMalformed},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, testPolicy(t, false), 1, tt.steps)
		})
	}
}

func TestPolicyCounters(t *testing.T) {
	p := testPolicy(t, false)
	syn := ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpSYN))
	reply := ip6(remote, devA, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK, 1, 2, 3))
	runSteps(t, p, 1, []step{
		{true, syn, pass},
		{false, reply, pass},
		{false, ip6(remote, devA, protoTCP, tcpSeg(443, 40001, tcpACK)), dropUnsolicited},
		{true, ip6(devA, devC, protoTCP, tcpSeg(40000, 22, tcpSYN)), dropDest},
	})
	ps := p.peers.Load().lookup(a16(devA))
	if rx, tx, d := ps.ctr.rx.Load(), ps.ctr.tx.Load(), ps.ctr.dropped.Load(); rx != int64(len(syn)) || tx != int64(len(reply)) || d != 2 {
		t.Errorf("rx %d tx %d dropped %d, want %d %d 2", rx, tx, d, len(syn), len(reply))
	}
}

func TestPolicyRevokedAndOpenChanged(t *testing.T) {
	p := testPolicy(t, false)
	now := int64(1)
	runSteps(t, p, now, []step{
		{true, ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)), pass},
		{false, ip6(remote, devB, protoTCP, tcpSeg(50000, 22, tcpSYN)), pass},
		{true, ip6(devB, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)), pass},
	})
	// B's tcp/22 closes: the flow opened to it goes, the one B opened stays.
	set := p.peers.Load()
	b := *set.byAddr[netip.MustParsePrefix("2001:db8:100:1::/64")]
	b.open, _ = parseOpen([]string{"udp/5000"})
	if n := p.flows.purgeInbound(keyB, b.open.allows); n != 1 {
		t.Errorf("purgeInbound removed %d flows, want 1", n)
	}
	a := set.byAddr[netip.MustParsePrefix(devA+"/128")]
	p.peers.Store(newPeerSet([]*peerState{a, &b}))
	runSteps(t, p, now, []step{
		{false, ip6(remote, devB, protoTCP, tcpSeg(50000, 22, tcpACK)), dropUnsolicited},
		{false, ip6(remote, devB, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK)), pass},
		{false, ip6(remote, devC, protoTCP, tcpSeg(50000, 22, tcpSYN)), dropNoPeer}, // C is gone
		{true, ip6(devC, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)), dropSource},
	})
	// A is revoked: its flows go with it.
	p.peers.Store(newPeerSet([]*peerState{&b}))
	if n := p.flows.purgeOwner(keyA); n != 1 {
		t.Errorf("purgeOwner removed %d flows, want 1", n)
	}
	runSteps(t, p, now, []step{
		{false, ip6(remote, devA, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK)), dropNoPeer},
		{true, ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpACK)), dropSource},
	})
	if n := p.flows.ownerLen(keyA); n != 0 {
		t.Errorf("A still has %d flows", n)
	}
}

func TestPolicyNAT66(t *testing.T) {
	p := testPolicy(t, true)
	const now = 1
	check := func(b []byte, want verdict, src, dst string, sport, dport uint16) {
		t.Helper()
		var f func(int64, []byte) verdict
		var pk packet
		parse(b, &pk, false)
		if p.prefix.Contains(netip.AddrFrom16(pk.src)) {
			f = p.out
		} else {
			f = p.in
		}
		if got := f(now, b); got != want {
			t.Fatalf("verdict %v, want %v", got, want)
		}
		if want != pass {
			return
		}
		if !checksumOK(b) {
			t.Errorf("checksum wrong after NAT")
		}
		parse(b, &pk, false)
		if gs, gd := netip.AddrFrom16(pk.src).String(), netip.AddrFrom16(pk.dst).String(); gs != src || gd != dst || pk.sport != sport || pk.dport != dport {
			t.Errorf("rewritten to [%s]:%d -> [%s]:%d, want [%s]:%d -> [%s]:%d", gs, pk.sport, gd, pk.dport, src, sport, dst, dport)
		}
	}
	// A keeps its port; B, the same port to the same remote, gets another.
	check(withChecksum(ip6(natDevA, remote, protoTCP, tcpSeg(40000, 443, tcpSYN, 1, 2, 3))), pass, natAddr, remote, 40000, 443)
	bOut := withChecksum(ip6(natDevB, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)))
	if p.out(now, bOut) != pass || !checksumOK(bOut) {
		t.Fatal("B's SYN")
	}
	var pk packet
	parse(bOut, &pk, false)
	bPort := pk.sport
	if bPort == 40000 || netip.AddrFrom16(pk.src).String() != natAddr {
		t.Fatalf("B's flow leaves from [%s]:%d", netip.AddrFrom16(pk.src), bPort)
	}
	check(withChecksum(ip6(remote, natAddr, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK, 4, 5))), pass, remote, natDevA, 443, 40000)
	check(withChecksum(ip6(remote, natAddr, protoTCP, tcpSeg(443, bPort, tcpSYN|tcpACK))), pass, remote, natDevB, 443, 40000)
	check(withChecksum(ip6(remote, natAddr, protoTCP, tcpSeg(443, 40001, tcpACK))), dropUnsolicited, "", "", 0, 0)
	check(withChecksum(ip6(remote, natAddr, protoTCP, tcpSeg(50000, 22, tcpSYN))), dropUnsolicited, "", "", 0, 0)
	// Devices' own addresses are not reachable, not even with Open "all".
	check(withChecksum(ip6(remote, natDevB, protoTCP, tcpSeg(50000, 22, tcpSYN))), dropUnsolicited, "", "", 0, 0)

	// UDP, ping.
	check(withChecksum(ip6(natDevA, remote, protoUDP, udpDgram(5000, 53, 9))), pass, natAddr, remote, 5000, 53)
	check(withChecksum(ip6(remote, natAddr, protoUDP, udpDgram(53, 5000, 9, 9))), pass, remote, natDevA, 53, 5000)
	check(withChecksum(ip6(natDevA, remote, protoICMPv6, echo(icmpEchoRequest, 7, 1))), pass, natAddr, remote, 7, 0)
	check(withChecksum(ip6(remote, natAddr, protoICMPv6, echo(icmpEchoReply, 7, 1))), pass, remote, natDevA, 0, 7)
	check(withChecksum(ip6(remote, natAddr, protoICMPv6, echo(icmpEchoRequest, 7, 1))), dropICMP, "", "", 0, 0)

	// A packet-too-big about B's flow goes to B, the embedded packet
	// translated back.
	embedded := withChecksum(ip6(natAddr, remote, protoTCP, tcpSeg(bPort, 443, tcpACK, make([]byte, 100)...)))
	ptb := withChecksum(ip6(router, natAddr, protoICMPv6, icmpErr(icmpPacketTooBig, embedded)))
	check(ptb, pass, router, natDevB, 0, 0)
	var ip packet
	if !parse(ptb[48:], &ip, true) || netip.AddrFrom16(ip.src).String() != natDevB || ip.sport != 40000 {
		t.Errorf("embedded packet is [%s]:%d after NAT, want [%s]:40000", netip.AddrFrom16(ip.src), ip.sport, natDevB)
	}
	unrelated := withChecksum(ip6(natAddr, remote, protoTCP, tcpSeg(1234, 443, tcpACK)))
	check(withChecksum(ip6(router, natAddr, protoICMPv6, icmpErr(icmpPacketTooBig, unrelated))), dropUnsolicited, "", "", 0, 0)

	// A's port unreachable about a reply it was sent leaves translated.
	in := ip6(natAddr, natDevA, protoUDP, udpDgram(53, 5000)) // as A got it: from remote really
	copy(in[8:24], func() []byte { a := a16(remote); return a[:] }())
	unreach := withChecksum(ip6(natDevA, remote, protoICMPv6, icmpErr(icmpDstUnreach, in)))
	check(unreach, pass, natAddr, remote, 0, 0)

	// Fragments follow their first.
	first := fragmented(withChecksum(ip6(remote, natAddr, protoUDP, udpDgram(53, 5000, make([]byte, 64)...))), 0, true, 77)
	if v := p.in(now, first); v != pass {
		t.Fatalf("first fragment: %v", v)
	}
	later := fragmented(ip6(remote, natAddr, protoUDP, make([]byte, 16)), 72, false, 77)
	if v := p.in(now, later); v != pass {
		t.Fatalf("later fragment: %v", v)
	}
	if parse(later, &pk, false); netip.AddrFrom16(pk.dst).String() != natDevA {
		t.Errorf("later fragment goes to %s", netip.AddrFrom16(pk.dst))
	}
	// Destinations are checked as in routed mode; the NAT address itself
	// is one a device may not reach.
	check(withChecksum(ip6(natDevA, natDevB, protoTCP, tcpSeg(1, 2, tcpSYN))), dropDest, "", "", 0, 0)
	check(withChecksum(ip6(natDevA, natAddr, protoTCP, tcpSeg(1, 2, tcpSYN))), dropDest, "", "", 0, 0)
}

func TestFlowTableBounds(t *testing.T) {
	tb := newFlowTable(4, 2, false)
	key := func(port uint16) flowKey {
		return flowKey{dev: a16(devA), remote: a16(remote), devPort: port, remotePort: 53, proto: protoUDP}
	}
	for i := range uint16(3) {
		tb.outbound(int64(i), keyA, key(i), 0, true)
	}
	if n := tb.ownerLen(keyA); n != 2 {
		t.Fatalf("A has %d flows, want 2 (its bound)", n)
	}
	if _, ok := tb.has(10, key(0)); ok {
		t.Error("A's least recently used flow was kept")
	}
	// Refreshing flow 1 makes flow 2 the least recently used.
	tb.outbound(11, keyA, key(1), 0, true)
	tb.outbound(12, keyA, key(3), 0, true)
	if _, ok := tb.has(13, key(1)); !ok {
		t.Error("the refreshed flow was evicted")
	}
	if _, ok := tb.has(13, key(2)); ok {
		t.Error("the least recently used flow was kept")
	}
	// Other devices fill the table: the least recently used flows go.
	for i, k := range []Key{keyB, keyC, {4}} {
		fk := key(100)
		fk.dev[15] = byte(i)
		tb.outbound(int64(20+i), k, fk, 0, true)
	}
	if n := tb.len(); n != 4 {
		t.Fatalf("table has %d flows, want 4 (its bound)", n)
	}
	if n := tb.ownerLen(keyA); n != 1 {
		t.Errorf("A has %d flows, want 1", n)
	}
	// A device's flows never push out more than its own when it is at its bound.
	for i := range uint16(50) {
		tb.outbound(int64(30+i), keyB, flowKey{dev: a16(devB), remote: a16(remote), devPort: 1000 + i, proto: protoUDP}, 0, true)
	}
	if n := tb.ownerLen(keyB); n != 2 {
		t.Errorf("B has %d flows, want 2", n)
	}
	if n := tb.len(); n > 4 {
		t.Errorf("table has %d flows, over its bound", n)
	}
}

func TestFlowTableExpiry(t *testing.T) {
	tb := newFlowTable(100, 100, false)
	s := int64(time.Second)
	udp := flowKey{dev: a16(devA), remote: a16(remote), devPort: 5000, remotePort: 53, proto: protoUDP}
	tcp := flowKey{dev: a16(devA), remote: a16(remote), devPort: 40000, remotePort: 443, proto: protoTCP}
	icmp := flowKey{dev: a16(devA), remote: a16(remote), devPort: 7, proto: protoICMPv6}
	tb.outbound(0, keyA, udp, 0, true)
	tb.outbound(0, keyA, tcp, tcpSYN, true)
	tb.outbound(0, keyA, icmp, 0, true)
	if !tb.inbound(29*s, icmp, 0) {
		t.Error("echo reply at 29 s")
	}
	if tb.inbound(29*s+int64(icmpTimeout)+1, icmp, 0) {
		t.Error("echo reply after 30 s idle")
	}
	if !tb.inbound(59*s, tcp, tcpSYN|tcpACK) { // established now: 2 h
		t.Error("SYN-ACK at 59 s")
	}
	if !tb.inbound(59*s+int64(tcpEstablishedTimeout)-1, tcp, tcpACK) {
		t.Error("established flow idle just under 2 h")
	}
	if tb.inbound(59*s+2*int64(tcpEstablishedTimeout)+1, tcp, tcpACK) {
		t.Error("established flow idle over 2 h")
	}
	if tb.inbound(61*s, udp, 0) {
		t.Error("udp reply after 60 s with no answer")
	}

	// A half-open TCP flow lasts 60 s, a closed one 10 s.
	tb.outbound(1000*s, keyA, tcp, tcpSYN, true)
	if tb.inbound(1000*s+int64(tcpNewTimeout)+1, tcp, tcpACK) {
		t.Error("half-open flow after 60 s")
	}
	tb.outbound(2000*s, keyA, tcp, tcpSYN, true)
	tb.inbound(2000*s, tcp, tcpSYN|tcpACK)
	tb.outbound(2000*s, keyA, tcp, tcpRST, true)
	if tb.inbound(2011*s, tcp, tcpACK) {
		t.Error("flow 11 s after a RST")
	}
	// An outbound RST makes no flow.
	if _, ok := tb.outbound(3000*s, keyA, tcp, tcpRST, false); ok {
		t.Error("RST made a flow")
	}

	// The sweep removes what has expired.
	for i := range uint16(10) {
		k := udp
		k.devPort = i
		tb.outbound(4000*s, keyA, k, 0, true)
	}
	tb.outbound(4100*s, keyA, tcp, tcpSYN, true)
	if n := tb.sweep(4100*s + int64(udpNewTimeout) - 1); n != 10 {
		t.Errorf("sweep removed %d, want 10", n)
	}
	if n := tb.len(); n != 1 {
		t.Errorf("%d flows left, want 1", n)
	}
}

func TestValidateOpen(t *testing.T) {
	for _, s := range []string{"tcp/22", "udp/51820", "tcp/8000-8100", "udp/1-65535", "icmp", "all"} {
		if err := ValidateOpen(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", "tcp", "tcp/", "tcp/0", "tcp/65536", "tcp/10-5", "sctp/1", "TCP/22", "tcp/22/", "tcp/x", "tcp/-5", "ALL"} {
		err := ValidateOpen(s)
		if err == nil || !strings.Contains(err.Error(), `"tcp/PORT"`) {
			t.Errorf("%q: %v, want an error naming the accepted forms", s, err)
		}
	}
}
