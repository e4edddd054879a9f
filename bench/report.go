package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Figures are one target's measurements, by name:
//
//	rps_1k, rps_small                    requests per second
//	p50_ms_*, p99_ms_*                   latency percentiles
//	cpu_us_per_req_*                     CPU µs per request of the measured processes
//	                                     (direct: the backend; webgw: gateway+agent)
//	gateway_cpu_us_per_req_*, agent_...  webgw only: the two parts of the above
//	backend_cpu_us_per_req_*             the backend's CPU µs per request
//	loadgen_cpu_us_per_req_*             the harness's (load generator's) CPU µs per request
//	errors_*                             failed requests in the measured window
//	foreign_cpu_pct_*                    % of the machine's CPU used by other processes in the window
//	bulk_mib_s, bulk_cpu_s_per_gib       one large download: MiB/s, CPU s per GiB
//	idle_kb_per_conn                     RSS growth per held idle connection, KiB
//	gateway_idle_kb_per_conn, agent_...  webgw only: the two parts of the above
type Figures map[string]float64

// Round maps direct_http, direct_https, webgw (agent over tcp), webgw_quic
// and the ratios of that round (webgw_vs_http, webgw_vs_https,
// webgw_quic_vs_http, ...) to their figures.
type Round map[string]Figures

// addRatios adds webgw/direct for every webgw target and every figure both have.
func (r Round) addRatios() {
	for wk, w := range r {
		if !isWebgwKey(wk) {
			continue
		}
		vsHTTP, vsHTTPS := ratioKeys(wk)
		for base, key := range map[string]string{keyHTTP: vsHTTP, keyHTTPS: vsHTTPS} {
			if _, ok := r[base]; !ok {
				continue
			}
			f := Figures{}
			for k, v := range w {
				if d, ok := r[base][k]; ok && d != 0 && !strings.HasPrefix(k, "errors") && !strings.HasPrefix(k, "foreign") {
					f[k] = v / d
				}
			}
			r[key] = f
		}
	}
}

// medianRound is the per-figure median of rounds (ratios: the median of the
// per-round ratios).
func medianRound(rounds []Round) Round {
	m := Round{}
	if len(rounds) == 0 {
		return m
	}
	for key := range rounds[0] {
		f := Figures{}
		for name := range rounds[0][key] {
			var vs []float64
			for _, rd := range rounds {
				if v, ok := rd[key][name]; ok {
					vs = append(vs, v)
				}
			}
			f[name] = median(vs)
		}
		m[key] = f
	}
	return m
}

// Report is the result of Run.
type Report struct {
	Date         time.Time `json:"date"`
	Host         string    `json:"host"`
	CPUs         int       `json:"cpus"`
	CPUModel     string    `json:"cpu_model"`
	Kernel       string    `json:"kernel"`
	GoVersion    string    `json:"go_version"`
	Source       string    `json:"source"`
	LoadAvgStart string    `json:"loadavg_start"`
	LoadAvgEnd   string    `json:"loadavg_end"`
	// BusyPctBefore is how busy the machine was (% of all CPUs) in the second
	// before the run; ForeignPctMax the most that other processes took during
	// any req/s run. Both should be near 0 for figures worth keeping.
	BusyPctBefore float64  `json:"busy_pct_before"`
	ForeignPctMax float64  `json:"foreign_pct_max"`
	Settings      Settings `json:"settings"`
	// Rounds holds each round's figures; Median the per-figure median over
	// rounds (ratios: the median of the per-round ratios).
	Rounds []Round `json:"rounds"`
	Median Round   `json:"median"`
	Goals  []Goal  `json:"goals"`
	// Scenarios holds each run of the scenarios (failover_tcp,
	// failover_quic, new_upstream; see failover.go and upstream.go), and
	// ScenarioMedian their per-figure medians. ScenarioGoals are judged on
	// the worst run.
	Scenarios      map[string][]Figures `json:"scenarios,omitempty"`
	ScenarioMedian map[string]Figures   `json:"scenario_median,omitempty"`
	ScenarioGoals  []Goal               `json:"scenario_goals,omitempty"`
	// Lossy holds each round of the lossy-link part (direct_http, webgw,
	// webgw_quic and their ratios to direct_http), LossyMedian the medians.
	Lossy       []Round `json:"lossy,omitempty"`
	LossyMedian Round   `json:"lossy_median,omitempty"`
	// Forward holds each round of the forward part (direct, webgw,
	// webgw_quic and their ratios to direct; see forward.go),
	// ForwardMedian the medians and ForwardGoals the goals of issue 4.
	Forward       []Round `json:"forward,omitempty"`
	ForwardMedian Round   `json:"forward_median,omitempty"`
	ForwardGoals  []Goal  `json:"forward_goals,omitempty"`
	// ForwardRedone counts forward runs made again because other
	// processes competed for the CPUs (Config.FwdRedo).
	ForwardRedone int `json:"forward_redone,omitempty"`
	// DNS holds each round of the dns part (direct: the reference server,
	// webgw: the gateway, and webgw_vs_direct; see dns.go), DNSMedian the
	// medians, DNSRedone the runs made again for other load.
	DNS       []Round `json:"dns,omitempty"`
	DNSMedian Round   `json:"dns_median,omitempty"`
	DNSRedone int     `json:"dns_redone,omitempty"`
	// Relay holds each round of the relay part (webgw: through the
	// gateway holding the tunnel, webgw_relay: through another gateway of
	// its cluster, and webgw_relay_vs_webgw; see relay.go), RelayMedian
	// the medians.
	Relay       []Round `json:"relay,omitempty"`
	RelayMedian Round   `json:"relay_median,omitempty"`
	RelayRedone int     `json:"relay_redone,omitempty"`
	// Notes say what was skipped and why.
	Notes []string `json:"notes,omitempty"`
}

