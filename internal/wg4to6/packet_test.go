package wg4to6

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// Packet builders for the tests: real IPv6 packets with right checksums.

func a16(s string) [16]byte { return netip.MustParseAddr(s).As16() }

// ip6 returns an IPv6 packet from src to dst whose payload is the headers
// and data in parts, the first of which has protocol proto (an extension
// header's next-header byte is set by its builder).
func ip6(src, dst string, proto uint8, payload []byte) []byte {
	b := make([]byte, ipv6HeaderLen+len(payload))
	b[0] = 6 << 4
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = proto
	b[7] = 64
	s, d := a16(src), a16(dst)
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], payload)
	return b
}

func tcpSeg(sport, dport uint16, flags uint8, data ...byte) []byte {
	h := make([]byte, 20+len(data))
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = 5 << 4
	h[13] = flags
	copy(h[20:], data)
	return h
}

func udpDgram(sport, dport uint16, data ...byte) []byte {
	h := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(len(h)))
	copy(h[8:], data)
	return h
}

func icmpMsg(typ, code uint8, rest []byte) []byte {
	return append([]byte{typ, code, 0, 0}, rest...)
}

func echo(typ uint8, id, seq uint16) []byte {
	r := make([]byte, 4)
	binary.BigEndian.PutUint16(r[0:], id)
	binary.BigEndian.PutUint16(r[2:], seq)
	return icmpMsg(typ, 0, r)
}

// icmpErr is an ICMPv6 error of type typ carrying the packet inner.
func icmpErr(typ uint8, inner []byte) []byte {
	r := make([]byte, 4, 4+len(inner))
	if typ == icmpPacketTooBig {
		binary.BigEndian.PutUint32(r, 1280)
	}
	return icmpMsg(typ, 0, append(r, inner...))
}

// withChecksum fills in the upper-layer checksum of packet b (no extension
// headers) and returns b.
func withChecksum(b []byte) []byte {
	off := csumField(b)
	if off < 0 {
		return b
	}
	binary.BigEndian.PutUint16(b[off:], 0)
	binary.BigEndian.PutUint16(b[off:], ^l4Sum(b))
	return b
}

// csumField returns the offset of b's checksum (no extension headers).
func csumField(b []byte) int {
	switch b[6] {
	case protoTCP:
		return 40 + 16
	case protoUDP:
		return 40 + 6
	case protoICMPv6:
		return 40 + 2
	}
	return -1
}

// l4Sum is the ones' complement sum of b's pseudo-header and payload.
func l4Sum(b []byte) uint16 {
	var acc uint32
	add := func(s []byte) {
		for i := 0; i+1 < len(s); i += 2 {
			acc += uint32(binary.BigEndian.Uint16(s[i:]))
		}
		if len(s)%2 == 1 {
			acc += uint32(s[len(s)-1]) << 8
		}
	}
	add(b[8:40])
	acc += uint32(len(b)-40) + uint32(b[6])
	add(b[40:])
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// checksumOK reports whether b's upper-layer checksum is right.
func checksumOK(b []byte) bool { return csumField(b) < 0 || l4Sum(b) == 0xffff }

// fragmented returns b as a fragment: a fragment header after the fixed
// header, with offset (in bytes, a multiple of 8), more and id.
func fragmented(b []byte, offset int, more bool, id uint32) []byte {
	fh := make([]byte, 8)
	fh[0] = b[6]
	fo := uint16(offset)
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], fo)
	binary.BigEndian.PutUint32(fh[4:], id)
	out := append(append(append([]byte{}, b[:40]...), fh...), b[40:]...)
	out[6] = protoFragment
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}

