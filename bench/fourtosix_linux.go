package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// 4to6 figures (Report.Scenarios["4to6"]): an IPv4-only laptop, the
// gateway and an IPv6 host, each a network namespace joined by veth pairs
// (laptop - gw - inet, routed at gw). The same HTTP transfers from the
// laptop to the backend on the inet host, once over the plain veth path
// (IPv4, routed by the gateway host's kernel) and once through the 4to6
// tunnel (IPv6: wireguard-go on the laptop, webgw's WireGuard endpoint):
//
//	direct_mibs, tunnel_mibs      bulk download rate, MiB/s (fourToSixBulk bytes)
//	tunnel_vs_direct_mibs         their ratio
//	direct_rtt_us, tunnel_rtt_us  median of small keep-alive GETs one after the other
//	tunnel_vs_direct_rtt          their ratio
//	gw_cpu_s_per_gib              CPU seconds of the gateway process per GiB through the tunnel
//	client_cpu_s_per_gib          CPU seconds of the laptop's wireguard-go per GiB
const (
	fourToSixBulk   = 512 << 20
	fourToSixPings  = 400
	fourToSixPrefix = "2001:db8:77::/56"
)

// fourToSixNet is the part's three namespaces.
type fourToSixNet struct{ laptop, gw, inet string }

func (n *fourToSixNet) remove() {
	for _, ns := range []string{n.laptop, n.gw, n.inet} {
		exec.Command(ipTool, "netns", "del", ns).Run()
	}
}

// setupFourToSixNet builds laptop (10.77.1.2) - gw (10.77.1.1 | 10.77.2.1,
// 2001:db8:ff::1) - inet (10.77.2.2, 2001:db8:ff::2), the prefix routed to gw.
func setupFourToSixNet(ctx context.Context) (_ *fourToSixNet, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("creating network namespaces needs root")
	}
	cleanStaleNetns()
	pid := os.Getpid()
	n := &fourToSixNet{laptop: fmt.Sprintf("wgwb-%d-4l", pid), gw: fmt.Sprintf("wgwb-%d-4g", pid), inet: fmt.Sprintf("wgwb-%d-4i", pid)}
	defer func() {
		if err != nil {
			n.remove()
		}
	}()
	for _, args := range [][]string{
		{"netns", "add", n.laptop}, {"netns", "add", n.gw}, {"netns", "add", n.inet},
		{"link", "add", "l0", "netns", n.laptop, "type", "veth", "peer", "name", "gl", "netns", n.gw},
		{"link", "add", "i0", "netns", n.inet, "type", "veth", "peer", "name", "gi", "netns", n.gw},
		{"-n", n.laptop, "link", "set", "lo", "up"}, {"-n", n.gw, "link", "set", "lo", "up"}, {"-n", n.inet, "link", "set", "lo", "up"},
		{"-n", n.laptop, "addr", "add", "10.77.1.2/24", "dev", "l0"}, {"-n", n.laptop, "link", "set", "l0", "up"},
		{"-n", n.laptop, "route", "add", "default", "via", "10.77.1.1"},
		{"-n", n.gw, "addr", "add", "10.77.1.1/24", "dev", "gl"}, {"-n", n.gw, "link", "set", "gl", "up"},
		{"-n", n.gw, "addr", "add", "10.77.2.1/24", "dev", "gi"}, {"-n", n.gw, "-6", "addr", "add", "2001:db8:ff::1/64", "dev", "gi", "nodad"},
		{"-n", n.gw, "link", "set", "gi", "up"},
		{"-n", n.inet, "addr", "add", "10.77.2.2/24", "dev", "i0"}, {"-n", n.inet, "-6", "addr", "add", "2001:db8:ff::2/64", "dev", "i0", "nodad"},
		{"-n", n.inet, "link", "set", "i0", "up"},
		{"-n", n.inet, "route", "add", "default", "via", "10.77.2.1"},
		{"-n", n.inet, "-6", "route", "add", fourToSixPrefix, "via", "2001:db8:ff::1"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return nil, err
		}
	}
	// The plain path is routed by the gateway host's kernel.
	if out, err := exec.CommandContext(ctx, ipTool, "netns", "exec", n.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("enable IPv4 forwarding: %w: %s", err, out)
	}
	return n, nil
}

var reConfAddress = regexp.MustCompile(`(?m)^Address\s*=\s*(\S+)\s*$`)