// addScenario records one run of scenario key.
func (r *Report) addScenario(key string, f Figures) {
	if r.Scenarios == nil {
		r.Scenarios = map[string][]Figures{}
	}
	r.Scenarios[key] = append(r.Scenarios[key], f)
}

// worst is the worst value of name over the runs of scenario key: the
// lowest for rates and shares (rps_*, *_pct_*, *mibs*), else the highest.
func (r *Report) worst(key, name string) float64 {
	low := strings.HasPrefix(name, "rps") || strings.Contains(name, "_pct_") || strings.Contains(name, "mibs") || strings.HasSuffix(name, "_rps")
	var w float64
	for i, f := range r.Scenarios[key] {
		if v := f[name]; i == 0 || (!low && v > w) || (low && v < w) {
			w = v
		}
	}
	return w
}

// Settings are the run's parameters.
type Settings struct {
	Rounds    int     `json:"rounds"`
	DurationS float64 `json:"duration_s"`
	WarmupS   float64 `json:"warmup_s"`
	Conns     int     `json:"conns"`
	IdleConns int     `json:"idle_conns"`
	BulkBytes int64   `json:"bulk_bytes"`
	Protocol  string  `json:"protocol"`
	// Transports are the agent transports measured, one webgw target each.
	Transports []string `json:"transports"`
	// Parts run (main, failover, upstream, lossy); ScenarioConns the steady load's workers.
	Parts         []string `json:"parts"`
	ScenarioConns int      `json:"scenario_conns"`
	// Netem is the lossy part's link; LossyBulkBytes its bulk download.
	Netem          string `json:"netem"`
	LossyBulkBytes int64  `json:"lossy_bulk_bytes"`
	// The forward part: bytes per bulk run, dialers of the connections/s
	// run, and the UDP run's offered rate, datagram size and sockets.
	FwdBulkBytes int64 `json:"fwd_bulk_bytes"`
	FwdDialers   int   `json:"fwd_dialers"`
	UDPRate      int   `json:"udp_rate"`
	UDPSize      int   `json:"udp_size"`
	UDPFlows     int   `json:"udp_flows"`
	// DNSClients is the dns part's queries in flight.
	DNSClients int `json:"dns_clients"`
}

// Goal is one goal of an issue (2: the main part, 4: forward; the
// scenarios' own) and whether the median (or the worst run) met it.
type Goal struct {
	Name     string  `json:"name"`
	Measured float64 `json:"measured"`
	Op       string  `json:"op"` // ">=" or "<="
	Limit    float64 `json:"limit"`
	Unit     string  `json:"unit"`
	Met      bool    `json:"met"`
	Note     string  `json:"note,omitempty"`
}

func newReport(cfg Config) *Report {
	host, _ := os.Hostname()
	proto := "HTTP/1.1"
	if cfg.H2 {
		proto = "HTTP/2 (h2; h2c to the plain backend)"
	}
	return &Report{
		Date: time.Now().UTC().Truncate(time.Second), Host: host, CPUs: runtime.NumCPU(),
		CPUModel: cpuModel(), Kernel: firstLine("/proc/sys/kernel/osrelease"), GoVersion: runtime.Version(),
		Source: gitSource(), LoadAvgStart: loadAvg(),
		Settings: Settings{Rounds: cfg.Rounds, DurationS: cfg.Duration.Seconds(), WarmupS: cfg.Warmup.Seconds(),
			Conns: cfg.Conns, IdleConns: cfg.IdleConns, BulkBytes: cfg.BulkSize, Protocol: proto,
			Parts: cfg.Parts, ScenarioConns: cfg.ScenarioConns, Netem: cfg.Netem, LossyBulkBytes: cfg.LossyBulkSize,
			FwdBulkBytes: cfg.FwdBulkSize, FwdDialers: cfg.FwdDialers, UDPRate: cfg.UDPRate, UDPSize: cfg.UDPSize, UDPFlows: cfg.UDPFlows,
			DNSClients: cfg.DNSClients},
	}
}

