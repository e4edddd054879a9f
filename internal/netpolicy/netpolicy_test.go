package netpolicy

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

func mustAllow(t testing.TB, specs ...string) []netip.Prefix {
	t.Helper()
	p, err := ParseAllow(specs)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func noOwn() []netip.Addr { return nil }

func TestParseAllow(t *testing.T) {
	tests := []struct {
		in   []string
		want string // prefixes joined by spaces, or the error
	}{
		{nil, ""},
		{[]string{"10.0.0.0/8"}, "10.0.0.0/8"},
		{[]string{"10.1.2.3/8"}, "10.0.0.0/8"},
		{[]string{"2001:db8::1/32", " 300::/8 "}, "2001:db8::/32 300::/8"},
		{[]string{"127.0.0.1"}, "127.0.0.1/32"},
		{[]string{"::1"}, "::1/128"},
		{[]string{"::ffff:10.0.0.0/104"}, "10.0.0.0/8"},
		{[]string{"::ffff:127.0.0.1"}, "127.0.0.1/32"},
		{[]string{"0.0.0.0/0", "::/0"}, "0.0.0.0/0 ::/0"},
		{[]string{"10.0.0.0/8", "nope"}, `--upstream-allow: "nope" is not a CIDR such as 2001:db8::/32 or 10.0.0.0/8`},
		{[]string{""}, `--upstream-allow: "" is not a CIDR such as 2001:db8::/32 or 10.0.0.0/8`},
		{[]string{"10.0.0.0/33"}, `--upstream-allow: "10.0.0.0/33" is not a CIDR such as 2001:db8::/32 or 10.0.0.0/8`},
		{[]string{"fe80::1%eth0"}, `--upstream-allow: "fe80::1%eth0" is not a CIDR such as 2001:db8::/32 or 10.0.0.0/8`},
		{[]string{"example.com"}, `--upstream-allow: "example.com" is not a CIDR such as 2001:db8::/32 or 10.0.0.0/8`},
	}
	for _, tt := range tests {
		got, err := ParseAllow(tt.in)
		var s string
		if err != nil {
			s = err.Error()
		} else {
			var parts []string
			for _, p := range got {
				parts = append(parts, p.String())
			}
			s = strings.Join(parts, " ")
		}
		if s != tt.want {
			t.Errorf("ParseAllow(%q) = %q; want %q", tt.in, s, tt.want)
		}
	}
}

func TestCheck(t *testing.T) {
	own := func() []netip.Addr {
		return []netip.Addr{
			netip.MustParseAddr("203.0.113.5"),
			netip.MustParseAddr("2001:db8::1"),
			netip.MustParseAddr("300:1234::1"),
			netip.MustParseAddr("127.0.0.1"),       // judged as loopback, not as own
			netip.MustParseAddr("fe80::1234%eth0"), // judged as link-local
		}
	}
	tests := []struct {
		allow []string
		addr  string
		want  string // "" means allowed; otherwise a substring of the error
	}{
		// No allow list: nothing is dialled.
		{nil, "2001:db8::10", "no networks are allowed for upstreams; the operator lists them with --upstream-allow"},
		{nil, "10.0.0.1", "no networks are allowed for upstreams"},
		// Inside and outside the allowed networks.
		{[]string{"2001:db8::/32"}, "2001:db8::10", ""},
		{[]string{"300::/8"}, "300:1234::5", ""},
		{[]string{"10.0.0.0/8"}, "2001:db8::10", "address 2001:db8::10 is outside the networks allowed for upstreams (--upstream-allow); allowed: 10.0.0.0/8 (no IPv6 network is allowed)"},
		{[]string{"10.0.0.0/8", "192.168.0.0/16"}, "172.16.0.1", "address 172.16.0.1 is outside the networks allowed for upstreams (--upstream-allow); allowed: 10.0.0.0/8, 192.168.0.0/16"},
		{[]string{"::/0"}, "10.0.0.1", "(no IPv4 network is allowed)"},
		{[]string{"0.0.0.0/0"}, "8.8.8.8", ""},
		{[]string{"::/0"}, "2606:4700::1", ""},
		// Never dialled, whatever is allowed.
		{[]string{"0.0.0.0/0"}, "0.0.0.0", "address 0.0.0.0 is unspecified; the gateway never dials it"},
		{[]string{"0.0.0.0/8"}, "0.1.2.3", "this host"},
		{[]string{"::/0", "::/128"}, "::", "address :: is unspecified"},
		{[]string{"0.0.0.0/0", "224.0.0.0/4"}, "224.0.0.1", "multicast"},
		{[]string{"::/0", "ff00::/8"}, "ff02::1", "address ff02::1 is multicast"},
		{[]string{"0.0.0.0/0", "255.255.255.255/32"}, "255.255.255.255", "the IPv4 broadcast address; the gateway never dials it"},
		{[]string{"::/0"}, "::ffff:0.0.0.0", "address 0.0.0.0 is unspecified"},
		// Loopback.
		{[]string{"0.0.0.0/0"}, "127.0.0.1", "address 127.0.0.1 is loopback; the gateway dials it only when listed explicitly (--upstream-allow 127.0.0.1/32)"},
		{[]string{"::/0"}, "::1", "address ::1 is loopback; the gateway dials it only when listed explicitly (--upstream-allow ::1/128)"},
		{[]string{"::/1"}, "::1", "loopback"},
		{[]string{"::1/128"}, "::1", ""},
		{[]string{"::1"}, "::1", ""},
		{[]string{"127.0.0.0/8"}, "127.0.0.1", ""},
		{[]string{"127.0.0.0/8"}, "127.9.9.9", ""},
		{[]string{"127.0.0.1/32"}, "127.0.0.1", ""},
		{[]string{"127.0.0.1/32"}, "127.0.0.2", "outside"},
		{[]string{"0.0.0.0/0", "127.0.0.1/32"}, "127.0.0.1", ""},
		{[]string{"0.0.0.0/0", "127.0.0.1/32"}, "127.0.0.2", "loopback"},
		// IPv4-mapped IPv6 is the IPv4 address.
		{[]string{"::/0"}, "::ffff:127.0.0.1", "outside"},
		{[]string{"0.0.0.0/0"}, "::ffff:127.0.0.1", "address 127.0.0.1 is loopback"},
		{[]string{"127.0.0.0/8"}, "::ffff:127.0.0.1", ""},
		{[]string{"0.0.0.0/0"}, "::ffff:169.254.169.254", "address 169.254.169.254 is the cloud metadata address"},
		{[]string{"10.0.0.0/8"}, "::ffff:10.1.1.1", ""},
		// Link-local and the metadata address.
		{[]string{"0.0.0.0/0"}, "169.254.1.1", "address 169.254.1.1 is link-local; the gateway dials it only when listed explicitly (--upstream-allow 169.254.1.1/32)"},
		{[]string{"169.254.0.0/16"}, "169.254.1.1", ""},
		{[]string{"0.0.0.0/0"}, "169.254.169.254", "address 169.254.169.254 is the cloud metadata address; the gateway dials it only when listed explicitly (--upstream-allow 169.254.169.254/32)"},
		{[]string{"169.254.0.0/16"}, "169.254.169.254", "the cloud metadata address"},
		{[]string{"169.254.169.254/32"}, "169.254.169.254", ""},
		{[]string{"::/0"}, "fe80::1", "address fe80::1 is link-local"},
		{[]string{"::/0"}, "fe80::1%eth0", "address fe80::1 is link-local"},
		{[]string{"fe80::/10"}, "fe80::1", ""},
		{[]string{"fe80::/10"}, "fe80::1%eth0", ""},
		{[]string{"fc00::/7"}, "fd00:ec2::254", "the cloud metadata address"},
		{[]string{"fc00::/7"}, "fd00:ec2::253", ""},
		// The gateway's own addresses need their /32 or /128.
		{[]string{"0.0.0.0/0"}, "203.0.113.5", "address 203.0.113.5 is one of the gateway's own addresses; the gateway dials it only when listed explicitly (--upstream-allow 203.0.113.5/32)"},
		{[]string{"203.0.113.0/24"}, "203.0.113.5", "own addresses"},
		{[]string{"203.0.113.0/24"}, "203.0.113.6", ""},
		{[]string{"203.0.113.5/32"}, "203.0.113.5", ""},
		{[]string{"203.0.113.0/24", "203.0.113.5"}, "203.0.113.5", ""},
		{[]string{"::/0"}, "::ffff:203.0.113.5", "outside"},
		{[]string{"0.0.0.0/0"}, "::ffff:203.0.113.5", "own addresses"},
		{[]string{"2001:db8::/32"}, "2001:db8::1", "address 2001:db8::1 is one of the gateway's own addresses; the gateway dials it only when listed explicitly (--upstream-allow 2001:db8::1/128)"},
		{[]string{"2001:db8::1/128"}, "2001:db8::1", ""},
		{[]string{"300::/8"}, "300:1234::1", "own addresses"},
		{[]string{"300::/8"}, "300:1234::5", ""},
		// IPv6 ranges that embed IPv4.
		{[]string{"::/0"}, "64:ff9b::7f00:1", "address 64:ff9b::7f00:1 is loopback (127.0.0.0/8) embedded in NAT64 (64:ff9b::/96); the gateway dials it only when listed explicitly (--upstream-allow 64:ff9b::7f00:1/128)"},
		{[]string{"64:ff9b::/96"}, "64:ff9b::7f00:1", "loopback (127.0.0.0/8) embedded in NAT64"},
		{[]string{"64:ff9b::7f00:0/104"}, "64:ff9b::7f00:1", ""},
		{[]string{"::/0"}, "64:ff9b::808:808", "address 64:ff9b::808:808 is in NAT64 (64:ff9b::/96), which embeds IPv4 8.8.8.8; the gateway dials it only when listed explicitly (--upstream-allow 64:ff9b::808:808/128)"},
		{[]string{"64:ff9b::/96"}, "64:ff9b::808:808", ""},
		{[]string{"64:ff9b::/96"}, "64:ff9b::a9fe:a9fe", "the cloud metadata address (169.254.169.254/32) embedded in NAT64"},
		{[]string{"64:ff9b::/96"}, "64:ff9b::cb00:7105", "the gateway's own address 203.0.113.5 embedded in NAT64"},
		{[]string{"64:ff9b::/96"}, "64:ff9b::ffff:ffff", "the IPv4 broadcast address embedded in NAT64 (64:ff9b::/96); the gateway never dials it"},
		{[]string{"64:ff9b::/96"}, "64:ff9b::e000:1", "multicast embedded in NAT64"},
		{[]string{"64:ff9b::/96"}, "64:ff9b::1", "unspecified (0.0.0.0/8, this host) embedded in NAT64"},
		{[]string{"::/0"}, "64:ff9b:1::a:b", "local-use NAT64"},
		{[]string{"64:ff9b:1::/48"}, "64:ff9b:1::a:b", ""},
		{[]string{"::/0"}, "2002:7f00:1::1", "loopback (127.0.0.0/8) embedded in 6to4 (2002::/16)"},
		{[]string{"2002::/16"}, "2002:7f00:1::1", "loopback (127.0.0.0/8) embedded in 6to4"},
		{[]string{"2002::/16"}, "2002:808:808::1", ""},
		{[]string{"::/0"}, "2002:808:808::1", "address 2002:808:808::1 is in 6to4 (2002::/16), which embeds IPv4 8.8.8.8"},
		{[]string{"::/0"}, "2001:0:4136:e378:8000:63bf:3fff:fdd2", "in Teredo (2001::/32)"},
		{[]string{"2001::/32"}, "2001:0:4136:e378:8000:63bf:3fff:fdd2", ""},
		{[]string{"::/0"}, "::7f00:1", "in IPv4-compatible IPv6"},
		{[]string{"::/96"}, "::7f00:1", ""},
		{[]string{"::/96"}, "::1", "loopback"},
	}
	for _, tt := range tests {
		p := New(mustAllow(t, tt.allow...), own)
		err := p.Check(netip.MustParseAddr(tt.addr))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("allow %q: Check(%s) = %v; want allowed", tt.allow, tt.addr, err)
		case tt.want != "" && err == nil:
			t.Errorf("allow %q: Check(%s) allowed; want %q", tt.allow, tt.addr, tt.want)
		case err != nil && !strings.Contains(err.Error(), tt.want):
			t.Errorf("allow %q: Check(%s) = %q; want it to contain %q", tt.allow, tt.addr, err, tt.want)
		case err != nil && !errors.Is(err, ErrForbidden):
			t.Errorf("allow %q: Check(%s) = %v; does not wrap ErrForbidden", tt.allow, tt.addr, err)
		}
	}
}

