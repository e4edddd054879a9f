package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults of the lossy part.
const (
	defaultNetem         = "loss 1% delay 10ms"
	defaultLossyBulkSize = 32 << 20
)

// parseNetem reads netem's "loss P% delay Dms" (either, in any order).
func parseNetem(s string) (loss float64, delay time.Duration, err error) {
	f := strings.Fields(s)
	bad := func() error {
		return fmt.Errorf("-netem %q not accepted; use netem's words loss and delay, e.g. %q", s, defaultNetem)
	}
	if len(f)%2 != 0 {
		return 0, 0, bad()
	}
	for i := 0; i < len(f); i += 2 {
		switch f[i] {
		case "loss":
			p, err := strconv.ParseFloat(strings.TrimSuffix(f[i+1], "%"), 64)
			if err != nil || p < 0 || p > 100 {
				return 0, 0, bad()
			}
			loss = p / 100
		case "delay":
			d, err := time.ParseDuration(f[i+1])
			if err != nil || d < 0 || d > 10*time.Second {
				return 0, 0, bad()
			}
			delay = d
		default:
			return 0, 0, bad()
		}
	}
	return loss, delay, nil
}

// lossy runs the lossy-link part: the agents and the backend sit in one
// network namespace, the gateway and the load generator in another, joined
// by an emulated link (-netem, both directions). It measures direct http
// (load generator -> backend across the link) and webgw per transport
// (load generator -> gateway -> link -> agent -> backend), cfg.Rounds times
// interleaved. A machine without namespaces skips it with a note.
func (h *harness) lossy(ctx context.Context, rep *Report) error {
	loss, delay, err := parseNetem(h.cfg.Netem)
	if err != nil {
		return err
	}
	dir := filepath.Join(h.work, "lossy")
	n, err := h.setupLossyNet(ctx, dir, loss, delay)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("lossy link not measured: %v", err))
		h.logf("lossy link not measured: %v", err)
		return nil
	}
	var stops []func()
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		n.remove() // after every process in the namespaces has stopped
		for _, line := range n.linkStatsLines() {
			h.logf("lossy link: %s", strings.TrimPrefix(line, "link "))
		}
	}()
	h.place = n
	defer func() { h.place = nil }()
	h.logf("lossy link: namespaces %s (gateway, load generator, %s) and %s (agents, backend, %s), %q each way",
		n.gw, n.gwIP, n.agent, n.agentIP, h.cfg.Netem)

	backend, err := h.startBackend(ctx, dir)
	if err != nil {
		return fmt.Errorf("lossy link: %w", err)
	}
	stops = append(stops, backend.proc.stop)
	targets := map[string]*target{keyHTTP: backend.target(keyHTTP, nil)}
	measured := map[string][]*proc{keyHTTP: {backend.proc}}
	keys := []string{keyHTTP}
	for _, tr := range h.cfg.Transports {
		key := webgwKey(tr)
		s, err := h.startStack(ctx, filepath.Join(dir, tr), backend, tr, false)
		if err != nil {
			return fmt.Errorf("lossy link, webgw over %s: %w", tr, err)
		}
		stops = append(stops, s.stop)
		targets[key] = s.webgwTarget(key)
		measured[key] = []*proc{s.gateway, s.agent}
		keys = append(keys, key)
	}
	h.extra = []*proc{n.link}
	defer func() { h.extra = nil }()

	for r := range h.cfg.Rounds {
		tag := fmt.Sprintf("lossy %d/%d", r+1, h.cfg.Rounds)
		rd := Round{}
		for _, key := range keys {
			rd[key] = Figures{}
		}
		for _, body := range []struct{ key, path string }{{"1k", "/1k"}, {"small", "/small"}} {
			for _, key := range keys {
				lr, err := h.load(ctx, targets[key], body.path, measured[key], backend.proc, nil)
				if err != nil {
					return fmt.Errorf("lossy link: load %s %s: %w", key, body.key, err)
				}
				f := rd[key]
				sfx := "_" + body.key
				f["rps"+sfx] = lr.rps
				f["p50_ms"+sfx] = lr.p50.Seconds() * 1e3
				f["p99_ms"+sfx] = lr.p99.Seconds() * 1e3
				f["cpu_us_per_req"+sfx] = lr.cpuUS
				f["errors"+sfx] = float64(lr.errors)
				f["foreign_cpu_pct"+sfx] = lr.foreignPct
				h.logf("%s  %-5s %-13s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  %6.1f µs CPU/req  other load %4.1f%%%s",
					tag, body.key, key, lr.rps, f["p50_ms"+sfx], f["p99_ms"+sfx], lr.cpuUS, lr.foreignPct, errNote(lr.errors))
			}
		}
		for _, key := range keys {
			br, err := h.bulk(ctx, targets[key], measured[key], h.cfg.LossyBulkSize)
			if err != nil {
				return fmt.Errorf("lossy link: bulk %s: %w", key, err)
			}
			rd[key]["bulk_mib_s"] = br.mibps
			rd[key]["bulk_cpu_s_per_gib"] = br.cpuSPerGiB
			h.logf("%s  bulk  %-13s %8.1f MiB/s  %5.2f CPU s/GiB", tag, key, br.mibps, br.cpuSPerGiB)
		}
		rd.addRatios()
		rep.Lossy = append(rep.Lossy, rd)
	}
	return nil
}
