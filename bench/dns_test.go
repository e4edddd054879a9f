package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// startRefZone serves the reference zone in this process and returns its
// UDP address.
func startRefZone(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: newRefZone(dnsDomain, dnsName, netip.MustParseAddr(dnsIP))}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// TestDNSDirect runs the dns part's clients against the reference zone in
// this process (no webgw): the answers check out, and every figure is
// positive with nothing lost.
func TestDNSDirect(t *testing.T) {
	addr := startRefZone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := checkDNS(ctx, addr); err != nil {
		t.Fatal(err)
	}
	h := &harness{cfg: Config{Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, DNSClients: 4}}
	h.cfg.complete()
	bin, _ := exec.LookPath("dnsperf")
	for _, kind := range dnsKinds {
		r, err := h.dnsLoad(ctx, addr, dnsQueries(kind), kind == "exist", nil, nil)
		if err != nil {
			t.Fatalf("go client, %s: %v", kind, err)
		}
		if r.qps <= 0 || r.p50 <= 0 || r.p99 < r.p50 || r.errors != 0 || r.lost != 0 {
			t.Errorf("go client, %s: %.0f answers/s, p50 %s, p99 %s, %d wrong, %d lost (first: %v)", kind, r.qps, r.p50, r.p99, r.errors, r.lost, r.firstErr)
		}
		// The other kind's names get the other rcode: all wrong.
		if w, err := h.dnsLoad(ctx, addr, dnsQueries(kind), kind != "exist", nil, nil); err == nil || !strings.Contains(err.Error(), "rcode") {
			t.Errorf("go client, %s names checked as the other kind: %v, want an error naming the rcode (%+v)", kind, err, w)
		}
		t.Logf("go client, %s: %.0f answers/s, p50 %s, p99 %s", kind, r.qps, r.p50, r.p99)
		if bin == "" {
			continue
		}
		file := filepath.Join(t.TempDir(), "q.txt")
		var b strings.Builder
		for _, n := range dnsQueries(kind) {
			b.WriteString(n + " A\n")
		}
		if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := h.dnsperfRun(ctx, bin, addr, file, kind == "exist", nil, nil)
		if err != nil {
			t.Fatalf("dnsperf, %s: %v", kind, err)
		}
		if p.qps <= 0 || p.mean <= 0 || p.errors != 0 {
			t.Errorf("dnsperf, %s: %.0f answers/s, mean %s, %d wrong", kind, p.qps, p.mean, p.errors)
		}
		t.Logf("dnsperf, %s: %.0f answers/s, mean %s, %.3f%% lost", kind, p.qps, p.mean, p.lossPct)
	}
}

func TestParseDNSPerf(t *testing.T) {
	const head = `DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 33439 -d q.txt -l 3 -c 4 -q 64
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         1000
  Queries completed:    990 (99.00%)
  Queries lost:         10 (1.00%)

`
	const tail = `  Average packet size:  request 30, response 58
  Run time (s):         3.004466
  Queries per second:   330.0

  Average Latency (s):  0.000521 (min 0.000007, max 0.031828)
  Latency StdDev (s):   0.000734
`
	for _, tc := range []struct {
		name          string
		codes         string
		exist         bool
		answers, errs int
		qps           float64
	}{
		{"all NOERROR", "NOERROR 990 (100.00%)", true, 990, 0, 330},
		{"all NXDOMAIN", "NXDOMAIN 990 (100.00%)", false, 990, 0, 330},
		{"some wrong", "NOERROR 660 (66.67%), SERVFAIL 330 (33.33%)", true, 660, 330, 220},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseDNSPerf(head+"  Response codes:       "+tc.codes+"\n"+tail, tc.exist)
			if err != nil {
				t.Fatal(err)
			}
			if r.answers != tc.answers || r.errors != tc.errs || r.lost != 10 || r.lossPct != 1 ||
				r.qps != tc.qps || r.mean != 521*time.Microsecond || r.sd != 734*time.Microsecond {
				t.Errorf("got %+v", r)
			}
		})
	}
	if _, err := parseDNSPerf("dnsperf: invalid option\n", true); err == nil {
		t.Error("no statistics: want an error")
	}
}

// TestDNSSmoke runs the dns part through the harness with tiny settings:
// the gateway's DNS and the reference, every figure positive, no wrong
// answer.
func TestDNSSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds webgw and starts processes")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the harness reads /proc")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Config{
		Parts:      []string{partDNS},
		Rounds:     1,
		Duration:   300 * time.Millisecond,
		Warmup:     100 * time.Millisecond,
		DNSClients: 4,
		FwdRedo:    -1,
		Progress:   &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())
	if len(rep.DNS) != 1 {
		t.Fatalf("dns part: %d rounds, want 1 (notes: %v)", len(rep.DNS), rep.Notes)
	}
	names := []string{"go_exist_qps", "go_exist_p50_ms", "go_exist_p99_ms", "go_missing_qps", "go_missing_p50_ms", "go_missing_p99_ms"}
	if _, err := exec.LookPath("dnsperf"); err == nil {
		names = append(names, "dnsperf_exist_qps", "dnsperf_exist_mean_ms", "dnsperf_missing_qps", "dnsperf_missing_mean_ms")
	}
	for _, key := range []string{keyDirect, keyWebgw, keyWebgw + "_vs_direct"} {
		for _, name := range names {
			if v := rep.DNSMedian[key][name]; v <= 0 {
				t.Errorf("dns %s: %s = %v, want > 0", key, name, v)
			}
		}
		if strings.Contains(key, "_vs_") {
			continue
		}
		for name, v := range rep.DNSMedian[key] {
			if strings.HasSuffix(name, "_errors") && v != 0 {
				t.Errorf("dns %s: %s = %v, want 0", key, name, v)
			}
		}
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	for _, s := range []string{"dns: the gateway's authoritative DNS server", "answers/s, existing name, Go client", "webgw/ref"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, table.String())
		}
	}
	t.Logf("table:\n%s", table.String())
}