func TestCheckZeroAddr(t *testing.T) {
	err := New(mustAllow(t, "0.0.0.0/0", "::/0"), noOwn).Check(netip.Addr{})
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("Check(zero) = %v; want ErrForbidden", err)
	}
}

func TestCheckUpstream(t *testing.T) {
	p := New(mustAllow(t, "2001:db8::/32"), noOwn)
	tests := []struct {
		url, want string
	}{
		{"http://[2001:db8::10]:8080", ""},
		{"https://[::1]:443", "upstream https://[::1]:443: address ::1 is outside"},
		{"http://127.0.0.1:80", "outside"},
		{"http://[::ffff:127.0.0.1]", "address 127.0.0.1"},
		{"http://localhost:80", ""}, // a name is checked at dial time
		{"http://backend.example:80", ""},
	}
	for _, tt := range tests {
		u, err := model.ParseUpstreamURL(tt.url, model.ProtoHTTP)
		if err != nil {
			t.Fatal(err)
		}
		err = p.CheckUpstream(u)
		if (err == nil) != (tt.want == "") || err != nil && (!strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrForbidden)) {
			t.Errorf("CheckUpstream(%s) = %v; want %q", tt.url, err, tt.want)
		}
	}
	// A hand-built upstream whose IP host has no Addr is still checked.
	if err := p.CheckUpstream(model.ParsedUpstream{Scheme: "http", Host: "::1", Port: 80}); err == nil {
		t.Error("CheckUpstream(Host ::1 without Addr) allowed")
	}
}