// fourToSix runs the 4to6 part once.
func (h *harness) fourToSix(ctx context.Context, dir string) (Figures, error) {
	for _, tool := range []string{"wg", "wg-quick"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("4to6: %s is not installed (apt-get install wireguard-go wireguard-tools)", tool)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	client := h.cfg.WGClient
	if client == "" {
		// The version the gateway's engine runs: the comparison is of webgw,
		// not of an old client (Debian 12's wireguard-go is from 2022).
		client = filepath.Join(dir, "wireguard-go")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", client, "golang.zx2c4.com/wireguard").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("4to6: build wireguard-go: %w: %s", err, out)
		}
	}
	n, err := setupFourToSixNet(ctx)
	if err != nil {
		return nil, fmt.Errorf("4to6: %w", err)
	}
	defer n.remove()
	var stops []*proc
	defer func() {
		for _, p := range stops {
			p.stop()
		}
	}()

	// The backend on the IPv6 host, on both its addresses.
	bargv := append(append([]string(nil), h.backend...), "-cert", h.certFile, "-key", h.keyFile, "-listen", "::")
	bp, err := h.start("backend", dir, netnsArgv(n.inet, bargv), []string{backendRoleEnv + "=backend"}, true)
	if err != nil {
		return nil, err
	}
	stops = append(stops, bp)
	var port string
	if err := bp.readLines(ctx, 20*time.Second, func(line string) bool {
		if v, ok := strings.CutPrefix(line, "http "); ok {
			_, port, _ = net.SplitHostPort(v)
		}
		return port != ""
	}); err != nil {
		return nil, err
	}

	// The gateway with 4to6 on.
	data := filepath.Join(dir, "gateway-data")
	gp, err := h.start("gateway", dir, netnsArgv(n.gw, []string{h.bin, "gateway", "--data-dir", data,
		"--https-addr", "10.77.1.1:0", "--http-addr", "10.77.1.1:0", "--api-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0",
		"--public-ip", "10.77.1.1", "--wg-prefix", fourToSixPrefix, "--wg-listen", ":51820",
		"--access-log=false", "--log-level", "warn"}), nil, false)
	if err != nil {
		return nil, err
	}
	stops = append(stops, gp)
	var apiAddr string
	if err := gp.readLines(ctx, 30*time.Second, func(line string) bool {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "admin" && f[1] == "api" {
			apiAddr = strings.TrimPrefix(f[2], "http://")
		}
		return apiAddr != ""
	}); err != nil {
		return nil, err
	}
	cli := func(args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		argv := netnsArgv(n.gw, append([]string{h.bin}, append(args, "--api-addr", apiAddr, "--data-dir", data)...))
		out, err := exec.CommandContext(cctx, argv[0], argv[1:]...).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, ee.Stderr)
			}
			return "", fmt.Errorf("webgw %s: %w", strings.Join(args, " "), err)
		}
		return string(out), nil
	}
	tok, err := cli("tenant", "add", "bench")
	if err != nil {
		return nil, err
	}
	conf, err := cli("4to6", "add", "laptop", "--token", strings.TrimSpace(tok), "--no-qr")
	if err != nil {
		return nil, err
	}
	m := reConfAddress.FindStringSubmatch(conf)
	if m == nil {
		return nil, fmt.Errorf("4to6 add printed no Address line:\n%s", conf)
	}

	// The laptop: the real wireguard-go and wg(8).
	confFile := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	stripped, err := exec.CommandContext(ctx, "wg-quick", "strip", confFile).Output()
	if err != nil {
		return nil, fmt.Errorf("wg-quick strip: %w", err)
	}
	strippedFile := filepath.Join(dir, "wg0.stripped")
	if err := os.WriteFile(strippedFile, stripped, 0o600); err != nil {
		return nil, err
	}
	wp, err := h.start("wireguard-go", dir, netnsArgv(n.laptop, []string{client, "-f", "wg0"}), []string{"WG_PROCESS_FOREGROUND=1"}, false)
	if err != nil {
		return nil, err
	}
	stops = append(stops, wp)
	if err := waitFor(ctx, 10*time.Second, "wg0 in the laptop", func() bool {
		return ipCmd(ctx, "-n", n.laptop, "link", "show", "wg0") == nil
	}); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, ipTool, "netns", "exec", n.laptop, "wg", "setconf", "wg0", strippedFile).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("wg setconf: %w: %s", err, out)
	}
	for _, args := range [][]string{
		{"-n", n.laptop, "-6", "addr", "add", m[1], "dev", "wg0", "nodad"},
		{"-n", n.laptop, "link", "set", "wg0", "mtu", "1420", "up"},
		{"-n", n.laptop, "-6", "route", "add", "default", "dev", "wg0"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return nil, err
		}
	}

	direct := "http://" + net.JoinHostPort("10.77.2.2", port)
	tunnel := "http://" + net.JoinHostPort("2001:db8:ff::2", port)
	tr := func() *http.Transport {
		return &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dialNetns(ctx, n.laptop, addr) },
			MaxIdleConnsPerHost: 1, DisableCompression: true}
	}
	dt, tt := tr(), tr()
	defer dt.CloseIdleConnections()
	defer tt.CloseIdleConnections()
	if err := waitFor(ctx, 15*time.Second, "the backend through the 4to6 tunnel", func() bool {
		return getOnce(ctx, tt, tunnel+"/small") == nil
	}); err != nil {
		return nil, err
	}

	f := Figures{}
	bulk := func(t *http.Transport, base string) (float64, error) {
		start := time.Now()
		if err := getOnce(ctx, t, fmt.Sprintf("%s/bulk?n=%d", base, fourToSixBulk)); err != nil {
			return 0, err
		}
		return float64(fourToSixBulk) / (1 << 20) / time.Since(start).Seconds(), nil
	}
	if _, err := bulk(dt, direct); err != nil { // warm-up
		return nil, err
	}
	d, err := bulk(dt, direct)
	if err != nil {
		return nil, err
	}
	g0, _ := cpuTicks(gp.pid())
	w0, _ := cpuTicks(wp.pid())
	tun, err := bulk(tt, tunnel)
	if err != nil {
		return nil, err
	}
	g1, _ := cpuTicks(gp.pid())
	w1, _ := cpuTicks(wp.pid())
	gib := float64(fourToSixBulk) / (1 << 30)
	f["direct_mibs"], f["tunnel_mibs"], f["tunnel_vs_direct_mibs"] = d, tun, tun/d
	f["gw_cpu_s_per_gib"] = float64(g1-g0) / clkTck / gib
	f["client_cpu_s_per_gib"] = float64(w1-w0) / clkTck / gib

	rtt := func(t *http.Transport, base string) (float64, error) {
		var us []float64
		for range fourToSixPings {
			start := time.Now()
			if err := getOnce(ctx, t, base+"/small"); err != nil {
				return 0, err
			}
			us = append(us, float64(time.Since(start).Microseconds()))
		}
		slices.Sort(us)
		return us[len(us)/2], nil
	}
	dr, err := rtt(dt, direct)
	if err != nil {
		return nil, err
	}
	trt, err := rtt(tt, tunnel)
	if err != nil {
		return nil, err
	}
	f["direct_rtt_us"], f["tunnel_rtt_us"], f["tunnel_vs_direct_rtt"] = dr, trt, trt/dr
	return f, nil
}

