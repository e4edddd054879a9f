package wg4to6

import "encoding/binary"

// IP protocol numbers (next-header values) the policy looks at.
const (
	protoHopByHop = 0
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoDstOpts  = 60
)

// ICMPv6 types the policy passes.
const (
	icmpDstUnreach   = 1
	icmpPacketTooBig = 2
	icmpTimeExceeded = 3
	icmpParamProblem = 4
	icmpEchoRequest  = 128
	icmpEchoReply    = 129
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

const (
	ipv6HeaderLen = 40
	maxExtHeaders = 8 // more than any sane packet carries
)

// packet is what the policy needs to know of one IPv6 packet; parse fills
// it from the bytes without copying them.
type packet struct {
	src, dst [16]byte
	length   int   // header and payload, as the header says (<= len of the buffer)
	proto    uint8 // the upper-layer protocol, after the extension headers
	// l4 is the offset of the upper-layer header; 0 when the packet has
	// none (a fragment other than the first).
	l4 int
	// sport and dport are the TCP or UDP ports. For an ICMPv6 echo request
	// sport is its identifier, for an echo reply dport is: so a request and
	// its reply give the same flow key, whichever side sent the request.
	sport, dport uint16
	tcpFlags     uint8
	icmpType     uint8
	frag         bool   // has a fragment header
	fragID       uint32 // its identification
	fragMore     bool   // more fragments follow
}

// firstFragment reports whether p is the first of several fragments.
func (p *packet) firstFragment() bool { return p.frag && p.l4 != 0 && p.fragMore }

// laterFragment reports whether p is a fragment other than the first.
func (p *packet) laterFragment() bool { return p.l4 == 0 }

// icmpError reports whether p is an ICMPv6 error that carries (part of) the
// packet that caused it.
func (p *packet) icmpError() bool {
	return p.proto == protoICMPv6 && p.l4 != 0 && p.icmpType >= icmpDstUnreach && p.icmpType <= icmpParamProblem
}

// parse fills p from the IPv6 packet b and reports whether b is well formed
// enough to decide on: a complete header, an extension header chain that
// ends inside the packet, and, in a first or only fragment, the whole
// TCP, UDP or ICMPv6 header (RFC 7112). embedded parses the packet that an
// ICMPv6 error carries: it may be cut short after the first 8 bytes of its
// upper-layer header, so only those need to be there.
func parse(b []byte, p *packet, embedded bool) bool {
	*p = packet{}
	if len(b) < ipv6HeaderLen || b[0]>>4 != 6 {
		return false
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	if embedded {
		p.length = min(len(b), ipv6HeaderLen+plen)
	} else {
		if plen == 0 || ipv6HeaderLen+plen > len(b) {
			return false // jumbograms (payload length 0) are not for us either
		}
		p.length = ipv6HeaderLen + plen
	}
	b = b[:p.length]
	copy(p.src[:], b[8:24])
	copy(p.dst[:], b[24:40])

	nh, off := b[6], ipv6HeaderLen
	for i := 0; ; i++ {
		if i > maxExtHeaders {
			return false
		}
		var hlen int
		switch nh {
		case protoHopByHop, protoRouting, protoDstOpts:
			if off+8 > len(b) {
				return false
			}
			hlen = (int(b[off+1]) + 1) * 8
		case protoAH:
			if off+8 > len(b) {
				return false
			}
			hlen = (int(b[off+1]) + 2) * 4
		case protoFragment:
			if off+8 > len(b) || p.frag {
				return false
			}
			p.frag = true
			fo := binary.BigEndian.Uint16(b[off+2 : off+4])
			p.fragMore = fo&1 != 0
			p.fragID = binary.BigEndian.Uint32(b[off+4 : off+8])
			if fo&^7 != 0 {
				// A later fragment: the upper-layer header is in the first.
				p.proto = b[off]
				return true
			}
			hlen = 8
		default:
			p.proto = nh
			p.l4 = off
			return parseL4(b, p, embedded)
		}
		nh = b[off]
		off += hlen
		if off > len(b) {
			return false
		}
	}
}

// parseL4 reads the upper-layer header at p.l4.
func parseL4(b []byte, p *packet, embedded bool) bool {
	h := b[p.l4:]
	switch p.proto {
	case protoTCP:
		need := 20
		if embedded {
			need = 8
		}
		if len(h) < need {
			return false
		}
		p.sport = binary.BigEndian.Uint16(h[0:2])
		p.dport = binary.BigEndian.Uint16(h[2:4])
		if !embedded {
			if int(h[12]>>4)*4 < 20 {
				return false
			}
			p.tcpFlags = h[13]
		}
	case protoUDP:
		if len(h) < 8 {
			return false
		}
		p.sport = binary.BigEndian.Uint16(h[0:2])
		p.dport = binary.BigEndian.Uint16(h[2:4])
	case protoICMPv6:
		if len(h) < 8 {
			return false
		}
		p.icmpType = h[0]
		id := binary.BigEndian.Uint16(h[4:6])
		switch p.icmpType {
		case icmpEchoRequest:
			p.sport = id
		case icmpEchoReply:
			p.dport = id
		}
	}
	return true
}

// portOffsets returns where p's source and destination "ports" are (as
// parse reads them: TCP/UDP ports, the ICMPv6 echo identifier), -1 where
// there is none.
func (p *packet) portOffsets() (src, dst int) {
	if p.l4 == 0 {
		return -1, -1
	}
	switch p.proto {
	case protoTCP, protoUDP:
		return p.l4, p.l4 + 2
	case protoICMPv6:
		switch p.icmpType {
		case icmpEchoRequest:
			return p.l4 + 4, -1
		case icmpEchoReply:
			return -1, p.l4 + 4
		}
	}
	return -1, -1
}

// csumOffset returns where p's upper-layer checksum is, -1 when it has none
// (or it is not in this fragment).
func (p *packet) csumOffset() int {
	if p.l4 == 0 {
		return -1
	}
	switch p.proto {
	case protoTCP:
		return p.l4 + 16
	case protoUDP:
		return p.l4 + 6
	case protoICMPv6:
		return p.l4 + 2
	}
	return -1
}

// csumAdjust returns the Internet checksum sum updated for the 16-bit
// aligned bytes old becoming new (RFC 1624, eqn. 3); len(old) == len(new),
// even.
func csumAdjust(sum uint16, old, new []byte) uint16 {
	acc := uint32(^sum)
	for i := 0; i+1 < len(old); i += 2 {
		acc += uint32(^binary.BigEndian.Uint16(old[i:]))
		acc += uint32(binary.BigEndian.Uint16(new[i:]))
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// setField overwrites the bytes at b[off:] with val and keeps the checksum
// at b[csum:] right (csum -1: no checksum). A UDP checksum of 0 (none) is
// left alone.
func setField(b []byte, off int, val []byte, csum int, udp bool) {
	if csum >= 0 {
		old := binary.BigEndian.Uint16(b[csum:])
		if !(udp && old == 0) {
			n := csumAdjust(old, b[off:off+len(val)], val)
			if udp && n == 0 {
				n = 0xffff
			}
			binary.BigEndian.PutUint16(b[csum:], n)
		}
	}
	copy(b[off:], val)
}

// setAddrPort rewrites p's source (src) or destination address to addr and,
// where p has one, that side's port to port, keeping the checksum right.
func setAddrPort(b []byte, p *packet, src bool, addr [16]byte, port uint16) {
	csum := p.csumOffset()
	udp := p.proto == protoUDP
	aoff := 24
	poff, dpoff := p.portOffsets()
	if src {
		aoff = 8
		p.src = addr
	} else {
		poff = dpoff
		p.dst = addr
	}
	setField(b, aoff, addr[:], csum, udp)
	if poff >= 0 {
		var pb [2]byte
		binary.BigEndian.PutUint16(pb[:], port)
		setField(b, poff, pb[:], csum, udp)
		if src {
			p.sport = port
		} else {
			p.dport = port
		}
	}
}

// icmpChecksum computes the ICMPv6 checksum of the message b[l4:end] of the
// IPv6 packet b, with its checksum field taken as zero.
func icmpChecksum(b []byte, l4, end int) uint16 {
	var acc uint32
	add := func(s []byte) {
		for i := 0; i+1 < len(s); i += 2 {
			acc += uint32(binary.BigEndian.Uint16(s[i:]))
		}
		if len(s)%2 == 1 {
			acc += uint32(s[len(s)-1]) << 8
		}
	}
	add(b[8:40]) // source and destination
	n := uint32(end - l4)
	acc += n>>16 + n&0xffff + protoICMPv6
	add(b[l4 : l4+2])
	add(b[l4+4 : end])
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}
