package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// keyRelay is the relay part's second target: the harness talks HTTPS to a
// gateway that holds no tunnel for the name, which relays each request over
// its peer session to the gateway that does (issue 6).
const keyRelay = "webgw_relay"

// Relay figures (Report.Relay), per round, for keyWebgw (harness -> gateway
// A, which holds the agent's tunnel -> agent -> backend) and keyRelay
// (harness -> gateway B -> peer session -> A -> agent -> backend), both
// gateways on one etcd (`bench etcd`), per body BODY = small or 1k:
//
//	rps_BODY, p50_ms_BODY, p99_ms_BODY     as in the main part (same load)
//	cpu_us_per_req_BODY                    CPU µs per request of the webgw processes
//	                                       (A and the agent; with keyRelay B too)
//	relay_gateway_cpu_us_per_req_BODY      B's part (keyRelay only)
//	gateway_cpu_us_per_req_BODY            A's part
//	agent_cpu_us_per_req_BODY              the agent's part
//	errors_BODY, foreign_cpu_pct_BODY      failed requests; other load, %
//
// The ratio keyRelay+"_vs_webgw" is relayed / through A, per round. A run
// in which other processes took more than fwdOtherMax % of the CPUs is made
// again, up to cfg.FwdRedo times, and the quietest kept (Report.RelayRedone).