// writeFourToSix prints the 4to6 part.
func (r *Report) writeFourToSix(w io.Writer) {
	runs := r.Scenarios["4to6"]
	if len(runs) == 0 {
		return
	}
	m := r.ScenarioMedian["4to6"]
	fmt.Fprintf(w, "\n4to6: an IPv4-only laptop (wireguard-go) through the gateway's WireGuard endpoint to an IPv6 host,\n"+
		"against the same transfers over the plain veth path (IPv4, routed by the gateway host); %d runs: median (worst)\n\n", len(runs))
	for _, row := range []struct{ label, name, format string }{
		{"bulk download, plain path, MiB/s", "direct_mibs", "%.0f"},
		{"bulk download, 4to6 tunnel, MiB/s", "tunnel_mibs", "%.0f"},
		{"  tunnel / plain", "tunnel_vs_direct_mibs", "%.2f"},
		{"small GET round trip, plain path, µs (median)", "direct_rtt_us", "%.0f"},
		{"small GET round trip, 4to6 tunnel, µs (median)", "tunnel_rtt_us", "%.0f"},
		{"  tunnel / plain", "tunnel_vs_direct_rtt", "%.2f"},
		{"gateway CPU per GiB through the tunnel, s", "gw_cpu_s_per_gib", "%.2f"},
		{"laptop's wireguard-go CPU per GiB, s", "client_cpu_s_per_gib", "%.2f"},
	} {
		fmt.Fprintf(w, "%-52s %10s ("+row.format+")\n", row.label, fmt.Sprintf(row.format, m[row.name]), r.worst("4to6", row.name))
	}
}