// finish computes the medians and the goals.
func (r *Report) finish() {
	r.LoadAvgEnd = loadAvg()
	r.finishScenarios()
	r.LossyMedian = medianRound(r.Lossy)
	r.DNSMedian = medianRound(r.DNS)
	r.RelayMedian = medianRound(r.Relay)
	for _, rd := range slices.Concat(r.Lossy, r.Forward, r.DNS, r.Relay) {
		for key, f := range rd {
			for name, v := range f {
				// The forward part's bulk runs are too short to count (fwdOtherMinTicks).
				counted := strings.HasPrefix(name, "foreign_cpu_pct") || strings.HasPrefix(name, "conn_foreign") || strings.HasPrefix(name, "udp_foreign") ||
					strings.HasPrefix(name, "go_") && strings.HasSuffix(name, "_foreign_cpu_pct") || strings.HasPrefix(name, "dnsperf_") && strings.HasSuffix(name, "_foreign_cpu_pct")
				if counted && !strings.Contains(key, "_vs_") {
					r.ForeignPctMax = max(r.ForeignPctMax, v)
				}
			}
		}
	}
	r.finishForward()
	if len(r.Rounds) == 0 {
		return
	}
	for _, rd := range r.Rounds {
		for key, f := range rd {
			for name, v := range f {
				if strings.HasPrefix(name, "foreign_cpu_pct") && !strings.Contains(key, "_vs_") {
					r.ForeignPctMax = max(r.ForeignPctMax, v)
				}
			}
		}
	}
	r.Median = medianRound(r.Rounds)
	if _, ok := r.Median[keyWebgw]; !ok {
		return // the goals are judged on the tcp transport
	}
	m := r.Median
	ratio := m[keyVsHTTP]["rps_1k"]
	r.Goals = []Goal{
		{Name: "req/s through webgw (HTTPS terminated at the edge) / direct plain HTTP, 1 KiB body",
			Measured: ratio, Op: ">=", Limit: 0.35, Unit: "", Met: ratio >= 0.35,
			Note: fmt.Sprintf("against direct HTTPS to the backend: %.2f", m[keyVsHTTPS]["rps_1k"])},
		{Name: "gateway+agent CPU per request, 1 KiB body",
			Measured: m[keyWebgw]["cpu_us_per_req_1k"], Op: "<=", Limit: 60, Unit: "µs",
			Met: m[keyWebgw]["cpu_us_per_req_1k"] <= 60},
		{Name: "RSS per held idle connection, gateway+agent",
			Measured: m[keyWebgw]["idle_kb_per_conn"], Op: "<=", Limit: 16, Unit: "KB",
			Met: m[keyWebgw]["idle_kb_per_conn"] <= 16},
	}
}

// finishScenarios computes the scenarios' medians and goals.
func (r *Report) finishScenarios() {
	if len(r.Scenarios) == 0 {
		return
	}
	r.ScenarioMedian = map[string]Figures{}
	for key, runs := range r.Scenarios {
		f := Figures{}
		for name := range runs[0] {
			var vs []float64
			for _, run := range runs {
				vs = append(vs, run[name])
			}
			f[name] = median(vs)
		}
		r.ScenarioMedian[key] = f
	}
	for _, tr := range r.Settings.Transports {
		key := "failover_" + tr
		if _, ok := r.Scenarios[key]; !ok {
			continue
		}
		w := r.worst(key, "failed_get")
		r.ScenarioGoals = append(r.ScenarioGoals, Goal{
			Name:     fmt.Sprintf("failed GETs when one of two agents (%s) is killed under load, worst run", tr),
			Measured: w, Op: "<=", Limit: 0, Met: w == 0, Unit: "requests",
		})
	}
	if _, ok := r.Scenarios["cluster"]; ok {
		w := r.worst("cluster", "propagate_max_ms")
		r.ScenarioGoals = append(r.ScenarioGoals, Goal{
			Name:     "a service added on one gateway served by all three, slowest probe of the worst run",
			Measured: w, Op: "<=", Limit: 1000, Met: w <= 1000, Unit: "ms",
		})
	}
	if _, ok := r.Scenarios["new_upstream"]; ok {
		w := max(r.worst("new_upstream", "cli_from_return_ms"), r.worst("new_upstream", "api_from_return_ms"))
		r.ScenarioGoals = append(r.ScenarioGoals, Goal{
			Name:     "a new direct upstream's first request after the change returned (CLI and API), worst run",
			Measured: w, Op: "<=", Limit: 100, Met: w <= 100, Unit: "ms",
		})
	}
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// WriteTable prints the report for people.
func (r *Report) WriteTable(w io.Writer) {
	s := r.Settings
	fmt.Fprintf(w, "webgw bench  %s  %s, %d CPUs (%s), Linux %s, %s\n", r.Date.Format("2006-01-02 15:04 MST"), r.Host, r.CPUs, r.CPUModel, r.Kernel, r.GoVersion)
	fmt.Fprintf(w, "source %s; load average at start %s, at end %s\n", r.Source, r.LoadAvgStart, r.LoadAvgEnd)
	fmt.Fprintf(w, "machine busy before the run: %.0f%%; other processes during measured runs: at most %.1f%% of the CPUs\n", r.BusyPctBefore, r.ForeignPctMax)
	if r.BusyPctBefore > 10 || r.ForeignPctMax > 5 {
		fmt.Fprintf(w, "WARNING: the machine was not quiet; other work competed for the cores and the figures are low\n")
	}
	if len(r.Rounds) > 0 {
		fmt.Fprintf(w, "%d rounds (median), %s per req/s run after %s warm-up, %d keep-alive clients, %s, %d idle conns, bulk %s\n\n",
			s.Rounds, fmtDur(s.DurationS), fmtDur(s.WarmupS), s.Conns, s.Protocol, s.IdleConns, formatSize(s.BulkBytes))
		r.writeMain(w)
	}
	r.writeScenarios(w)
	r.writeCluster(w)
	r.writeFourToSix(w)
	r.writeYgg(w)
	r.writeLossy(w)
	r.writeForward(w)
	r.writeDNS(w)
	r.writeRelay(w)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\nnote: %s\n", n)
	}
}

