// Package netpolicy decides which addresses the gateway may dial for direct
// upstreams (the SSRF guard: only networks the operator allowed with
// --upstream-allow, never its own loopback, link-local, metadata or own
// addresses unless listed explicitly) and dials them through a checked dialer.
package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// ErrForbidden is wrapped by every refusal of Check, CheckUpstream, the
// Dialer and DialUpstream. A refused address stays refused until the
// operator changes --upstream-allow, so callers should not retry it.
var ErrForbidden = errors.New("address forbidden by the upstream network policy")

// forbiddenError is a refusal: its message says what the address is and
// what to do; errors.Is(err, ErrForbidden) holds.
type forbiddenError struct{ msg string }

func (e *forbiddenError) Error() string        { return e.msg }
func (e *forbiddenError) Is(target error) bool { return target == ErrForbidden }

func forbidden(format string, args ...any) error {
	return &forbiddenError{msg: fmt.Sprintf(format, args...)}
}

// ownRefresh is how long the host's interface addresses are cached when
// New is given no own function.
const ownRefresh = 30 * time.Second

// Policy is the set of networks the gateway may dial for direct upstreams.
// It is immutable after New and safe for concurrent use.
type Policy struct {
	allow []netip.Prefix      // masked, IPv4 prefixes unmapped; read-only
	own   func() []netip.Addr // the gateway's own addresses; never nil

	// The cache of the host's interface addresses, used when New got no
	// own function.
	mu     sync.Mutex
	now    func() time.Time           // the clock; tests replace it
	lookup func() ([]net.Addr, error) // net.InterfaceAddrs; tests replace it
	ownAt  time.Time                  // guarded by mu: when ownIPs was looked up
	ownIPs []netip.Addr               // guarded by mu
}

// New returns a policy that allows dialling the addresses inside allow,
// subject to the rules of Check. An empty allow list allows nothing.
// own returns the gateway's own addresses (its interface addresses and
// configured public IPs) and is called on every check, so it should be
// cheap; nil means the host's interface addresses from net.InterfaceAddrs,
// cached and looked up again at most every 30 s. Invalid prefixes are
// ignored; the others are masked.
func New(allow []netip.Prefix, own func() []netip.Addr) *Policy {
	p := &Policy{now: time.Now, lookup: net.InterfaceAddrs}
	for _, pfx := range allow {
		if pfx.IsValid() {
			p.allow = append(p.allow, normalize(pfx))
		}
	}
	p.own = own
	if own == nil {
		p.own = p.interfaceAddrs
	}
	return p
}

// normalize masks pfx and turns an IPv4-mapped IPv6 prefix of at least 96
// bits into the IPv4 prefix, since Check unmaps addresses first.
func normalize(pfx netip.Prefix) netip.Prefix {
	a := pfx.Addr().WithZone("")
	if a.Is4In6() && pfx.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), pfx.Bits()-96).Masked()
	}
	return netip.PrefixFrom(a, pfx.Bits()).Masked()
}

// ParseAllow parses --upstream-allow values: CIDRs such as 2001:db8::/32
// or 10.0.0.0/8, or bare IP addresses (a single address, /32 or /128).
// Prefixes are masked (10.1.2.3/8 is 10.0.0.0/8).
func ParseAllow(specs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(specs))
	for _, s := range specs {
		t := strings.TrimSpace(s)
		var pfx netip.Prefix
		var err error
		if strings.Contains(t, "/") {
			pfx, err = netip.ParsePrefix(t)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(t); err == nil {
				if a.Zone() != "" {
					err = errors.New("zone")
				}
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return nil, fmt.Errorf("--upstream-allow: %q is not a CIDR such as 2001:db8::/32 or 10.0.0.0/8", s)
		}
		out = append(out, normalize(pfx))
	}
	return out, nil
}

// NewWithPublic is New whose own addresses are the host's interface
// addresses (cached as with New's default) plus public, the gateway's
// configured public addresses, which behind 1:1 NAT are on no interface.
func NewWithPublic(allow []netip.Prefix, public []netip.Addr) *Policy {
	p := New(allow, nil)
	if len(public) > 0 {
		pub := append([]netip.Addr(nil), public...)
		p.own = func() []netip.Addr {
			return append(append(make([]netip.Addr, 0, 8), p.interfaceAddrs()...), pub...)
		}
	}
	return p
}

// interfaceAddrs is the default own function: the host's interface
// addresses, cached for ownRefresh. A failed lookup keeps the previous list.
func (p *Policy) interfaceAddrs() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if !p.ownAt.IsZero() && now.Sub(p.ownAt) < ownRefresh && now.Sub(p.ownAt) >= 0 {
		return p.ownIPs
	}
	p.ownAt = now
	addrs, err := p.lookup()
	if err != nil {
		return p.ownIPs
	}
	ips := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		}
		if x, ok := netip.AddrFromSlice(ip); ok {
			ips = append(ips, x.Unmap())
		}
	}
	p.ownIPs = ips
	return ips
}