func TestParse(t *testing.T) {
	const dev, remote = "2001:db8:100::10", "2001:db8:1::2"
	tcp := ip6(dev, remote, protoTCP, tcpSeg(40000, 443, tcpSYN))
	tests := []struct {
		name     string
		b        []byte
		embedded bool
		ok       bool
		check    func(p *packet) bool
	}{
		{"tcp", tcp, false, true, func(p *packet) bool {
			return p.proto == protoTCP && p.sport == 40000 && p.dport == 443 && p.tcpFlags == tcpSYN && p.l4 == 40 && p.length == len(tcp)
		}},
		{"udp", ip6(dev, remote, protoUDP, udpDgram(5353, 53)), false, true, func(p *packet) bool {
			return p.proto == protoUDP && p.sport == 5353 && p.dport == 53
		}},
		{"echo request", ip6(dev, remote, protoICMPv6, echo(icmpEchoRequest, 7, 1)), false, true, func(p *packet) bool {
			return p.icmpType == icmpEchoRequest && p.sport == 7 && p.dport == 0
		}},
		{"echo reply", ip6(remote, dev, protoICMPv6, echo(icmpEchoReply, 7, 1)), false, true, func(p *packet) bool {
			return p.icmpType == icmpEchoReply && p.sport == 0 && p.dport == 7
		}},
		{"first fragment", fragmented(ip6(dev, remote, protoUDP, udpDgram(1, 2, make([]byte, 64)...)), 0, true, 9), false, true, func(p *packet) bool {
			return p.frag && p.fragMore && p.fragID == 9 && p.firstFragment() && p.l4 == 48 && p.sport == 1
		}},
		{"later fragment", fragmented(ip6(dev, remote, protoUDP, make([]byte, 16)), 64, false, 9), false, true, func(p *packet) bool {
			return p.laterFragment() && p.proto == protoUDP && p.fragID == 9
		}},
		{"ipv4", []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}, false, false, nil},
		{"short header", tcp[:39], false, false, nil},
		{"payload cut", tcp[:50], false, false, nil},
		{"tcp header cut in first fragment", ip6(dev, remote, protoTCP, tcpSeg(1, 2, 0)[:12]), false, false, nil},
		{"embedded tcp cut after 8 bytes", ip6(dev, remote, protoTCP, tcpSeg(1, 2, 0))[:48], true, true, func(p *packet) bool {
			return p.sport == 1 && p.dport == 2
		}},
		{"extension header past the end", ip6(dev, remote, protoDstOpts, []byte{protoTCP, 5, 0, 0, 0, 0, 0, 0}), false, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p packet
			ok := parse(tt.b, &p, tt.embedded)
			if ok != tt.ok {
				t.Fatalf("parse = %v, want %v (%+v)", ok, tt.ok, p)
			}
			if ok && tt.check != nil && !tt.check(&p) {
				t.Errorf("parsed %+v", p)
			}
		})
	}
}

func TestSetAddrPortKeepsChecksum(t *testing.T) {
	nat := a16("2001:db8:2::46")
	for _, b := range [][]byte{
		ip6("fd00:46::10", "2001:db8:1::2", protoTCP, tcpSeg(40000, 443, tcpSYN, 1, 2, 3)),
		ip6("fd00:46::10", "2001:db8:1::2", protoUDP, udpDgram(40000, 53, 1, 2, 3)),
		ip6("fd00:46::10", "2001:db8:1::2", protoICMPv6, echo(icmpEchoRequest, 7, 1)),
	} {
		withChecksum(b)
		var p packet
		if !parse(b, &p, false) {
			t.Fatal("parse")
		}
		setAddrPort(b, &p, true, nat, 61000)
		if !checksumOK(b) {
			t.Errorf("proto %d: checksum wrong after rewriting", p.proto)
		}
		var q packet
		parse(b, &q, false)
		if q.src != nat || q.sport != 61000 {
			t.Errorf("proto %d: rewritten to %x port %d", p.proto, q.src, q.sport)
		}
	}
}

// FuzzParse feeds arbitrary bytes to the parser and to the policy in both
// directions (packets come from strangers on both sides): nothing may
// panic, and what passes must parse.
func FuzzParse(f *testing.F) {
	const dev, remote = "2001:db8:100::10", "2001:db8:1::2"
	inner := ip6(dev, remote, protoUDP, udpDgram(5000, 53))
	for _, b := range [][]byte{
		ip6(dev, remote, protoTCP, tcpSeg(40000, 443, tcpSYN)),
		ip6(remote, dev, protoTCP, tcpSeg(443, 40000, tcpSYN|tcpACK)),
		ip6(dev, remote, protoUDP, udpDgram(5000, 53)),
		ip6(remote, dev, protoICMPv6, icmpErr(icmpPacketTooBig, inner)),
		ip6(remote, "2001:db8:2::46", protoICMPv6, icmpErr(icmpDstUnreach, ip6("2001:db8:2::46", remote, protoUDP, udpDgram(5000, 53)))),
		fragmented(ip6(dev, remote, protoUDP, udpDgram(1, 2, make([]byte, 64)...)), 0, true, 9),
		fragmented(ip6(remote, dev, protoUDP, make([]byte, 16)), 64, false, 9),
		ip6(dev, remote, protoHopByHop, []byte{protoICMPv6, 0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 0, 1, 0, 1}),
		{0x45, 0, 0, 20},
	} {
		f.Add(b)
	}
	routed := testPolicy(f, false)
	natted := testPolicy(f, true)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p packet
		parse(b, &p, false)
		parse(b, &p, true)
		for _, pol := range []*policy{routed, natted} {
			for _, dir := range []func(int64, []byte) verdict{pol.out, pol.in} {
				c := append([]byte(nil), b...)
				if dir(1, c) == pass && !parse(c, &p, false) {
					t.Fatalf("passed a packet that does not parse: %x", c)
				}
			}
		}
	})
}