// writeMain prints the direct-against-webgw table and the goals of issue 2.
func (r *Report) writeMain(w io.Writer) {
	s := r.Settings
	m := r.Median
	rows := []tableRow{
		{"req/s, 1 KiB body", "rps_1k", "%.0f"},
		{"  latency p50, ms", "p50_ms_1k", "%.2f"},
		{"  latency p99, ms", "p99_ms_1k", "%.2f"},
		{"  CPU µs/req (backend | gateway+agent)", "cpu_us_per_req_1k", "%.1f"},
		{"req/s, small GET (3-byte body)", "rps_small", "%.0f"},
		{"  latency p50, ms", "p50_ms_small", "%.2f"},
		{"  latency p99, ms", "p99_ms_small", "%.2f"},
		{"  CPU µs/req (backend | gateway+agent)", "cpu_us_per_req_small", "%.1f"},
		{"bulk MiB/s, one " + formatSize(s.BulkBytes) + " download", "bulk_mib_s", "%.0f"},
		{"  CPU s/GiB (backend | gateway+agent)", "bulk_cpu_s_per_gib", "%.2f"},
		{fmt.Sprintf("RSS KB per held conn, %d idle (backend | gw+agent)", s.IdleConns), "idle_kb_per_conn", "%.1f"},
	}
	writeTargets(w, m, r.Settings.Transports, rows)
	for _, tr := range r.Settings.Transports {
		wg, ok := m[webgwKey(tr)]
		if !ok {
			continue
		}
		fmt.Fprintf(w, "\nwebgw %s CPU per request, µs (1 KiB | small): gateway %.1f | %.1f, agent %.1f | %.1f, backend %.1f | %.1f, load generator %.1f | %.1f\n", tr,
			wg["gateway_cpu_us_per_req_1k"], wg["gateway_cpu_us_per_req_small"], wg["agent_cpu_us_per_req_1k"], wg["agent_cpu_us_per_req_small"],
			wg["backend_cpu_us_per_req_1k"], wg["backend_cpu_us_per_req_small"], wg["loadgen_cpu_us_per_req_1k"], wg["loadgen_cpu_us_per_req_small"])
		fmt.Fprintf(w, "webgw %s RSS per held conn, KB: gateway %.1f, agent %.1f\n", tr, wg["gateway_idle_kb_per_conn"], wg["agent_idle_kb_per_conn"])
	}
	var lg []string
	for _, key := range targetKeys(m, r.Settings.Transports) {
		lg = append(lg, fmt.Sprintf("%s %.1f", columnName(key), m[key]["loadgen_cpu_us_per_req_1k"]))
	}
	fmt.Fprintf(w, "load generator CPU per request, µs (1 KiB): %s\n", strings.Join(lg, ", "))
	for i, rd := range r.Rounds {
		for _, key := range targetKeys(rd, r.Settings.Transports) {
			for _, body := range []string{"1k", "small"} {
				if n := rd[key]["errors_"+body]; n > 0 {
					fmt.Fprintf(w, "WARNING: round %d, %s %s: %.0f failed requests\n", i+1, key, body, n)
				}
			}
		}
	}

	fmt.Fprintf(w, "\ngoals (issue 2)\n")
	writeGoals(w, r.Goals)
}

// writeGoals prints one line per goal: met or MISS, the measured value, the goal.
func writeGoals(w io.Writer, goals []Goal) {
	for _, g := range goals {
		verdict := "MISS"
		if g.Met {
			verdict = "met"
		}
		op := map[string]string{">=": "≥", "<=": "≤"}[g.Op]
		val := fmt.Sprintf("%.2f", g.Measured)
		if g.Unit != "" {
			val = fmt.Sprintf("%.1f %s", g.Measured, g.Unit)
		}
		limit := fmt.Sprintf("%s %g %s", op, g.Limit, g.Unit)
		line := fmt.Sprintf("  %-4s %-84s %10s  (goal %s)", verdict, g.Name, val, strings.TrimSpace(limit))
		if g.Note != "" {
			line += "; " + g.Note
		}
		fmt.Fprintln(w, line)
	}
}