// rangeInfo is a range of addresses with a name for messages.
type rangeInfo struct {
	pfx  netip.Prefix
	what string
}

// embedding is an IPv6 range that carries an IPv4 address at a bit offset.
type embedding struct {
	pfx  netip.Prefix
	name string
	off  int // bit offset of the IPv4 address; 0 when it cannot be read plainly
}

// The IPv6 ranges that carry IPv4 addresses. Whole ranges are sensitive:
// an address inside one is dialled only when an allowed prefix containing
// it lies inside the range (--upstream-allow 64:ff9b::/96 allows NAT64,
// ::/0 does not), because a translator or relay would take the connection
// on to an IPv4 address the policy did not see. Where the IPv4 address can
// be read (well-known NAT64 prefix, 6to4), its classes carry over: an
// embedded never-dialled IPv4 address is never dialled, and an embedded
// loopback or link-local address needs a prefix inside its image (such as
// 64:ff9b::7f00:0/104). Teredo obfuscates its client address, and the
// local-use NAT64 prefix (RFC 8215) places it by the operator's choice, so
// those ranges are sensitive only as a whole. IPv4-mapped addresses
// (::ffff:0:0/96) are unmapped before any check and never reach here.
var embeddings = []embedding{
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64 (64:ff9b::/96)", 96},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)", 0},
	{netip.MustParsePrefix("2002::/16"), "6to4 (2002::/16)", 16},
	{netip.MustParsePrefix("2001::/32"), "Teredo (2001::/32)", 0},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible IPv6 (::/96, deprecated)", 0},
}

// IPv4 ranges never dialled, besides multicast (checked with IsMulticast).
var neverV4 = []rangeInfo{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified (0.0.0.0/8, this host)"},
	{netip.MustParsePrefix("255.255.255.255/32"), "the IPv4 broadcast address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
}

// Ranges dialled only when an allowed prefix containing the address lies
// inside them. The cloud metadata address is a range of its own, so
// allowing 169.254.0.0/16 does not allow 169.254.169.254.
var sensitiveV4 = []rangeInfo{
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("169.254.169.254/32"), "the cloud metadata address"},
}

var sensitiveV6 = []rangeInfo{
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "the cloud metadata address"},
}

// never and sensitive are built once from the tables above, with the
// images of the IPv4 ranges in the embedding ranges that have an offset.
var never, sensitive = buildRanges()

func buildRanges() (nv, sens []rangeInfo) {
	nv = append(nv, neverV4...)
	sens = append(sens, sensitiveV4...)
	sens = append(sens, sensitiveV6...)
	for _, e := range embeddings {
		sens = append(sens, rangeInfo{e.pfx, "in " + e.name})
		if e.off == 0 {
			continue
		}
		for _, r := range neverV4 {
			nv = append(nv, rangeInfo{image(e, r.pfx), fmt.Sprintf("%s embedded in %s", r.what, e.name)})
		}
		for _, r := range sensitiveV4 {
			sens = append(sens, rangeInfo{image(e, r.pfx), fmt.Sprintf("%s (%s) embedded in %s", r.what, r.pfx, e.name)})
		}
	}
	return nv, sens
}

// image is the IPv6 prefix of the addresses of e that embed an address of
// the IPv4 prefix v4.
func image(e embedding, v4 netip.Prefix) netip.Prefix {
	b := e.pfx.Addr().As16()
	a4 := v4.Addr().As4()
	for i := 0; i < 32; i++ {
		if a4[i/8]&(0x80>>(i%8)) != 0 {
			bit := e.off + i
			b[bit/8] |= 0x80 >> (bit % 8)
		}
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), e.off+v4.Bits())
}

// embedded returns the IPv4 address that a carries through e.
func embedded(e embedding, a netip.Addr) netip.Addr {
	b := a.As16()
	var v [4]byte
	for i := 0; i < 32; i++ {
		bit := e.off + i
		if b[bit/8]&(0x80>>(bit%8)) != 0 {
			v[i/8] |= 0x80 >> (i % 8)
		}
	}
	return netip.AddrFrom4(v)
}

