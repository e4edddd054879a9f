package model_test

import (
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

func TestParseOpen(t *testing.T) {
	tests := []struct {
		in      []string
		want    []string
		wantErr string
	}{
		{nil, []string{}, ""},
		{[]string{}, []string{}, ""},
		{[]string{"tcp/22"}, []string{"tcp/22"}, ""},
		{[]string{"udp/60000", "tcp/443", "tcp/22", "tcp/443"}, []string{"tcp/22", "tcp/443", "udp/60000"}, ""},
		{[]string{"tcp/22", "all"}, []string{"all"}, ""},
		{[]string{"all", "all"}, []string{"all"}, ""},
		{[]string{"tcp/65535", "udp/1"}, []string{"tcp/65535", "udp/1"}, ""},
		{[]string{"tcp/0"}, nil, `"tcp/0": port 0 is outside 1-65535`},
		{[]string{"tcp/65536"}, nil, "outside 1-65535"},
		{[]string{"tcp/022x"}, nil, "is not a port number"},
		{[]string{"tcp/+22"}, nil, "is not a port number"},
		{[]string{"TCP/22"}, nil, `"TCP/22" not accepted; use tcp/PORT or udp/PORT`},
		{[]string{"sctp/22"}, nil, "not accepted"},
		{[]string{"22"}, nil, "not accepted"},
		{[]string{"tcp/"}, nil, "a port number is missing"},
		{[]string{"tcp/20-30"}, nil, "is not a port number"},
		{[]string{"ALL"}, nil, "not accepted"},
		{[]string{""}, nil, "not accepted"},
	}
	for _, tt := range tests {
		got, err := model.ParseOpen(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseOpen(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got == nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseOpen(%q) = %#v, %v; want %#v", tt.in, got, err, tt.want)
		}
	}
	var many []string
	for i := 1; i <= model.MaxOpen+1; i++ {
		many = append(many, "tcp/"+big.NewInt(int64(i)).String())
	}
	if _, err := model.ParseOpen(many); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("ParseOpen of %d ports: %v, want a bound", len(many), err)
	}
	if got, err := model.ParseOpen(many[:model.MaxOpen]); err != nil || len(got) != model.MaxOpen {
		t.Errorf("ParseOpen of %d ports: %d, %v", model.MaxOpen, len(got), err)
	}
}

func TestValidateDeviceName(t *testing.T) {
	for _, ok := range []string{"laptop", "phone-2", "a", "www", strings.Repeat("a", 63)} {
		if err := model.ValidateDeviceName(ok); err != nil {
			t.Errorf("ValidateDeviceName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Laptop", "my_phone", "-x", "x-", "a/b", strings.Repeat("a", 64)} {
		if err := model.ValidateDeviceName(bad); err == nil || !strings.Contains(err.Error(), "invalid device name") {
			t.Errorf("ValidateDeviceName(%q) = %v, want an error", bad, err)
		}
	}
}

func TestParseDevicePlan(t *testing.T) {
	tests := []struct {
		prefix, per string
		bits        int
		wantErr     string
	}{
		{"2001:db8:100::/56", "", 128, ""},
		{"2001:db8:100::/56", "/128", 128, ""},
		{"2001:db8:100::/56", "128", 128, ""},
		{"2001:db8:100::/56", "/64", 64, ""},
		{"2001:db8:100::/63", "/64", 64, ""},
		{"fd00:1::/64", "", 128, ""},
		{"2001:db8::/126", "", 128, ""},
		{"2001:db8::/127", "", 0, "prefix: 2001:db8::/127 leaves no address"},
		{"2001:db8:100::/64", "/64", 0, "prefix: a /64 per device needs a prefix shorter than /64"},
		{"2001:db8:100::/56", "/96", 0, `per device: "/96" not accepted`},
		{"10.0.0.0/8", "", 0, "prefix: 10.0.0.0/8 is IPv4"},
		{"::ffff:10.0.0.0/104", "", 0, "is IPv4"},
		{"2001:db8:100::1/56", "", 0, "prefix: 2001:db8:100::1/56 has bits set past /56; use 2001:db8:100::/56"},
		{"fe80::/64", "", 0, "neither global unicast"},
		{"ff02::/16", "", 0, "neither global unicast"},
		{"::/0", "", 0, "too wide"},
		{"2000::/3", "", 0, "too wide"},
		{"2001:db8::", "", 0, `prefix: "2001:db8::" is not an IPv6 prefix`},
		{"", "", 0, "prefix:"},
	}
	for _, tt := range tests {
		pl, err := model.ParseDevicePlan(tt.prefix, tt.per)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseDevicePlan(%q, %q) = %v, %v; want an error containing %q", tt.prefix, tt.per, pl, err, tt.wantErr)
			}
			continue
		}
		if err != nil || pl.Bits != tt.bits || pl.Prefix.String() != tt.prefix {
			t.Errorf("ParseDevicePlan(%q, %q) = %v, %v", tt.prefix, tt.per, pl, err)
		}
	}
}

func TestDevicePlanSlots(t *testing.T) {
	pl, _ := model.ParseDevicePlan("2001:db8:100::/56", "/64")
	if pl.Slots().Int64() != 256 {
		t.Errorf("/64s in a /56: %v", pl.Slots())
	}
	for i, want := range map[int64]string{0: "2001:db8:100::/64", 1: "2001:db8:100:1::/64", 255: "2001:db8:100:ff::/64"} {
		if got := pl.Slot(big.NewInt(i)); got.String() != want || !pl.Contains(got) {
			t.Errorf("slot %d = %s, want %s", i, got, want)
		}
	}
	if !pl.Reserved(netip.MustParsePrefix("2001:db8:100::/64")) || pl.Reserved(netip.MustParsePrefix("2001:db8:100:1::/64")) {
		t.Error("with /64 per device only the first /64 is reserved")
	}
	if pl.Contains(netip.MustParsePrefix("2001:db8:100:1::5/128")) || pl.Contains(netip.MustParsePrefix("2001:db8:101::/64")) {
		t.Error("Contains accepts a block of another size or outside the prefix")
	}

	pl, _ = model.ParseDevicePlan("2001:db8:100::/56", "")
	if pl.Slots().String() != "4722366482869645213696" { // 2^72
		t.Errorf("addresses in a /56: %v", pl.Slots())
	}
	if got := pl.Slot(big.NewInt(5)); got.String() != "2001:db8:100::5/128" {
		t.Errorf("slot 5 = %s", got)
	}
	last := new(big.Int).Sub(pl.Slots(), big.NewInt(1))
	if got := pl.Slot(last); got.String() != "2001:db8:100:ff:ffff:ffff:ffff:ffff/128" {
		t.Errorf("last slot = %s", got)
	}
	for _, r := range []string{"2001:db8:100::/128", "2001:db8:100::1/128", "2001:db8:100:7::/128", "2001:db8:100:7:ffff:ffff:ffff:ff80/128"} {
		if !pl.Reserved(netip.MustParsePrefix(r)) {
			t.Errorf("%s is not reserved", r)
		}
	}
	for _, r := range []string{"2001:db8:100::2/128", "2001:db8:100:7::1/128", "2001:db8:100:7:ffff:ffff:ffff:ff7f/128"} {
		if pl.Reserved(netip.MustParsePrefix(r)) {
			t.Errorf("%s is reserved", r)
		}
	}
	if pl.GatewayAddr().String() != "2001:db8:100::1" {
		t.Errorf("gateway address %s", pl.GatewayAddr())
	}

	// A prefix longer than /64: only ::0 and ::1 are reserved.
	pl, _ = model.ParseDevicePlan("2001:db8::ff00/120", "")
	if pl.Reserved(netip.MustParsePrefix("2001:db8::ffff/128")) || !pl.Reserved(netip.MustParsePrefix("2001:db8::ff01/128")) {
		t.Error("reserved addresses of a /120")
	}
}

func TestInterfaceAddr(t *testing.T) {
	for in, want := range map[string]string{
		"2001:db8:100::5/128":  "2001:db8:100::5/128",
		"2001:db8:100:5::/64":  "2001:db8:100:5::1/64",
		"2001:db8:100:ff::/64": "2001:db8:100:ff::1/64",
	} {
		if got := model.InterfaceAddr(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("InterfaceAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func FuzzParseOpen(f *testing.F) {
	f.Add("tcp/22,udp/60000")
	f.Add("all,tcp/1")
	f.Add("tcp/0")
	f.Add("udp/65535,udp/65535")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := model.ParseOpen(strings.Split(s, ","))
		if err != nil {
			return
		}
		again, err := model.ParseOpen(got)
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("ParseOpen(%q) = %q, which is not canonical (%q, %v)", s, got, again, err)
		}
	})
}