// finishForward computes the forward part's medians and the goals of issue
// 4, per transport.
func (r *Report) finishForward() {
	if len(r.Forward) == 0 {
		return
	}
	r.ForwardMedian = medianRound(r.Forward)
	for _, tr := range r.Settings.Transports {
		vs, ok := r.ForwardMedian[webgwKey(tr)+"_vs_direct"]
		if !ok {
			continue
		}
		w, d := r.ForwardMedian[webgwKey(tr)], r.ForwardMedian[keyDirect]
		for _, g := range []struct{ name, key, unit, other string }{
			{"TCP download through a forwarded port / direct, 1 connection", "down1_mib_s", "MiB/s", "up1_mib_s"},
			{"TCP download through a forwarded port / direct, 8 connections", "down8_mib_s", "MiB/s", "up8_mib_s"},
			{"new TCP connections/s through a forwarded port / direct, 1-byte echo", "conn_s", "conn/s", ""},
		} {
			note := fmt.Sprintf("%.0f against %.0f %s direct", w[g.key], d[g.key], g.unit)
			if g.other != "" {
				note += fmt.Sprintf("; upload %.2f", vs[g.other])
			}
			r.ForwardGoals = append(r.ForwardGoals, Goal{
				Name:     fmt.Sprintf("%s (agent %s)", g.name, tr),
				Measured: vs[g.key], Op: ">=", Limit: 0.35, Met: vs[g.key] >= 0.35, Note: note,
			})
		}
	}
}

// writeForward prints the forward part and the goals of issue 4.
func (r *Report) writeForward(w io.Writer) {
	if len(r.Forward) == 0 {
		return
	}
	s := r.Settings
	fmt.Fprintf(w, "\nforward: a gateway's public TCP and UDP ports forwarded over the agent's tunnel to a backend (webgw expose tcp://, udp://)\n")
	fmt.Fprintf(w, "(%d rounds, median; bulk: %s per run; connections: %d dialers, %s after %s warm-up; UDP: %d datagrams/s of %d bytes offered from %d sockets for %s)\n\n",
		len(r.Forward), formatSize(s.FwdBulkBytes), s.FwdDialers, fmtDur(s.DurationS), fmtDur(s.WarmupS), s.UDPRate, s.UDPSize, s.UDPFlows, fmtDur(s.DurationS))
	writeTargets(w, r.ForwardMedian, s.Transports, []tableRow{
		{"TCP download MiB/s, 1 connection", "down1_mib_s", "%.0f"},
		{"  CPU s/GiB (backend | gateway+agent)", "down1_cpu_s_per_gib", "%.2f"},
		{fmt.Sprintf("TCP download MiB/s, %d connections", fwdStreams), "down8_mib_s", "%.0f"},
		{"  CPU s/GiB (backend | gateway+agent)", "down8_cpu_s_per_gib", "%.2f"},
		{"TCP upload MiB/s, 1 connection", "up1_mib_s", "%.0f"},
		{"  CPU s/GiB (backend | gateway+agent)", "up1_cpu_s_per_gib", "%.2f"},
		{fmt.Sprintf("TCP upload MiB/s, %d connections", fwdStreams), "up8_mib_s", "%.0f"},
		{"  CPU s/GiB (backend | gateway+agent)", "up8_cpu_s_per_gib", "%.2f"},
		{"new TCP connections/s, 1-byte echo", "conn_s", "%.0f"},
		{"  time of one, p50, ms", "conn_p50_ms", "%.2f"},
		{"  time of one, p99, ms", "conn_p99_ms", "%.2f"},
		{"  CPU µs/conn (backend | gateway+agent)", "conn_cpu_us", "%.1f"},
		{"UDP echoes/s received", "udp_pps", "%.0f"},
		{"  datagrams/s sent", "udp_sent_pps", "%.0f"},
		{"  loss, %", "udp_loss_pct", "%.2f"},
		{"  round trip p50, ms", "udp_p50_ms", "%.2f"},
		{"  round trip p99, ms", "udp_p99_ms", "%.2f"},
		{"  CPU µs/datagram (backend | gateway+agent)", "udp_cpu_us", "%.1f"},
	})
	for _, tr := range s.Transports {
		if f, ok := r.ForwardMedian[webgwKey(tr)]; ok {
			fmt.Fprintf(w, "webgw %s CPU s/GiB, download 1 | 8 connections: gateway %.2f | %.2f, agent %.2f | %.2f; per connection, µs: gateway %.1f, agent %.1f\n", tr,
				f["gateway_down1_cpu_s_per_gib"], f["gateway_down8_cpu_s_per_gib"], f["agent_down1_cpu_s_per_gib"], f["agent_down8_cpu_s_per_gib"],
				f["gateway_conn_cpu_us"], f["agent_conn_cpu_us"])
		}
	}
	var other, otherBulk float64
	for _, rd := range r.Forward {
		for key, f := range rd {
			for name, v := range f {
				switch {
				case strings.Contains(key, "_vs_") || !strings.Contains(name, "foreign_cpu_pct"):
				case strings.HasPrefix(name, "conn_") || strings.HasPrefix(name, "udp_"):
					other = max(other, v)
				default:
					otherBulk = max(otherBulk, v)
				}
			}
		}
	}
	fmt.Fprintf(w, "other processes, at most: %.1f%% of the CPUs in the connection and UDP runs kept, %.1f%% in the bulk runs (0.2-4 s long; 5%% of 0.2 s is 2 ticks);\n%d runs made again because other processes took more than %g%% and %d ticks\n",
		other, otherBulk, r.ForwardRedone, fwdOtherMax, fwdOtherMinTicks)
	for i, rd := range r.Forward {
		for _, key := range targetKeys(rd, s.Transports) {
			if n := rd[key]["conn_errors"]; n > 0 {
				fmt.Fprintf(w, "WARNING: forward round %d, %s: %.0f failed connections\n", i+1, key, n)
			}
		}
	}
	fmt.Fprintf(w, "\ngoals (issue 4)\n")
	writeGoals(w, r.ForwardGoals)
}

