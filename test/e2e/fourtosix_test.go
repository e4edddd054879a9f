//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fourToSixSpec: the gateway has an IPv4 and an IPv6 uplink; "inet6" is a
// host of the IPv6 internet (IPv6 only); "laptop" is an IPv4-only user.
var fourToSixSpec = netSpec{
	Hosts: []hostSpec{
		{Name: "gw", Octet: 11},
		{Name: "inet6", Octet: 40, Family: 6},
		{Name: "laptop", Octet: 30, Family: 4},
	},
}

// startNSGatewayIn is startNSGateway with a given data dir (a restart).
func (n *testNet) startNSGatewayIn(t testing.TB, host, dataDir string, extra ...string) *nsGateway {
	t.Helper()
	ip := n.host(host).IP4
	g := &nsGateway{n: n, host: host, ip: ip, dataDir: dataDir}
	args := []string{webgwBin, "gateway", "--domain", clusterDomain, "--public-ip", ip.String(),
		"--https-addr", ip.String() + ":443", "--http-addr", ip.String() + ":80", "--dns-addr", ip.String() + ":53",
		"--api-addr", "127.0.0.1:8081", "--data-dir", g.dataDir, "--access-log=false"}
	g.proc = n.start(t, host, "gateway", nil, append(args, extra...)...)
	return g
}

var reWGAddress = regexp.MustCompile(`(?m)^Address\s*=\s*([0-9a-fA-F:]+)/(\d+)\s*$`)

