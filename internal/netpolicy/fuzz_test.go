package netpolicy

import (
	"net/netip"
	"strings"
	"testing"
)

// fuzzAddr makes an address from 4 or 16 bytes, or else parses the bytes as text.
func fuzzAddr(b []byte) netip.Addr {
	if a, ok := netip.AddrFromSlice(b); ok {
		return a
	}
	a, _ := netip.ParseAddr(string(b))
	return a
}

// FuzzCheck checks Check against an independent statement of the rules:
// for any address, allow list (parsed from text, plus a prefix of the
// address itself of a fuzzed length) and own address, Check does not
// panic, and an accepted address is valid, never of a never-dialled class,
// inside an allowed prefix, and inside a prefix that lies within each
// sensitive class the address belongs to.
func FuzzCheck(f *testing.F) {
	seeds := []struct {
		addr  string
		allow string
		bits  int
		own   string
	}{
		{"127.0.0.1", "127.0.0.0/8", -1, ""},
		{"::1", "::/0", 0, ""},
		{"::ffff:127.0.0.1", "0.0.0.0/0", 96, ""},
		{"169.254.169.254", "169.254.0.0/16", 16, ""},
		{"fe80::1%eth0", "fe80::/10", 10, ""},
		{"203.0.113.5", "203.0.113.0/24", 24, "203.0.113.5"},
		{"64:ff9b::7f00:1", "64:ff9b::/96", 96, ""},
		{"2002:7f00:1::", "2002::/16", 16, ""},
		{"2001:0:1::1", "::/0", 32, ""},
		{"255.255.255.255", "0.0.0.0/0,255.255.255.255", 32, ""},
		{"0.0.0.0", "0.0.0.0/0", 0, ""},
		{"ff02::1", "ff00::/8", 8, ""},
		{"2001:db8::10", "2001:db8::/32", 32, "2001:db8::1"},
		{"64:ff9b::cb00:7105", "64:ff9b::/96", 96, "203.0.113.5"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.addr), s.allow, s.bits, []byte(s.own))
		if a, err := netip.ParseAddr(s.addr); err == nil {
			f.Add(a.AsSlice(), s.allow, s.bits, []byte(s.own))
		}
	}
	f.Fuzz(func(t *testing.T, addrB []byte, allowSpec string, bits int, ownB []byte) {
		a := fuzzAddr(addrB)
		var allow []netip.Prefix
		if allowSpec != "" {
			var err error
			allow, err = ParseAllow(strings.Split(allowSpec, ","))
			if err != nil {
				if !strings.HasPrefix(err.Error(), "--upstream-allow: ") {
					t.Fatalf("ParseAllow error %q does not name the flag", err)
				}
				allow = nil
			}
			for _, p := range allow {
				if p != p.Masked() || !p.IsValid() {
					t.Fatalf("ParseAllow(%q) gave %s, not masked", allowSpec, p)
				}
			}
		}
		if a.IsValid() && bits >= 0 && bits <= a.BitLen() {
			allow = append(allow, netip.PrefixFrom(a.WithZone(""), bits).Masked())
		}
		var own []netip.Addr
		if o := fuzzAddr(ownB); o.IsValid() {
			own = append(own, o)
		}
		p := New(allow, func() []netip.Addr { return own })
		err := p.Check(a)
		if err != nil {
			if err.Error() == "" || !isForbidden(err) {
				t.Fatalf("Check(%s) = %v; want a message wrapping ErrForbidden", a, err)
			}
			return
		}
		// Accepted: the rules, stated again independently.
		if !a.IsValid() {
			t.Fatal("the zero address was accepted")
		}
		u := a.WithZone("").Unmap()
		if u.IsUnspecified() || u.IsMulticast() || u == netip.AddrFrom4([4]byte{255, 255, 255, 255}) ||
			u.Is4() && u.As4()[0] == 0 {
			t.Fatalf("Check(%s) accepted a never-dialled address", a)
		}
		var in []netip.Prefix // the allow list's prefixes that contain u
		for _, q := range p.allow {
			if q.Contains(u) {
				in = append(in, q)
			}
		}
		if len(in) == 0 {
			t.Fatalf("Check(%s) accepted an address outside %v", a, p.allow)
		}
		explicit := func(class netip.Prefix) bool {
			for _, q := range in {
				if q.Bits() >= class.Bits() && class.Contains(q.Addr()) {
					return true
				}
			}
			return false
		}
		classes := map[string]string{
			"loopback":        "127.0.0.0/8",
			"loopback6":       "::1/128",
			"link-local":      "169.254.0.0/16",
			"metadata":        "169.254.169.254/32",
			"link-local6":     "fe80::/10",
			"nat64":           "64:ff9b::/96",
			"nat64 local-use": "64:ff9b:1::/48",
			"6to4":            "2002::/16",
			"teredo":          "2001::/32",
		}
		for name, c := range classes {
			class := netip.MustParsePrefix(c)
			if class.Contains(u) && !explicit(class) {
				t.Fatalf("Check(%s) accepted a %s address allowed by %v", a, name, in)
			}
		}
		if u.IsLoopback() && !explicit(netip.MustParsePrefix("127.0.0.0/8")) && !explicit(netip.MustParsePrefix("::1/128")) {
			t.Fatalf("Check(%s) accepted loopback", a)
		}
		if u.IsLinkLocalUnicast() && !explicit(netip.MustParsePrefix("169.254.0.0/16")) && !explicit(netip.MustParsePrefix("fe80::/10")) {
			t.Fatalf("Check(%s) accepted link-local", a)
		}
		for _, o := range own {
			o = o.WithZone("").Unmap()
			if o == u && !o.IsLoopback() && !o.IsLinkLocalUnicast() && !explicit(netip.PrefixFrom(o, o.BitLen())) {
				t.Fatalf("Check(%s) accepted an own address allowed by %v", a, in)
			}
		}
		// Embedded IPv4 through NAT64 (64:ff9b::/96) keeps its classes.
		if nat64 := netip.MustParsePrefix("64:ff9b::/96"); nat64.Contains(u) {
			b := u.As16()
			v4 := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
			if v4.IsLoopback() && !explicit(netip.PrefixFrom(u, 104).Masked()) {
				t.Fatalf("Check(%s) accepted NAT64 loopback allowed by %v", a, in)
			}
			if v4.IsMulticast() || v4.IsUnspecified() {
				t.Fatalf("Check(%s) accepted NAT64 of a never-dialled address", a)
			}
		}
	})
}

func isForbidden(err error) bool {
	_, ok := err.(*forbiddenError)
	return ok
}