// writeLossy prints the lossy-link part.
func (r *Report) writeLossy(w io.Writer) {
	if len(r.Lossy) == 0 {
		return
	}
	s := r.Settings
	fmt.Fprintf(w, "\nlossy link: %q each way between two network namespaces (gateway and load generator | agent and backend)\n", s.Netem)
	fmt.Fprintf(w, "(%d rounds, median; %s per req/s run, %d keep-alive clients; direct: the load generator to the backend across the same link)\n\n",
		len(r.Lossy), fmtDur(s.DurationS), s.Conns)
	writeTargets(w, r.LossyMedian, s.Transports, []tableRow{
		{"req/s, 1 KiB body", "rps_1k", "%.0f"},
		{"  latency p50, ms", "p50_ms_1k", "%.1f"},
		{"  latency p99, ms", "p99_ms_1k", "%.1f"},
		{"  CPU µs/req (backend | gateway+agent)", "cpu_us_per_req_1k", "%.1f"},
		{"req/s, small GET (3-byte body)", "rps_small", "%.0f"},
		{"  latency p50, ms", "p50_ms_small", "%.1f"},
		{"  latency p99, ms", "p99_ms_small", "%.1f"},
		{"  CPU µs/req (backend | gateway+agent)", "cpu_us_per_req_small", "%.1f"},
		{"bulk MiB/s, one " + formatSize(s.LossyBulkBytes) + " download", "bulk_mib_s", "%.1f"},
		{"  CPU s/GiB (backend | gateway+agent)", "bulk_cpu_s_per_gib", "%.2f"},
	})
	for i, rd := range r.Lossy {
		for _, key := range targetKeys(rd, s.Transports) {
			for _, body := range []string{"1k", "small"} {
				if n := rd[key]["errors_"+body]; n > 0 {
					fmt.Fprintf(w, "WARNING: lossy round %d, %s %s: %.0f failed requests\n", i+1, key, body, n)
				}
			}
		}
	}
}