// TestOwnDefault checks the default own function: the host's interface
// addresses, looked up again only after 30 s.
func TestOwnDefault(t *testing.T) {
	p := New(mustAllow(t, "198.51.100.0/24"), nil)
	now := time.Unix(1000, 0)
	p.now = func() time.Time { return now }
	lookups := 0
	ifaddr := "198.51.100.7"
	p.lookup = func() ([]net.Addr, error) {
		lookups++
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP(ifaddr), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
		}, nil
	}
	check := func(addr string, wantOK bool) {
		t.Helper()
		err := p.Check(netip.MustParseAddr(addr))
		if (err == nil) != wantOK {
			t.Errorf("Check(%s) = %v; want ok %v", addr, err, wantOK)
		}
	}
	check("198.51.100.7", false)
	check("198.51.100.8", true)
	ifaddr = "198.51.100.8"
	now = now.Add(29 * time.Second)
	check("198.51.100.8", true) // cached
	if lookups != 1 {
		t.Errorf("%d lookups within 30 s; want 1", lookups)
	}
	now = now.Add(2 * time.Second)
	check("198.51.100.8", false)
	check("198.51.100.7", true)
	if lookups != 2 {
		t.Errorf("%d lookups after 31 s; want 2", lookups)
	}
	// A failed lookup keeps the previous list.
	p.lookup = func() ([]net.Addr, error) { return nil, errors.New("no interfaces") }
	now = now.Add(time.Minute)
	check("198.51.100.8", false)

	// The real lookup works and sees loopback only as loopback.
	real := New(mustAllow(t, "127.0.0.0/8"), nil)
	if err := real.Check(netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Errorf("default own: Check(127.0.0.1) with 127.0.0.0/8 allowed = %v", err)
	}
}

func TestNewNormalizes(t *testing.T) {
	p := New([]netip.Prefix{
		{}, // ignored
		netip.MustParsePrefix("10.1.2.3/8"),
		netip.MustParsePrefix("::ffff:127.0.0.1/128"),
	}, noOwn)
	for _, a := range []string{"10.9.9.9", "127.0.0.1"} {
		if err := p.Check(netip.MustParseAddr(a)); err != nil {
			t.Errorf("Check(%s) = %v", a, err)
		}
	}
}

// TestNewWithPublic: a configured public address (on no interface, behind
// NAT) is the gateway's own: a wide allow list does not reach it.
func TestNewWithPublic(t *testing.T) {
	pub := netip.MustParseAddr("203.0.113.7")
	p := NewWithPublic([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, []netip.Addr{pub})
	if err := p.Check(pub); err == nil {
		t.Fatal("the gateway's public address allowed by 0.0.0.0/0")
	}
	if err := p.Check(netip.MustParseAddr("203.0.113.8")); err != nil {
		t.Fatalf("another address refused: %v", err)
	}
	q := NewWithPublic([]netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}, []netip.Addr{pub})
	if err := q.Check(pub); err != nil {
		t.Fatalf("the public address listed on its own refused: %v", err)
	}
}
