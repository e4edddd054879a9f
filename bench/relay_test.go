package main

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestRelaySmoke runs the relay part through the harness with tiny
// settings: two gateways on one etcd, every figure positive, no failed
// request through either.
func TestRelaySmoke(t *testing.T) {
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
		Parts:    []string{partRelay},
		Rounds:   1,
		Duration: 300 * time.Millisecond,
		Warmup:   100 * time.Millisecond,
		Conns:    4,
		FwdRedo:  -1,
		Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())
	if len(rep.Relay) != 1 {
		t.Fatalf("relay part: %d rounds, want 1 (notes: %v)", len(rep.Relay), rep.Notes)
	}
	m := rep.RelayMedian
	for _, key := range []string{keyWebgw, keyRelay, keyRelay + "_vs_webgw"} {
		names := []string{"rps_small", "p50_ms_small", "p99_ms_small", "rps_1k", "p50_ms_1k"}
		if key == keyRelay {
			names = append(names, "relay_gateway_cpu_us_per_req_small")
		}
		for _, name := range names {
			if v := m[key][name]; v <= 0 {
				t.Errorf("relay %s: %s = %v, want > 0", key, name, v)
			}
		}
		if strings.Contains(key, "_vs_") {
			continue
		}
		for _, name := range []string{"errors_small", "errors_1k"} {
			if v := m[key][name]; v != 0 {
				t.Errorf("relay %s: %s = %v, want 0", key, name, v)
			}
		}
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	for _, s := range []string{"relay: GETs through gateway B", "req/s, small body", "B/A"} {
		if !strings.Contains(table.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, table.String())
		}
	}
	t.Logf("table:\n%s", table.String())
}
