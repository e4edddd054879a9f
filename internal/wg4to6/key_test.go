package wg4to6

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestKeyHex: keys go to and come from WireGuard's configuration protocol
// in hex (generating, parsing and printing keys is model's, tested there).
func TestKeyHex(t *testing.T) {
	k, err := model.GenerateWGKey()
	if err != nil {
		t.Fatal(err)
	}
	if h, err := decodeHexKey(keyHex(k)); err != nil || h != k {
		t.Errorf("hex round trip: %v", err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("zz", 32)} {
		if _, err := decodeHexKey(bad); err == nil {
			t.Errorf("decodeHexKey(%q) accepted", bad)
		}
	}
}

func TestConfigComplete(t *testing.T) {
	good := Config{PrivateKey: Key{1}, Prefix: netip.MustParsePrefix("2001:db8:100::/56")}
	c, err := good.complete()
	if err != nil {
		t.Fatal(err)
	}
	if c.TUN != DefaultTUN || c.MTU != DefaultMTU || c.MaxFlows != defaultMaxFlows || c.MaxFlowsPerPeer != defaultMaxFlowsPerPeer || c.ListenPort != 0 {
		t.Errorf("defaults: %+v", c)
	}
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no key", func(c *Config) { c.PrivateKey = Key{} }, "PrivateKey"},
		{"no prefix", func(c *Config) { c.Prefix = netip.Prefix{} }, "Prefix: not set"},
		{"ipv4 prefix", func(c *Config) { c.Prefix = netip.MustParsePrefix("10.0.0.0/8") }, "not IPv6"},
		{"host bits", func(c *Config) { c.Prefix = netip.MustParsePrefix("2001:db8:100::1/56") }, "did you mean 2001:db8:100::/56"},
		{"too small", func(c *Config) { c.Prefix = netip.MustParsePrefix("2001:db8::1/128") }, "too small"},
		{"port", func(c *Config) { c.ListenPort = 70000 }, "ListenPort"},
		{"mtu", func(c *Config) { c.MTU = 1000 }, "MTU"},
		{"tun name", func(c *Config) { c.TUN = "a-very-long-interface-name" }, "TUN"},
		{"nat66 without address", func(c *Config) { c.NAT66 = true }, "NATAddr: not set"},
		{"nat address in prefix", func(c *Config) { c.NAT66, c.NATAddr = true, netip.MustParseAddr("2001:db8:100::5") }, "inside Prefix"},
		{"nat address without nat66", func(c *Config) { c.NATAddr = netip.MustParseAddr("2001:db8:2::1") }, "NAT66 is off"},
		{"flows", func(c *Config) { c.MaxFlows = -1 }, "MaxFlows"},
	} {
		c := good
		tt.mod(&c)
		if _, err := c.complete(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

func TestCheckPeers(t *testing.T) {
	cfg, _ := Config{PrivateKey: Key{9}, Prefix: netip.MustParsePrefix("2001:db8:100::/56")}.complete()
	e := &Engine{cfg: cfg, pub: cfg.PrivateKey.Public(), log: discardLog()}
	pfx := netip.MustParsePrefix
	ok := []Peer{
		{PublicKey: keyA, Addr: pfx("2001:db8:100::10/128")},
		{PublicKey: keyB, Addr: pfx("2001:db8:100:1::/64"), Open: []string{"tcp/22"}},
	}
	if _, err := e.checkPeers(ok); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		peers []Peer
		want  string
	}{
		{"no key", []Peer{{Addr: pfx("2001:db8:100::10/128")}}, "PublicKey: not set"},
		{"gateway's key", []Peer{{PublicKey: e.pub, Addr: pfx("2001:db8:100::10/128")}}, "gateway's own"},
		{"twice", []Peer{ok[0], {PublicKey: keyA, Addr: pfx("2001:db8:100::11/128")}}, "listed twice"},
		{"no addr", []Peer{{PublicKey: keyA}}, "Addr: not set"},
		{"outside", []Peer{{PublicKey: keyA, Addr: pfx("2001:db8:200::10/128")}}, "outside Prefix"},
		{"larger than the prefix", []Peer{{PublicKey: keyA, Addr: pfx("2001:db8::/48")}}, "outside Prefix"},
		{"gateway's address", []Peer{{PublicKey: keyA, Addr: pfx("2001:db8:100::1/128")}}, "gateway's own address"},
		{"gateway's /64", []Peer{{PublicKey: keyA, Addr: pfx("2001:db8:100::/64")}}, "gateway's own address"},
		{"same addr", []Peer{ok[0], {PublicKey: keyB, Addr: pfx("2001:db8:100::10/128")}}, "is peer"},
		{"overlap", []Peer{ok[1], {PublicKey: keyA, Addr: pfx("2001:db8:100:1::10/128")}}, "overlaps"},
		{"host bits", []Peer{{PublicKey: keyA, Addr: pfx("2001:db8:100:1::10/64")}}, "host bits"},
		{"bad open", []Peer{{PublicKey: keyA, Addr: pfx("2001:db8:100::10/128"), Open: []string{"ssh"}}}, "Open"},
	} {
		if _, err := e.checkPeers(tt.peers); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}