// writeScenarios prints the failover and new-upstream scenarios: the median
// of the runs, and the worst run in parentheses.
func (r *Report) writeScenarios(w io.Writer) {
	if len(r.Scenarios) == 0 {
		return
	}
	var failover []string // in the order of -transports
	for _, tr := range r.Settings.Transports {
		if _, ok := r.Scenarios["failover_"+tr]; ok {
			failover = append(failover, "failover_"+tr)
		}
	}
	cell := func(key, name, format string) string {
		if _, ok := r.ScenarioMedian[key][name]; !ok {
			return "-"
		}
		return fmt.Sprintf(format+" ("+format+")", r.ScenarioMedian[key][name], r.worst(key, name))
	}
	const lw = 60
	if len(failover) > 0 {
		runs := len(r.Scenarios[failover[0]])
		fmt.Fprintf(w, "\nfailover: two agents (--connections 2 each) serve one name, one is killed (SIGKILL) under steady load\n")
		fmt.Fprintf(w, "(%d workers, GET and POST /small in turn; %d runs: median (worst))\n\n", r.Settings.ScenarioConns, runs)
		fmt.Fprintf(w, "%-*s", lw, "measurement")
		for _, key := range failover {
			fmt.Fprintf(w, " %18s", "agent "+strings.TrimPrefix(key, "failover_"))
		}
		fmt.Fprintf(w, "\n%s\n", strings.Repeat("-", lw+19*len(failover)))
		for _, row := range []struct{ label, name, format string }{
			{"failed GET", "failed_get", "%.0f"},
			{"failed POST", "failed_post", "%.0f"},
			{"kill -> last failed request, ms (0: none failed)", "last_fail_ms", "%.0f"},
			{"kill -> throughput back to 90% of before, ms", "takeover_ms", "%.0f"},
			{"slowest request across the kill, ms", "slowest_ms", "%.0f"},
			{"req/s before the kill", "rps_before", "%.0f"},
			{"req/s after the kill", "rps_after", "%.0f"},
			{"watched after the kill, ms", "observed_ms", "%.0f"},
			{"lowest 100 ms window before the kill, % of mean", "window_min_pct_before", "%.0f"},
		} {
			fmt.Fprintf(w, "%-*s", lw, row.label)
			for _, key := range failover {
				fmt.Fprintf(w, " %18s", cell(key, row.name, row.format))
			}
			fmt.Fprintln(w)
		}
	}
	if runs, ok := r.Scenarios["new_upstream"]; ok {
		const key = "new_upstream"
		fmt.Fprintf(w, "\nnew upstream: a service with one direct upstream, under steady load, gets a second one\n")
		fmt.Fprintf(w, "(%d workers; first request at the new backend, by its clock; %d runs: median (worst))\n\n", r.Settings.ScenarioConns, len(runs))
		fmt.Fprintf(w, "%-*s %18s %18s\n", lw, "ms to the new backend's first request", "from start", "from return")
		fmt.Fprintf(w, "%s\n", strings.Repeat("-", lw+38))
		fmt.Fprintf(w, "%-*s %18s %18s\n", lw, "webgw service set up --add-upstream URL (CLI)", cell(key, "cli_from_start_ms", "%.1f"), cell(key, "cli_from_return_ms", "%.1f"))
		fmt.Fprintf(w, "%-*s %18s %18s\n", lw, "PUT /v1/services/up (API)", cell(key, "api_from_start_ms", "%.1f"), cell(key, "api_from_return_ms", "%.1f"))
		fmt.Fprintf(w, "the CLI ran %s ms, the PUT took %s ms; failed requests %s\n",
			cell(key, "cli_call_ms", "%.1f"), cell(key, "api_call_ms", "%.1f"), cell(key, "failed", "%.0f"))
	}
	var busy float64
	for _, runs := range r.Scenarios {
		for _, f := range runs {
			busy = max(busy, f["busy_pct_before"])
		}
	}
	fmt.Fprintf(w, "machine busy before each scenario run (300 ms sample): at most %.0f%%\n", busy)

	fmt.Fprintf(w, "\ngoals (scenarios)\n")
	for _, g := range r.ScenarioGoals {
		verdict := "MISS"
		if g.Met {
			verdict = "met"
		}
		op := map[string]string{">=": "≥", "<=": "≤"}[g.Op]
		fmt.Fprintf(w, "  %-4s %-84s %10s  (goal %s %g %s)\n", verdict, g.Name, fmt.Sprintf("%.1f %s", g.Measured, g.Unit), op, g.Limit, g.Unit)
	}
}

// tableRow is one measurement of a target table.
type tableRow struct{ label, key, format string }

// targetKeys are m's targets in column order: direct (the forward part),
// direct http, direct https, then webgw per transport.
func targetKeys(m Round, transports []string) []string {
	var keys []string
	for _, k := range []string{keyDirect, keyHTTP, keyHTTPS} {
		if _, ok := m[k]; ok {
			keys = append(keys, k)
		}
	}
	for _, tr := range transports {
		if _, ok := m[webgwKey(tr)]; ok {
			keys = append(keys, webgwKey(tr))
		}
	}
	return keys
}

// columnName is a target's column header: "direct http", "webgw tcp".
func columnName(key string) string {
	switch key {
	case keyDirect:
		return "direct"
	case keyHTTP:
		return "direct http"
	case keyHTTPS:
		return "direct https"
	case keyWebgw:
		return "webgw tcp"
	}
	return strings.ReplaceAll(key, "_", " ")
}

// tableCol is one column of a target table: a target's figures (format
// ""), or a ratio's (format "%.2f").
type tableCol struct{ head, key, format string }

// writeTargets prints one column per target, then webgw/direct ratios per
// transport ("tcp/http").
func writeTargets(w io.Writer, m Round, transports []string, rows []tableRow) {
	keys := targetKeys(m, transports)
	type col = tableCol
	var cols []col
	for _, k := range keys {
		cols = append(cols, col{columnName(k), k, ""})
	}
	for _, k := range keys {
		if !isWebgwKey(k) {
			continue
		}
		tr := strings.TrimPrefix(strings.TrimPrefix(columnName(k), "webgw"), " ")
		vsHTTP, vsHTTPS := ratioKeys(k)
		for _, rk := range []struct{ key, base string }{{vsHTTP, "http"}, {vsHTTPS, "https"}, {k + "_vs_direct", "direct"}} {
			if _, ok := m[rk.key]; ok {
				cols = append(cols, col{tr + "/" + rk.base, rk.key, "%.2f"})
			}
		}
	}
	writeColumns(w, m, cols, rows)
}

