package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/ygg"
)

// Yggdrasil figures (Report.Scenarios["ygg"]): a public client's requests
// through the gateway to one backend process (`bench yggbackend`) that
// serves the same handler on two paths: on its own embedded Yggdrasil
// node's overlay address (the gateway dials it through its node, peered
// over tls:// on loopback) and on plain loopback. Keys, per path P (plain,
// ygg):
//
//	P_small_rps, P_1k_rps     req/s, cfg.Conns keep-alive clients, HTTP/1.1 over TLS to the gateway
//	P_small_p50_ms            latency of a small request
//	P_bulk_mibs               one download of yggBulk bytes
//	ygg_vs_plain_small_rps, ygg_vs_plain_1k_rps, ygg_vs_plain_bulk_mibs   ratios
const yggBulk = 256 << 20

// yggBackendMain is `bench yggbackend -peer URI`: an embedded Yggdrasil node
// peering with URI, serving the backend's handler on its overlay address
// (port 8080) and on a loopback port. It prints "ygg ADDR" and "http ADDR"
// and serves until stdin closes.
func yggBackendMain(args []string) int {
	fs := flag.NewFlagSet("yggbackend", flag.ContinueOnError)
	peer := fs.String("peer", "", "the gateway's Yggdrasil access point, tls://HOST:PORT")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	key, err := ygg.GenerateKey()
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggbackend:", err)
		return 1
	}
	node, err := ygg.Start(ygg.Config{PrivateKey: key, Peers: []string{*peer}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggbackend:", err)
		return 1
	}
	defer node.Close()
	oln, err := node.Listen("tcp", ":8080")
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggbackend:", err)
		return 1
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggbackend:", err)
		return 1
	}
	h := http.HandlerFunc(serveBackend)
	go (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(oln)
	go (&http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}).Serve(pln)
	fmt.Printf("ygg %s\nhttp %s\n", node.Addr(), pln.Addr())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// yggScenario runs the Yggdrasil part once.
func (h *harness) yggScenario(ctx context.Context, dir string) (Figures, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var stops []*proc
	defer func() {
		for _, p := range stops {
			p.stop()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	access := "tls://" + ln.Addr().String()
	ln.Close()
	g, err := h.startGateway(ctx, dir, "gateway", nil, "--ygg-listen", access,
		"--upstream-allow", "200::/7", "--upstream-allow", "127.0.0.1/32")
	if err != nil {
		return nil, err
	}
	stops = append(stops, g.proc)
	bp, err := h.start("yggbackend", dir, append(h.selfArgv(), "yggbackend", "-peer", access), nil, true)
	if err != nil {
		return nil, err
	}
	stops = append(stops, bp)
	var overlay, plain string
	if err := bp.readLines(ctx, 30*time.Second, func(line string) bool {
		if v, ok := strings.CutPrefix(line, "ygg "); ok {
			overlay = v
		}
		if v, ok := strings.CutPrefix(line, "http "); ok {
			plain = v
		}
		return overlay != "" && plain != ""
	}); err != nil {
		return nil, err
	}
	if _, err := h.cli(ctx, g, "tenant", "add", "bench"); err != nil {
		return nil, err
	}
	targets := map[string]*target{}
	for key, up := range map[string]string{"ygg": "http://[" + overlay + "]:8080", "plain": "http://" + plain} {
		out, err := h.cli(ctx, g, "service", "add", key+"svc", "--tenant", "bench", "--upstream", up)
		if err != nil {
			return nil, err
		}
		public, err := url.Parse(strings.TrimSpace(out))
		if err != nil || public.Scheme != "https" {
			return nil, fmt.Errorf("service add printed %q, want the service URL", out)
		}
		t := g.publicTarget(key, public)
		// The first packets after peering are dropped while a route is found.
		if err := waitOK(ctx, t, 30*time.Second); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		targets[key] = t
	}

	f := Figures{}
	measured := []*proc{g.proc}
	for _, key := range []string{"plain", "ygg", "plain", "ygg"} { // interleaved; the second of each counts
		t := targets[key]
		for _, body := range []struct{ name, path string }{{"small", "/small"}, {"1k", "/1k"}} {
			lr, err := h.load(ctx, t, body.path, measured, bp, nil)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", key, body.name, err)
			}
			f[key+"_"+body.name+"_rps"] = lr.rps
			if body.name == "small" {
				f[key+"_small_p50_ms"] = float64(lr.p50.Microseconds()) / 1000
			}
		}
		tr := t.transport(false, 1)
		start := time.Now()
		err := getOnce(ctx, tr, fmt.Sprintf("%s/bulk?n=%d", t.base, yggBulk))
		tr.CloseIdleConnections()
		if err != nil {
			return nil, fmt.Errorf("%s bulk: %w", key, err)
		}
		f[key+"_bulk_mibs"] = float64(yggBulk) / (1 << 20) / time.Since(start).Seconds()
	}
	for _, k := range []string{"small_rps", "1k_rps", "bulk_mibs"} {
		if f["plain_"+k] > 0 {
			f["ygg_vs_plain_"+k] = f["ygg_"+k] / f["plain_"+k]
		}
	}
	return f, nil
}

// writeYgg prints the Yggdrasil part.
func (r *Report) writeYgg(w io.Writer) {
	runs := r.Scenarios["ygg"]
	if len(runs) == 0 {
		return
	}
	m := r.ScenarioMedian["ygg"]
	fmt.Fprintf(w, "\nygg: a public HTTPS client through the gateway to one backend, reached by the gateway over its\n"+
		"embedded Yggdrasil node (the backend's own node, peered over tls:// on loopback) and over plain loopback;\n"+
		"%d runs: median (worst)\n\n", len(runs))
	fmt.Fprintf(w, "%-40s %14s %14s %8s\n", "measurement", "plain loopback", "over Yggdrasil", "ratio")
	for _, row := range []struct{ label, key, format string }{
		{"req/s, small body", "small_rps", "%.0f"},
		{"req/s, 1 KiB body", "1k_rps", "%.0f"},
		{"bulk download, MiB/s", "bulk_mibs", "%.0f"},
	} {
		fmt.Fprintf(w, "%-40s %14s %14s %8s\n", row.label, fmt.Sprintf(row.format, m["plain_"+row.key]),
			fmt.Sprintf(row.format, m["ygg_"+row.key]), fmt.Sprintf("%.2f (%.2f)", m["ygg_vs_plain_"+row.key], r.worst("ygg", "ygg_vs_plain_"+row.key)))
	}
	fmt.Fprintf(w, "%-40s %14.2f %14.2f\n", "latency p50 of a small request, ms", m["plain_small_p50_ms"], m["ygg_small_p50_ms"])
}
