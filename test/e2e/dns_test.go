package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dig runs dig against the gateway's DNS server and returns its output.
func (g *gateway) dig(t *testing.T, args ...string) string {
	t.Helper()
	if g.dnsAddr == "" {
		t.Fatal("the gateway's banner names no DNS address")
	}
	host, port, _ := net.SplitHostPort(g.dnsAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", append([]string{"@" + host, "-p", port, "+tries=2", "+time=3"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestDNS: the gateway answers for its domain as an authoritative server:
// SOA, NS with glue, A/AAAA for the apex and for services (at once when a
// service appears), NXDOMAIN with the SOA, nothing for other zones, and a
// large answer truncated over UDP that dig gets whole over TCP.
func TestDNS(t *testing.T) {
	t.Parallel()
	needTool(t, "dig")
	g := startGateway(t, "--domain", "gw.test", "--public-ip", "192.0.2.10", "--public-ip", "2001:db8::10")

	soa := g.dig(t, "gw.test", "SOA")
	if !strings.Contains(soa, "flags: qr aa") || !strings.Contains(soa, "status: NOERROR") ||
		!strings.Contains(soa, "SOA\tns1.gw.test. hostmaster.gw.test.") {
		t.Errorf("dig gw.test SOA is not an authoritative SOA:\n%s", soa)
	}
	ns := squash(g.dig(t, "gw.test", "NS", "+norec"))
	for _, want := range []string{"gw.test. 60 IN NS ns1.gw.test.", "gw.test. 60 IN NS ns2.gw.test.", "ns1.gw.test. 60 IN A 192.0.2.10", "ns2.gw.test. 60 IN AAAA 2001:db8::10"} {
		if !strings.Contains(ns, want) {
			t.Errorf("dig gw.test NS lacks %q:\n%s", want, ns)
		}
	}
	if aaaa := strings.TrimSpace(g.dig(t, "+short", "gw.test", "AAAA")); aaaa != "2001:db8::10" {
		t.Errorf("dig +short gw.test AAAA = %q", aaaa)
	}

	// A name that does not exist: NXDOMAIN, with the SOA for caching.
	nx := g.dig(t, "shop.gw.test", "A")
	if !strings.Contains(nx, "status: NXDOMAIN") || !strings.Contains(nx, "flags: qr aa") || !strings.Contains(nx, "SOA\tns1.gw.test.") {
		t.Errorf("dig of a missing name is not an authoritative NXDOMAIN with the SOA:\n%s", nx)
	}
	// A service: answered from the moment it exists.
	tok := g.addTenant(t, "acme")
	p := startProc(t, "expose", "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--token", tok, "--name", "shop", textBackend(t, "hi\n"))
	p.waitLine(t, regexp.MustCompile(`^https://shop\.gw\.test:\d+$`), 15*time.Second)
	if a := g.dig(t, "+short", "shop.gw.test", "AAAA"); strings.TrimSpace(a) != "2001:db8::10" {
		t.Errorf("dig +short shop.gw.test AAAA right after expose = %q, want the gateway's address", a)
	}

	// Another zone: refused, not answered.
	if other := g.dig(t, "example.org", "A"); !strings.Contains(other, "status: REFUSED") {
		t.Errorf("dig example.org at the gateway is not REFUSED:\n%s", other)
	}

	// 41 A records do not fit 512 bytes: dig sees TC and retries over TCP.
	args := []string{"--domain", "gw.test", "--public-ip", "192.0.2.10"}
	for i := range 40 {
		args = append(args, "--public-ip", fmt.Sprintf("198.51.100.%d", i+1))
	}
	g = startGateway(t, args...)
	big := g.dig(t, "+noedns", "gw.test", "A")
	if !strings.Contains(big, "Truncated, retrying in TCP mode") || strings.Count(big, "\tIN\tA\t") != 41 {
		t.Errorf("dig +noedns gw.test A: want a TCP retry and all 41 addresses:\n%s", big)
	}
	// With EDNS0 the same answer fits one datagram.
	if edns := g.dig(t, "+notcp", "+bufsize=1232", "gw.test", "A"); strings.Contains(edns, "Truncated") || strings.Count(edns, "\tIN\tA\t") != 41 {
		t.Errorf("dig +bufsize=1232 gw.test A: want all 41 addresses in one datagram:\n%s", edns)
	}
}

// squash turns each run of white space in s into one space.
func squash(s string) string { return strings.Join(strings.Fields(s), " ") }

// TestDNSSEC: the gateway signs its zone online; `webgw dns ds` prints the
// DS for the parent; delv, trusting the zone's key, fully validates an
// answer, a NXDOMAIN (NSEC3 white lies) and a NODATA.
func TestDNSSEC(t *testing.T) {
	t.Parallel()
	needTool(t, "delv")
	g := startGateway(t, "--domain", "gw.test", "--public-ip", "192.0.2.10")
	g.addTenant(t, "acme")
	mustRun(t, append([]string{"service", "add", "shop", "--tenant", "acme"}, g.admin()...)...)

	ds := strings.TrimSpace(mustRun(t, append([]string{"dns", "ds"}, g.admin()...)...))
	if !regexp.MustCompile(`^gw\.test\.\s+\d+\s+IN\s+DS\s+\d+ 13 2 [0-9A-F]{64}$`).MatchString(ds) {
		t.Fatalf("webgw dns ds printed %q, want one DS record (algorithm 13, SHA-256)", ds)
	}
	var d struct{ DNSKEY string }
	if err := json.Unmarshal([]byte(mustRun(t, append([]string{"dns", "ds", "--json"}, g.admin()...)...)), &d); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(d.DNSKEY) // gw.test. TTL IN DNSKEY 257 3 13 KEY...
	anchors := filepath.Join(t.TempDir(), "anchors.conf")
	if err := os.WriteFile(anchors, []byte(fmt.Sprintf("trust-anchors {\n\tgw.test. static-key %s %s %s \"%s\";\n};\n",
		f[4], f[5], f[6], strings.Join(f[7:], ""))), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(g.dnsAddr)
	delv := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "delv", append([]string{"@" + host, "-p", port, "-a", anchors, "+root=gw.test"}, args...)...).CombinedOutput()
		return string(out)
	}
	for _, q := range []struct {
		args []string
		want string
	}{
		{[]string{"shop.gw.test", "A"}, "; fully validated"},
		{[]string{"gw.test", "SOA"}, "; fully validated"},
		{[]string{"nope.gw.test", "A"}, "; negative response, fully validated"},
		{[]string{"shop.gw.test", "MX"}, "; negative response, fully validated"},
	} {
		if out := delv(q.args...); !strings.Contains(out, q.want) {
			t.Errorf("delv %v: want %q:\n%s", q.args, q.want, out)
		}
	}
	// A wrong trust anchor fails validation: the test can fail.
	if err := os.WriteFile(anchors, []byte("trust-anchors {\n\tgw.test. static-key 257 3 13 \"Vlw+GudqY4h2YpnjN874QUXZgBaBcG+yJ/XX3VD0WFuy0JCQwDWBjRq5b0hpKRfCjsOM8yT96LEARKU5xITfOQ==\";\n};\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := delv("shop.gw.test", "A"); strings.Contains(out, "fully validated") {
		t.Errorf("delv validated with a foreign key:\n%s", out)
	}
}