// writeColumns prints rows of m's figures under cols.
func writeColumns(w io.Writer, m Round, cols []tableCol, rows []tableRow) {
	const lw = 52
	fmt.Fprintf(w, "%-*s", lw, "measurement (median)")
	for _, c := range cols {
		fmt.Fprintf(w, " %12s", c.head)
	}
	fmt.Fprintf(w, "\n%s\n", strings.Repeat("-", lw+13*len(cols)))
	for _, row := range rows {
		fmt.Fprintf(w, "%-*s", lw, row.label)
		for _, c := range cols {
			format := row.format
			if c.format != "" {
				format = c.format
			}
			fmt.Fprintf(w, " %12s", fmtVal(format, m[c.key], row.key))
		}
		fmt.Fprintln(w)
	}
}

func fmtVal(format string, f Figures, key string) string {
	v, ok := f[key]
	if !ok {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func fmtDur(s float64) string { return time.Duration(s * float64(time.Second)).String() }

func loadAvg() string {
	f := strings.Fields(firstLine("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// gitSource names the commit measured and whether the tree had local changes.
func gitSource() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown (no git)"
	}
	src := "commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
		if n := len(strings.FieldsFunc(string(st), func(r rune) bool { return r == '\n' })); n > 0 {
			src += fmt.Sprintf(" + %d locally modified files", n)
		}
	}
	return src
}

// writeDNS prints the dns part: the gateway's DNS server against the
// reference, with the Go load client and with dnsperf.
func (r *Report) writeDNS(w io.Writer) {
	if len(r.DNS) == 0 {
		return
	}
	s := r.Settings
	m := r.DNSMedian
	fmt.Fprintf(w, "\ndns: the gateway's authoritative DNS server (--dns-addr) against a minimal miekg/dns server (bench dnsref), A queries over UDP\n")
	fmt.Fprintf(w, "(%d rounds, median; %d queries in flight, each client waits for its answer; Go client: %s after %s warm-up; dnsperf: %s;\n existing name: %s.%s (a service); missing: %d names in turn, NXDOMAIN)\n\n",
		len(r.DNS), s.DNSClients, fmtDur(s.DurationS), fmtDur(s.WarmupS), fmtDur(s.DurationS), dnsName, dnsDomain, dnsMissing)
	var rows []tableRow
	for _, kind := range dnsKinds {
		name := map[string]string{"exist": "existing name", "missing": "missing name"}[kind]
		rows = append(rows,
			tableRow{"answers/s, " + name + ", Go client", "go_" + kind + "_qps", "%.0f"},
			tableRow{"  latency p50, ms", "go_" + kind + "_p50_ms", "%.3f"},
			tableRow{"  latency p99, ms", "go_" + kind + "_p99_ms", "%.3f"},
			tableRow{"  CPU µs/answer (server)", "go_" + kind + "_cpu_us", "%.1f"},
			tableRow{"  lost, %", "go_" + kind + "_loss_pct", "%.3f"})
		if _, ok := m[keyDirect]["dnsperf_"+kind+"_qps"]; ok {
			rows = append(rows,
				tableRow{"answers/s, " + name + ", dnsperf", "dnsperf_" + kind + "_qps", "%.0f"},
				tableRow{"  latency mean, ms", "dnsperf_" + kind + "_mean_ms", "%.3f"},
				tableRow{"  latency standard deviation, ms", "dnsperf_" + kind + "_sd_ms", "%.3f"},
				tableRow{"  CPU µs/answer (server)", "dnsperf_" + kind + "_cpu_us", "%.1f"},
				tableRow{"  lost, %", "dnsperf_" + kind + "_loss_pct", "%.3f"})
		}
	}
	writeColumns(w, m, []tableCol{{"reference", keyDirect, ""}, {"webgw", keyWebgw, ""}, {"webgw/ref", keyWebgw + "_vs_direct", "%.2f"}}, rows)
	var lg []string
	for _, kind := range dnsKinds {
		for _, tool := range []string{"go", "dnsperf"} {
			k := tool + "_" + kind + "_loadgen_cpu_us"
			if _, ok := m[keyWebgw][k]; ok {
				lg = append(lg, fmt.Sprintf("%s %s %.1f | %.1f", tool, kind, m[keyDirect][k], m[keyWebgw][k]))
			}
		}
	}
	fmt.Fprintf(w, "load client CPU µs/answer (reference | webgw): %s\n", strings.Join(lg, ", "))
	var other float64
	for _, rd := range r.DNS {
		for key, f := range rd {
			for name, v := range f {
				if !strings.Contains(key, "_vs_") && strings.HasSuffix(name, "_foreign_cpu_pct") {
					other = max(other, v)
				}
			}
		}
	}
	fmt.Fprintf(w, "other processes, at most: %.1f%% of the CPUs in the runs kept; %d runs made again because other processes took more than %g%% and %d ticks\n",
		other, r.DNSRedone, fwdOtherMax, fwdOtherMinTicks)
	for i, rd := range r.DNS {
		for _, key := range []string{keyDirect, keyWebgw} {
			for name, v := range rd[key] {
				if strings.HasSuffix(name, "_errors") && v > 0 {
					fmt.Fprintf(w, "WARNING: dns round %d, %s: %.0f wrong answers (%s)\n", i+1, key, v, strings.TrimSuffix(name, "_errors"))
				}
			}
		}
	}
}