// TestFourToSix: an IPv4-only laptop uses the real WireGuard tools
// (wireguard-go, wg) with the config `webgw 4to6 add` printed, and reaches
// an IPv6-only server with its own routed address (no NAT). The IPv6 host
// reaches the laptop only on a port opened for it; a spoofed source is
// dropped; the gateway restarts and the same config works again; a removed
// device stops at once; bytes are metered.
func TestFourToSix(t *testing.T) {
	t.Parallel()
	needTool(t, "wireguard-go")
	needTool(t, "wg")
	needTool(t, "curl")
	n := newTestNet(t, fourToSixSpec)
	prefix := netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/56", n.R))
	wgFlags := []string{"--wg-prefix", prefix.String(), "--wg-listen", ":51820"}
	gw := n.startNSGateway(t, "gw", wgFlags...)
	gw.ready(t)
	inet6 := n.host("inet6")
	// The IPv6 internet: global addresses (the harness's own are ULA, which
	// devices may not reach) on the bridge, and a route for the prefix to
	// the gateway.
	gwUp := netip.MustParseAddr(fmt.Sprintf("2001:db8:%x:ff00::11", n.R))
	inetAddr := netip.MustParseAddr(fmt.Sprintf("2001:db8:%x:ff00::40", n.R))
	n.must(t, "-n", n.host("gw").NS, "-6", "addr", "add", gwUp.String()+"/64", "dev", "eth0", "nodad")
	n.must(t, "-n", inet6.NS, "-6", "addr", "add", inetAddr.String()+"/64", "dev", "eth0", "nodad")
	n.must(t, "-n", inet6.NS, "-6", "route", "add", prefix.String(), "via", gwUp.String())
	server := n.serveHTTP(t, "inet6", netip.AddrPortFrom(inetAddr, 8080).String(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, host)
	}))

	tok := strings.TrimSpace(gw.mustWebgw(t, "tenant", "add", "acme"))
	conf := gw.mustWebgw(t, "4to6", "add", "laptop", "--token", tok, "--no-qr")
	m := reWGAddress.FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf("webgw 4to6 add printed no Address line:\n%s", conf)
	}
	dev := netip.MustParseAddr(m[1])
	if !prefix.Contains(dev) || m[2] != "128" {
		t.Fatalf("device address %s/%s, want a /128 inside %s", dev, m[2], prefix)
	}
	for _, want := range []string{"PrivateKey = ", "[Peer]", "AllowedIPs = ::/0", "PersistentKeepalive = 25",
		"Endpoint = " + n.host("gw").IP4.String() + ":51820"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}

	// The laptop: the real wireguard-go and wg(8) with that config.
	dir := t.TempDir()
	confFile := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	strip := n.exec(t, "laptop", 10*time.Second, "wg-quick", "strip", confFile)
	if strip.code != 0 {
		t.Fatalf("wg-quick strip: %s", strip)
	}
	stripped := filepath.Join(dir, "wg0.stripped")
	if err := os.WriteFile(stripped, []byte(strip.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t, "laptop", "wireguard-go", []string{"WG_PROCESS_FOREGROUND=1"}, "wireguard-go", "-f", "wg0")
	laptop := n.host("laptop")
	if !poll(10*time.Second, func() bool { return n.ip("-n", laptop.NS, "link", "show", "wg0") == nil }) {
		t.Fatal("wireguard-go made no wg0 in the laptop within 10 s")
	}
	for _, args := range [][]string{
		{"wg", "setconf", "wg0", stripped},
		{"ip", "-6", "addr", "add", dev.String() + "/128", "dev", "wg0", "nodad"},
		{"ip", "link", "set", "wg0", "mtu", "1420", "up"},
		{"ip", "-6", "route", "add", "default", "dev", "wg0"},
	} {
		if r := n.exec(t, "laptop", 10*time.Second, args...); r.code != 0 {
			t.Fatalf("laptop: %s: %s", strings.Join(args, " "), r)
		}
	}

	// curl -6 from the IPv4-only laptop reaches the IPv6-only server, which
	// sees the device's own address.
	get := func(extra ...string) cmdResult {
		return n.exec(t, "laptop", 10*time.Second, append(append([]string{"curl", "-6", "-s", "--max-time", "2"}, extra...), server+"/")...)
	}
	var r cmdResult
	if !poll(15*time.Second, func() bool { r = get(); return r.code == 0 }) {
		t.Fatalf("curl -6 %s from the laptop through the tunnel: %s", server, r)
	}
	if got := strings.TrimSpace(r.stdout); got != dev.String() {
		t.Errorf("the IPv6 server saw the laptop as %s, want its own routed address %s (no NAT)", got, dev)
	}

	// Inbound: closed by default, open once the port is opened.
	ln := n.listen(t, "laptop", netip.AddrPortFrom(dev, 9000).String())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "laptop\n")
			c.Close()
		}
	}()
	reach := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := n.dial(ctx, "inet6", "tcp", netip.AddrPortFrom(dev, 9000).String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "laptop\n" {
			err = fmt.Errorf("read %q", b)
		}
		return err
	}
	if err := reach(); err == nil {
		t.Error("the IPv6 host opened a connection to the laptop's port 9000 without it being opened")
	}
	gw.mustWebgw(t, "4to6", "open", "laptop", "tcp/9000", "--token", tok)
	var rerr error
	if !poll(5*time.Second, func() bool { rerr = reach(); return rerr == nil }) {
		t.Errorf("the IPv6 host cannot reach the laptop's opened tcp/9000: %v", rerr)
	}

	// A spoofed source (another address of the prefix) is dropped.
	spoof := dev.Next()
	n.exec(t, "laptop", 10*time.Second, "ip", "-6", "addr", "add", spoof.String()+"/128", "dev", "wg0", "nodad")
	if r := get("--interface", spoof.String()); r.code == 0 {
		t.Errorf("a request from the spoofed source %s got through: %q", spoof, r.stdout)
	}
	// Gone again, so the kernel does not pick it as the source below.
	n.exec(t, "laptop", 10*time.Second, "ip", "-6", "addr", "del", spoof.String()+"/128", "dev", "wg0")

	// Restart: the same config works again.
	// (The laptop's WireGuard keeps its old session until it gives up on
	// it, about 15 s after the first unanswered packet, and handshakes anew.)
	gw.kill(t)
	gw = n.startNSGatewayIn(t, "gw", gw.dataDir, wgFlags...)
	gw.ready(t)
	restarted := time.Now()
	if !poll(40*time.Second, func() bool { r = get(); return r.code == 0 }) {
		show := n.exec(t, "laptop", 10*time.Second, "wg", "show", "wg0")
		routes := n.exec(t, "gw", 10*time.Second, "ip", "-6", "route")
		t.Fatalf("after a gateway restart, curl through the same tunnel config: %s\nwg show (laptop):\n%s\nroutes (gw):\n%s", r, show.stdout, routes.stdout)
	}
	t.Logf("restart: the same device config works again %v after the gateway was back", time.Since(restarted).Round(100*time.Millisecond))

	// Bytes are metered per device.
	var devs []struct {
		Name    string `json:"name"`
		RxBytes int64  `json:"rx_bytes"`
		TxBytes int64  `json:"tx_bytes"`
	}
	if err := json.Unmarshal([]byte(gw.mustWebgw(t, "4to6", "list", "--json", "--token", tok)), &devs); err != nil {
		t.Fatalf("webgw 4to6 list --json: %v", err)
	}
	if len(devs) != 1 || devs[0].Name != "laptop" || devs[0].RxBytes == 0 || devs[0].TxBytes == 0 {
		t.Errorf("4to6 list = %+v, want laptop with bytes both ways", devs)
	}

	// Revoked: at once.
	gw.mustWebgw(t, "4to6", "remove", "laptop", "--token", tok)
	start := time.Now()
	if !poll(5*time.Second, func() bool { return get().code != 0 }) {
		t.Fatal("the laptop still reaches the IPv6 server 5 s after its device was removed")
	}
	t.Logf("revoked: the tunnel stopped %v after `webgw 4to6 remove` returned", time.Since(start).Round(time.Millisecond))
}