// within reports whether prefix inner lies entirely inside outer.
func within(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

// Check reports whether a may be dialled: nil if so, otherwise an error
// wrapping ErrForbidden that says why and what to do. The rules, in order:
//
//   - an IPv4-mapped IPv6 address is checked as the IPv4 address, and a zone
//     is ignored;
//   - unspecified (0.0.0.0/8, ::), multicast and the IPv4 broadcast address
//     are never dialled, nor are they when embedded in NAT64 or 6to4;
//   - the address must be inside an allowed prefix (IPv4 addresses match
//     IPv4 prefixes only, so ::/0 allows no IPv4 address);
//   - a sensitive address (loopback, link-local, the cloud metadata
//     address, an IPv6 range that embeds IPv4, or one of the gateway's own
//     addresses) is dialled only when an allowed prefix that contains it
//     lies entirely inside each sensitive range that contains it: 127.0.0.0/8
//     or ::1/128 allows loopback, 0.0.0.0/0 or ::/0 does not, and an own
//     address needs its single-address prefix (/32 or /128).
func (p *Policy) Check(a netip.Addr) error {
	if !a.IsValid() {
		return forbidden("no address to check (the zero address)")
	}
	a = a.WithZone("").Unmap()
	if a.IsUnspecified() {
		return forbidden("address %s is unspecified; the gateway never dials it", a)
	}
	if a.IsMulticast() {
		return forbidden("address %s is multicast; the gateway never dials it", a)
	}
	for _, r := range never {
		if r.pfx.Contains(a) {
			return forbidden("address %s is %s; the gateway never dials it", a, r.what)
		}
	}
	if len(p.allow) == 0 {
		return forbidden("no networks are allowed for upstreams; the operator lists them with --upstream-allow")
	}
	var containing []netip.Prefix
	for _, pfx := range p.allow {
		if pfx.Contains(a) {
			containing = append(containing, pfx)
		}
	}
	if len(containing) == 0 {
		return p.outside(a)
	}

	ranges := p.sensitiveFor(a)
	if len(ranges) == 0 {
		return nil
	}
	for _, pfx := range containing {
		ok := true
		for _, r := range ranges {
			ok = ok && within(pfx, r.pfx)
		}
		if ok {
			return nil
		}
	}
	// Name the innermost range: it says most about the address.
	in := ranges[0]
	for _, r := range ranges[1:] {
		if r.pfx.Bits() > in.pfx.Bits() {
			in = r
		}
	}
	what := in.what
	for _, e := range embeddings {
		if e.off != 0 && in.pfx == e.pfx {
			what += fmt.Sprintf(", which embeds IPv4 %s", embedded(e, a))
		}
	}
	return forbidden("address %s is %s; the gateway dials it only when listed explicitly (--upstream-allow %s)",
		a, what, netip.PrefixFrom(a, a.BitLen()))
}

// sensitiveFor returns the sensitive ranges that contain a, including
// those of the gateway's own addresses (and their images in NAT64 and
// 6to4). An own address inside a fixed sensitive range (an interface's
// loopback or link-local address) is judged by that range alone, so
// --upstream-allow 127.0.0.0/8 reaches 127.0.0.1.
func (p *Policy) sensitiveFor(a netip.Addr) []rangeInfo {
	var out []rangeInfo
	for _, r := range sensitive {
		if r.pfx.Contains(a) {
			out = append(out, r)
		}
	}
	for _, o := range p.own() {
		if !o.IsValid() {
			continue
		}
		o = o.WithZone("").Unmap()
		if o.IsLoopback() || o.IsLinkLocalUnicast() || o.IsUnspecified() || o.IsMulticast() {
			continue
		}
		op := netip.PrefixFrom(o, o.BitLen())
		if op.Contains(a) {
			out = append(out, rangeInfo{op, "one of the gateway's own addresses"})
		}
		if o.Is4() && a.Is6() {
			for _, e := range embeddings {
				if e.off == 0 {
					continue
				}
				if img := image(e, op); img.Contains(a) {
					out = append(out, rangeInfo{img, fmt.Sprintf("the gateway's own address %s embedded in %s", o, e.name)})
				}
			}
		}
	}
	return out
}

// outside is the error for an address inside no allowed prefix.
func (p *Policy) outside(a netip.Addr) error {
	const max = 8
	var list []string
	sameFamily := false
	for i, pfx := range p.allow {
		sameFamily = sameFamily || pfx.Addr().Is4() == a.Is4()
		if i < max {
			list = append(list, pfx.String())
		}
	}
	s := strings.Join(list, ", ")
	if n := len(p.allow) - max; n > 0 {
		s += fmt.Sprintf(" and %d more", n)
	}
	if !sameFamily {
		fam := "IPv6"
		if a.Is4() {
			fam = "IPv4"
		}
		s += fmt.Sprintf(" (no %s network is allowed)", fam)
	}
	return forbidden("address %s is outside the networks allowed for upstreams (--upstream-allow); allowed: %s", a, s)
}