// startEtcd starts `bench etcd` and reads its client address.
func (h *harness) startEtcd(ctx context.Context, dir string) (*proc, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	argv := append(h.selfArgv(), "etcd", "-dir", filepath.Join(dir, "etcd-data"))
	p, err := h.start("etcd", dir, argv, []string{backendRoleEnv + "=etcd"}, true)
	if err != nil {
		return nil, "", err
	}
	var addr string
	err = p.readLines(ctx, 30*time.Second, func(line string) bool {
		addr, _ = strings.CutPrefix(line, "client ")
		return addr != ""
	})
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// relayPart runs the relay part: small and 1 KiB GETs through the gateway
// that holds the agent's tunnel and through another gateway of its
// cluster, interleaved, cfg.Rounds times.
func (h *harness) relayPart(ctx context.Context, rep *Report) error {
	dir := filepath.Join(h.work, "relay")
	etcd, etcdAddr, err := h.startEtcd(ctx, dir)
	if err != nil {
		return fmt.Errorf("relay: etcd: %w", err)
	}
	defer etcd.stop()
	backend, err := h.startBackend(ctx, filepath.Join(dir, "backend"))
	if err != nil {
		return err
	}
	defer backend.proc.stop()
	store := "etcd://" + etcdAddr
	ga, err := h.startGateway(ctx, dir, "gateway-a", nil, "--store", store)
	if err != nil {
		return fmt.Errorf("relay: gateway A: %w", err)
	}
	defer ga.proc.stop()
	gb, err := h.startGateway(ctx, dir, "gateway-b", nil, "--store", store)
	if err != nil {
		return fmt.Errorf("relay: gateway B: %w", err)
	}
	defer gb.proc.stop()
	out, err := h.cli(ctx, ga, "tenant", "add", "bench")
	if err != nil {
		return err
	}
	agent, public, err := h.startAgent(ctx, dir, "agent", ga, nil, "--transport", "tcp", "--max-gateways", "1", "--token", strings.TrimSpace(out),
		"--name", "relay", "http://"+backend.httpAddr)
	if err != nil {
		return fmt.Errorf("relay: agent: %w", err)
	}
	defer agent.stop()
	// The same name at B's port: the agent is not connected to B.
	atB := *public
	atB.Host = net.JoinHostPort(public.Hostname(), portOf(gb.httpsAddr))
	targets := []*target{ga.publicTarget(keyWebgw, public), gb.publicTarget(keyRelay, &atB)}
	for _, t := range targets {
		if err := waitOK(ctx, t, 10*time.Second); err != nil {
			return fmt.Errorf("relay: %w\ngateway A:\n%s\ngateway B:\n%s", err, ga.proc.tail(), gb.proc.tail())
		}
	}
	measured := map[string][]*proc{
		keyWebgw: {ga.proc, agent},
		keyRelay: {gb.proc, ga.proc, agent},
	}
	h.logf("relay: gateway A %s holds the tunnel, gateway B %s relays to it (etcd %s)", ga.httpsAddr, gb.httpsAddr, etcdAddr)

	saved := h.extra
	defer func() { h.extra = saved }()
	for r := range h.cfg.Rounds {
		tag := fmt.Sprintf("relay %d/%d", r+1, h.cfg.Rounds)
		rd := Round{keyWebgw: {}, keyRelay: {}}
		for _, body := range []struct{ key, path string }{{"small", "/small"}, {"1k", "/1k"}} {
			for _, t := range targets {
				// Our other processes are no other load.
				h.extra = append(append([]*proc(nil), saved...), etcd)
				if t.key == keyWebgw {
					h.extra = append(h.extra, gb.proc)
				}
				lr, err := quietest(h, &rep.RelayRedone, tag+" "+body.key+" "+t.key, func() (*loadResult, float64, int64, error) {
					lr, err := h.load(ctx, t, body.path, measured[t.key], backend.proc, nil)
					if err != nil {
						return nil, 0, 0, err
					}
					// 5 s of 2 CPUs are 1000 ticks: the share decides.
					return lr, lr.foreignPct, fwdOtherMinTicks, nil
				})
				if err != nil {
					return fmt.Errorf("relay %s %s: %w", t.key, body.key, err)
				}
				f := rd[t.key]
				sfx := "_" + body.key
				f["rps"+sfx] = lr.rps
				f["p50_ms"+sfx] = ms(lr.p50)
				f["p99_ms"+sfx] = ms(lr.p99)
				f["cpu_us_per_req"+sfx] = lr.cpuUS
				f["errors"+sfx] = float64(lr.errors)
				f["foreign_cpu_pct"+sfx] = lr.foreignPct
				per := lr.perUS
				if t.key == keyRelay {
					f["relay_gateway_cpu_us_per_req"+sfx] = per[0]
					per = per[1:]
				}
				f["gateway_cpu_us_per_req"+sfx] = per[0]
				f["agent_cpu_us_per_req"+sfx] = per[1]
				h.logf("%s  %-5s %-12s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  %6.1f µs CPU/req  other load %4.1f%%%s",
					tag, body.key, t.key, lr.rps, f["p50_ms"+sfx], f["p99_ms"+sfx], lr.cpuUS, lr.foreignPct, errNote(lr.errors))
			}
		}
		rd.addRelayRatios()
		rep.Relay = append(rep.Relay, rd)
	}
	return h.holdsNoTunnel(ctx, gb)
}

// addRelayRatios adds relayed / through the holding gateway for every
// figure both have but counts of errors and other load.
func (r Round) addRelayRatios() {
	f := Figures{}
	for k, v := range r[keyRelay] {
		if strings.Contains(k, "errors") || strings.Contains(k, "foreign") {
			continue
		}
		if d, ok := r[keyWebgw][k]; ok && d != 0 {
			f[k] = v / d
		}
	}
	r[keyRelay+"_vs_webgw"] = f
}

// writeRelay prints the relay part.
func (r *Report) writeRelay(w io.Writer) {
	if len(r.Relay) == 0 {
		return
	}
	s := r.Settings
	fmt.Fprintf(w, "\nrelay: GETs through gateway B, which holds no tunnel for the name and relays each request over its peer session\n")
	fmt.Fprintf(w, "to gateway A, which holds the agent's (both on one etcd), against the same GETs through A\n")
	fmt.Fprintf(w, "(%d rounds, median; %s per run after %s warm-up, %d keep-alive clients, %s; CPU: A and the agent, and B when relayed)\n\n",
		len(r.Relay), fmtDur(s.DurationS), fmtDur(s.WarmupS), s.Conns, s.Protocol)
	var rows []tableRow
	for _, body := range []struct{ key, name string }{{"small", "small body"}, {"1k", "1 KiB body"}} {
		sfx := "_" + body.key
		rows = append(rows,
			tableRow{"req/s, " + body.name, "rps" + sfx, "%.0f"},
			tableRow{"  latency p50, ms", "p50_ms" + sfx, "%.2f"},
			tableRow{"  latency p99, ms", "p99_ms" + sfx, "%.2f"},
			tableRow{"  CPU µs/req (webgw processes)", "cpu_us_per_req" + sfx, "%.1f"},
			tableRow{"    gateway B (relays)", "relay_gateway_cpu_us_per_req" + sfx, "%.1f"},
			tableRow{"    gateway A (holds the tunnel)", "gateway_cpu_us_per_req" + sfx, "%.1f"},
			tableRow{"    agent", "agent_cpu_us_per_req" + sfx, "%.1f"})
	}
	writeColumns(w, r.RelayMedian, []tableCol{{"through A", keyWebgw, ""}, {"through B", keyRelay, ""}, {"B/A", keyRelay + "_vs_webgw", "%.2f"}}, rows)
	var other float64
	for _, rd := range r.Relay {
		for _, key := range []string{keyWebgw, keyRelay} {
			for name, v := range rd[key] {
				if strings.HasPrefix(name, "foreign_cpu_pct") {
					other = max(other, v)
				}
			}
		}
	}
	fmt.Fprintf(w, "other processes, at most: %.1f%% of the CPUs in the runs kept; %d runs made again because other processes took more than %g%%\n",
		other, r.RelayRedone, fwdOtherMax)
	for i, rd := range r.Relay {
		for _, key := range []string{keyWebgw, keyRelay} {
			for name, v := range rd[key] {
				if strings.HasPrefix(name, "errors") && v > 0 {
					fmt.Fprintf(w, "WARNING: relay round %d, %s: %.0f failed requests (%s)\n", i+1, key, v, strings.TrimPrefix(name, "errors_"))
				}
			}
		}
	}
}

// portOf is the port of a host:port address.
func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// holdsNoTunnel checks that gateway B holds no agent session for the name
// relay: relayed means that, so a change that lets the agent reach B too
// cannot pass for a fast relay.
func (h *harness) holdsNoTunnel(ctx context.Context, gb *gateway) error {
	st, err := h.cli(ctx, gb, "status", "--json")
	if err != nil {
		return fmt.Errorf("relay: status of gateway B: %w", err)
	}
	var bs struct {
		Agents []struct {
			Services []string `json:"services"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(st), &bs); err != nil {
		return fmt.Errorf("relay: status of gateway B: %w", err)
	}
	for _, a := range bs.Agents {
		if slices.Contains(a.Services, "relay") {
			return fmt.Errorf("relay: the agent holds a tunnel to gateway B too: nothing was relayed")
		}
	}
	return nil
}
