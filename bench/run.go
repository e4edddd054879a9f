package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Defaults of Config, also the flags' defaults.
const (
	defaultRounds    = 3
	defaultDuration  = 5 * time.Second
	defaultWarmup    = 500 * time.Millisecond
	defaultConns     = 64
	defaultIdleConns = 1000
	defaultBulkSize  = 256 << 20
	// defaultScenarioConns is the steady load of the failover and
	// new-upstream scenarios.
	defaultScenarioConns = 16
)

// Parts of a run (-parts).
const (
	partMain     = "main"     // req/s, latency, CPU, bulk, idle RSS: direct against webgw per transport
	partFailover = "failover" // one of two agents killed under load
	partUpstream = "upstream" // a direct upstream added under load
	partLossy    = "lossy"    // direct against webgw per transport across an emulated lossy link
	partForward  = "forward"  // TCP and UDP through public ports forwarded over agent tunnels
	partDNS      = "dns"      // the gateway's authoritative DNS server against a minimal one; not in defaultParts
	partCluster  = "cluster"  // three gateways on one etcd: propagation, a gateway killed; not in defaultParts
	partRelay    = "relay"    // through a gateway that relays to the one holding the tunnel; not in defaultParts
	partYgg      = "ygg"      // through the gateway to a backend over its Yggdrasil node against over loopback; not in defaultParts
	part4to6     = "4to6"     // an IPv4-only laptop through the WireGuard 4to6 endpoint against the plain path; root; not in defaultParts
)

// allParts are the parts -parts accepts; defaultParts those run when it is
// not given.
var (
	allParts     = []string{partMain, partFailover, partUpstream, partLossy, partForward, partDNS, partCluster, partRelay, part4to6, partYgg}
	defaultParts = []string{partMain, partFailover, partUpstream, partLossy, partForward}
)

// allTransports are the agent transports the harness knows (--transport).
var allTransports = []string{"tcp", "quic"}

// Config is one harness run. The zero value of each field means its default.
type Config struct {
	// Rounds of interleaved measurements; 0 means 3. Medians are reported.
	Rounds int
	// Duration is the measured time of each req/s run; 0 means 5 s.
	Duration time.Duration
	// Warmup runs the load unmeasured before each req/s run; 0 means 500 ms.
	Warmup time.Duration
	// Conns is the number of concurrent keep-alive clients; 0 means 64.
	Conns int
	// IdleConns is the number of idle connections held for the RSS figure; 0 means 1000.
	IdleConns int
	// BulkSize is the size of the bulk download in bytes; 0 means 1 GiB.
	BulkSize int64
	// H2 loads with HTTP/2 (h2, and h2c to the plain backend); false means HTTP/1.1.
	H2 bool
	// Webgw is a prebuilt webgw binary; "" builds ./cmd/webgw of the enclosing module.
	Webgw string
	// PprofDir, when set, builds webgw with a harness-side pprof listener and
	// writes CPU and heap profiles of gateway and agent (last round) there.
	PprofDir string
	// WGClient is the laptop's wireguard-go in the 4to6 part: "" builds the
	// version webgw's engine uses (golang.zx2c4.com/wireguard from go.mod);
	// a path uses that program (Debian's: /usr/bin/wireguard-go).
	WGClient string
	// Parts lists what to run (partMain, partFailover, partUpstream,
	// partLossy, partForward, partDNS, partRelay); nil means defaultParts
	// (all but partDNS and partRelay).
	Parts []string
	// FailoverWatch is the longest a failover run watches after the kill
	// while requests fail or throughput is not back; 0 means 60 s.
	FailoverWatch time.Duration
	// Netem is the lossy link, in netem's words, applied in each direction;
	// "" means "loss 1% delay 10ms".
	Netem string
	// LossyBulkSize is the bulk download across the lossy link; 0 means 32 MiB.
	LossyBulkSize int64
	// Transports are the agent transports measured (tcp, quic), each as its
	// own webgw target; nil means tcp, and quic too when this webgw's agent
	// can use it.
	Transports []string
	// ScenarioConns is the number of workers of the steady load of the
	// failover and new-upstream scenarios; 0 means 16.
	ScenarioConns int
	// FwdBulkSize is the bytes of each bulk run of the forward part; 0
	// means 1 GiB.
	FwdBulkSize int64
	// FwdDialers is the number of concurrent dialers of the forward part's
	// connections/s run; 0 means 8.
	FwdDialers int
	// UDPRate is the datagrams per second the UDP run offers; 0 means 20000.
	UDPRate int
	// UDPSize is the size of its datagrams in bytes; 0 means 64.
	UDPSize int
	// UDPFlows is the number of client sockets it sends from in turn (one
	// session each through a gateway); 0 means 4.
	UDPFlows int
	// FwdRedo is how often a forward run is redone at most while other
	// processes took more than 5% of the CPUs during it (the quietest run
	// is kept); 0 means 3, negative means never.
	FwdRedo int
	// DNSClients is the number of DNS queries in flight in the dns part,
	// each from its own UDP socket; 0 means 32.
	DNSClients int
	// Backend is the command that runs `bench backend`; nil re-executes this program.
	Backend []string
	// Progress receives one line per step; nil is silent.
	Progress io.Writer
}

func (c *Config) complete() {
	if c.Rounds == 0 {
		c.Rounds = defaultRounds
	}
	if c.Duration == 0 {
		c.Duration = defaultDuration
	}
	if c.Warmup == 0 {
		c.Warmup = defaultWarmup
	}
	if c.Conns == 0 {
		c.Conns = defaultConns
	}
	if c.IdleConns == 0 {
		c.IdleConns = defaultIdleConns
	}
	if c.BulkSize == 0 {
		c.BulkSize = defaultBulkSize
	}
	if c.Parts == nil {
		c.Parts = defaultParts
	}
	if c.ScenarioConns == 0 {
		c.ScenarioConns = defaultScenarioConns
	}
	if c.Netem == "" {
		c.Netem = defaultNetem
	}
	if c.FailoverWatch == 0 {
		c.FailoverWatch = defaultFailoverWatch
	}
	if c.LossyBulkSize == 0 {
		c.LossyBulkSize = defaultLossyBulkSize
	}
	if c.FwdBulkSize == 0 {
		c.FwdBulkSize = defaultFwdBulkSize
	}
	if c.FwdDialers == 0 {
		c.FwdDialers = defaultFwdDialers
	}
	if c.UDPRate == 0 {
		c.UDPRate = defaultUDPRate
	}
	if c.UDPSize == 0 {
		c.UDPSize = defaultUDPSize
	}
	if c.UDPFlows == 0 {
		c.UDPFlows = defaultUDPFlows
	}
	if c.FwdRedo == 0 {
		c.FwdRedo = defaultFwdRedo
	}
	if c.DNSClients == 0 {
		c.DNSClients = defaultDNSClients
	}
}

func (c *Config) has(part string) bool { return slices.Contains(c.Parts, part) }

func (c *Config) validate() error {
	switch {
	case c.Rounds < 0 || c.Rounds > 100:
		return fmt.Errorf("-rounds %d not accepted; use 1-100", c.Rounds)
	case c.Duration < 0:
		return fmt.Errorf("-duration %s not accepted; use a positive duration such as 5s", c.Duration)
	case c.Warmup < 0:
		return fmt.Errorf("-warmup %s not accepted; use a positive duration such as 500ms", c.Warmup)
	case c.Conns < 0 || c.Conns > 10000:
		return fmt.Errorf("-conns %d not accepted; use 1-10000", c.Conns)
	case c.IdleConns < 0 || c.IdleConns > 100000:
		return fmt.Errorf("-idle-conns %d not accepted; use 1-100000", c.IdleConns)
	case c.BulkSize < 0:
		return fmt.Errorf("-bulk-size %d not accepted; use a positive size such as 256MiB", c.BulkSize)
	case c.LossyBulkSize < 0:
		return fmt.Errorf("-lossy-bulk-size %d not accepted; use a positive size such as 32MiB", c.LossyBulkSize)
	case c.ScenarioConns < 0 || c.ScenarioConns > 10000:
		return fmt.Errorf("-scenario-conns %d not accepted; use 1-10000", c.ScenarioConns)
	case c.FwdBulkSize < 0 || (c.FwdBulkSize > 0 && c.FwdBulkSize < fwdStreams):
		return fmt.Errorf("-fwd-bulk-size %d not accepted; use a positive size such as 256MiB", c.FwdBulkSize)
	case c.FwdDialers < 0 || c.FwdDialers > 1000:
		return fmt.Errorf("-fwd-dialers %d not accepted; use 1-1000", c.FwdDialers)
	case c.UDPRate < 0 || c.UDPRate > 1000000:
		return fmt.Errorf("-udp-rate %d not accepted; use 1-1000000 datagrams per second", c.UDPRate)
	case c.UDPSize != 0 && (c.UDPSize < udpHeader || c.UDPSize > 1400):
		return fmt.Errorf("-udp-size %d not accepted; use %d-1400 bytes", c.UDPSize, udpHeader)
	case c.FwdRedo > 100:
		return fmt.Errorf("-fwd-redo %d not accepted; use 0-100", c.FwdRedo)
	case c.UDPFlows < 0 || c.UDPFlows > 1000:
		return fmt.Errorf("-udp-flows %d not accepted; use 1-1000", c.UDPFlows)
	case c.DNSClients < 0 || c.DNSClients > 10000:
		return fmt.Errorf("-dns-clients %d not accepted; use 1-10000", c.DNSClients)
	}
	if c.Netem != "" {
		if _, _, err := parseNetem(c.Netem); err != nil {
			return err
		}
	}
	if c.Parts != nil && len(c.Parts) == 0 {
		return fmt.Errorf("-parts is empty; use a comma-separated list of %s", strings.Join(allParts, ", "))
	}
	for _, t := range c.Transports {
		if !slices.Contains(allTransports, t) {
			return fmt.Errorf("-transports: %q not accepted; use tcp, quic or tcp,quic", t)
		}
	}
	if c.Transports != nil && len(c.Transports) == 0 {
		return fmt.Errorf("-transports is empty; use tcp, quic or tcp,quic")
	}
	for _, p := range c.Parts {
		if !slices.Contains(allParts, p) {
			return fmt.Errorf("-parts: %q not accepted; use a comma-separated list of %s", p, strings.Join(allParts, ", "))
		}
	}
	return nil
}

// The three ways a request reaches the backend, and the ratios between them.
const (
	keyHTTP    = "direct_http"    // harness -> backend, plain HTTP
	keyHTTPS   = "direct_https"   // harness -> backend, HTTPS served by the backend itself
	keyWebgw   = "webgw"          // harness -> gateway (HTTPS terminated) -> TCP tunnel -> agent -> backend
	keyVsHTTP  = "webgw_vs_http"  // webgw / direct_http, per round
	keyVsHTTPS = "webgw_vs_https" // webgw / direct_https, per round
)

// webgwKey is the target key of webgw with the agent on transport: "webgw"
// for tcp (the key of earlier reports), "webgw_quic" for quic.
func webgwKey(transport string) string {
	if transport == "tcp" {
		return keyWebgw
	}
	return keyWebgw + "_" + transport
}

// isWebgwKey says whether key is a webgw target (not direct, not a ratio).
func isWebgwKey(key string) bool {
	return strings.HasPrefix(key, keyWebgw) && !strings.Contains(key, "_vs_")
}

// ratioKeys are the keys of key's ratios to direct http and direct https.
func ratioKeys(key string) (vsHTTP, vsHTTPS string) { return key + "_vs_http", key + "_vs_https" }

// harness owns the processes and files of one Run.
type harness struct {
	cfg     Config
	work    string   // temp dir, removed at the end
	bin     string   // webgw binary
	backend []string // argv of `bench backend`
	pprof   bool     // bin has the pprof hook

	certFile, keyFile string         // the backend's self-signed certificate
	backendRoots      *x509.CertPool // trusts certFile

	procs procTable

	// place, while the lossy part runs, puts gateways in place.gw and
	// agents and backends in place.agent; nil is loopback in this
	// process's namespace. Owned by Run's goroutine.
	place *lossyNet
	// extra are more processes of ours (the link emulator) that req/s runs
	// do not count as other load. Owned by Run's goroutine.
	extra []*proc
}

// selfArgv is the command that runs this program (or the test binary
// playing it) with a role argument after it.
func (h *harness) selfArgv() []string {
	return append([]string(nil), h.backend[:len(h.backend)-1]...)
}

// Run builds webgw, runs cfg.Rounds interleaved rounds and returns the report.
// Every process it starts is killed before it returns, also when ctx ends.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.complete()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if runtime.GOOS != "linux" {
		return nil, errors.New("the harness reads /proc: it runs on Linux only")
	}
	if err := raiseNofile(uint64(cfg.IdleConns + cfg.Conns + 512)); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "webgw-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	h := &harness{cfg: cfg, work: work, backend: cfg.Backend}
	defer h.procs.killAll()

	rep := newReport(cfg)
	rep.BusyPctBefore = busyPct(ctx, time.Second)
	h.logf("load average %s, machine busy %.0f%% in the last second (the load generator, the backend, the gateway and the agent share %d CPUs)",
		rep.LoadAvgStart, rep.BusyPctBefore, runtime.NumCPU())
	if rep.BusyPctBefore > 10 {
		h.logf("WARNING: the machine is busy before the run; figures will be low and noisy")
	}

	if h.backend == nil {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable to start the backend: %w", err)
		}
		h.backend = []string{self, "backend"}
	}
	h.bin = cfg.Webgw
	if h.bin == "" {
		h.pprof = cfg.PprofDir != ""
		if h.bin, err = buildWebgw(ctx, work, h.pprof); err != nil {
			return nil, err
		}
	} else if cfg.PprofDir != "" {
		return nil, errors.New("-pprof needs the harness to build webgw; drop -webgw")
	}
	if cfg.PprofDir != "" {
		if err := os.MkdirAll(cfg.PprofDir, 0o755); err != nil {
			return nil, fmt.Errorf("-pprof: %w", err)
		}
	}
	if h.certFile, h.keyFile, h.backendRoots, err = writeSelfSigned(work); err != nil {
		return nil, err
	}
	// The dns part starts no agent, the relay part one over tcp: with them
	// alone, no transport is probed.
	agents := slices.ContainsFunc(cfg.Parts, func(p string) bool { return p != partDNS && p != partRelay })
	if h.cfg.Transports == nil && !agents {
		h.cfg.Transports = []string{"tcp"}
	} else if h.cfg.Transports == nil {
		h.cfg.Transports = []string{"tcp"}
		if why := h.probeTransport(ctx, "quic"); why != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("quic not measured: %v", why))
			h.logf("quic not measured: %v", why)
		} else {
			h.cfg.Transports = append(h.cfg.Transports, "quic")
		}
	} else if slices.Contains(h.cfg.Transports, "quic") {
		if why := h.probeTransport(ctx, "quic"); why != nil {
			return nil, fmt.Errorf("-transports quic: %w", why)
		}
	}
	rep.Settings.Transports = h.cfg.Transports

	for r := range cfg.Rounds {
		if !cfg.has(partMain) {
			break
		}
		round, err := h.round(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted in round %d: %w", r+1, ctx.Err())
			}
			return nil, fmt.Errorf("round %d: %w", r+1, err)
		}
		rep.Rounds = append(rep.Rounds, round)
	}
	if err := h.scenarios(ctx, rep); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted: %w", ctx.Err())
		}
		return nil, err
	}
	if cfg.has(partLossy) {
		if err := h.lossy(ctx, rep); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted: %w", ctx.Err())
			}
			return nil, err
		}
	}
	if cfg.has(partForward) {
		if err := h.forward(ctx, rep); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted: %w", ctx.Err())
			}
			return nil, err
		}
	}
	if cfg.has(partDNS) {
		if err := h.dnsPart(ctx, rep); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted: %w", ctx.Err())
			}
			return nil, err
		}
	}
	if cfg.has(partRelay) {
		if err := h.relayPart(ctx, rep); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted: %w", ctx.Err())
			}
			return nil, err
		}
	}
	rep.finish()
	return rep, nil
}

// round runs one round: idle connections (each on fresh processes, so no
// earlier test's freed memory hides their cost), then req/s for the 1 KiB and
// the small body, then the bulk download, each as direct_http, direct_https
// and webgw over each transport in turn.
func (h *harness) round(ctx context.Context, r int) (Round, error) {
	last := r == h.cfg.Rounds-1
	rd := Round{keyHTTP: {}, keyHTTPS: {}}
	tag := fmt.Sprintf("round %d/%d", r+1, h.cfg.Rounds)
	dir := filepath.Join(h.work, fmt.Sprintf("round%d", r+1))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}

	// Idle connections held by a fresh backend: plain, then TLS.
	for _, key := range []string{keyHTTP, keyHTTPS} {
		b, err := h.startBackend(ctx, filepath.Join(dir, "idle-"+key))
		if err != nil {
			return nil, err
		}
		t := b.target(key, h.backendRoots)
		res, err := h.idle(ctx, t, []*proc{b.proc}, nil)
		b.proc.stop()
		if err != nil {
			return nil, fmt.Errorf("idle %s: %w", key, err)
		}
		rd[key]["idle_kb_per_conn"] = res.total
		h.logf("%s  idle %-13s %7.1f KB per held connection (backend)", tag, key, res.total)
	}

	// One backend for everything else, and a gateway and an agent per
	// transport, fresh for the idle test. The first transport's stack has
	// the pprof hook.
	backend, err := h.startBackend(ctx, filepath.Join(dir, "stack"))
	if err != nil {
		return nil, err
	}
	defer backend.proc.stop()
	targets := map[string]*target{
		keyHTTP:  backend.target(keyHTTP, h.backendRoots),
		keyHTTPS: backend.target(keyHTTPS, h.backendRoots),
	}
	measured := map[string][]*proc{
		keyHTTP:  {backend.proc},
		keyHTTPS: {backend.proc},
	}
	keys := []string{keyHTTP, keyHTTPS}
	var first *stack
	for i, tr := range h.cfg.Transports {
		key := webgwKey(tr)
		s, err := h.startStack(ctx, filepath.Join(dir, tr), backend, tr, i == 0 && h.pprof)
		if err != nil {
			return nil, fmt.Errorf("webgw over %s: %w", tr, err)
		}
		defer s.stop()
		if i == 0 {
			first = s
		}
		rd[key] = Figures{}
		keys = append(keys, key)
		targets[key] = s.webgwTarget(key)
		measured[key] = []*proc{s.gateway, s.agent}

		var whileHeld func()
		if last && i == 0 && h.pprof {
			whileHeld = func() {
				h.saveProfiles(ctx, s, "heap.txt", "heap?debug=1") // ends with runtime.MemStats: stacks, heap, GC
				h.saveProfiles(ctx, s, "goroutine.txt", "goroutine?debug=1")
				h.saveProfiles(ctx, s, "heap", "heap?gc=1")
			}
		}
		res, err := h.idle(ctx, targets[key], measured[key], whileHeld)
		if err != nil {
			return nil, fmt.Errorf("idle %s: %w", key, err)
		}
		rd[key]["idle_kb_per_conn"] = res.total
		rd[key]["gateway_idle_kb_per_conn"] = res.per[0]
		rd[key]["agent_idle_kb_per_conn"] = res.per[1]
		h.logf("%s  idle %-13s %7.1f KB per held connection (gateway %.1f + agent %.1f)", tag, key, res.total, res.per[0], res.per[1])
	}

	for _, body := range []struct{ key, path string }{{"1k", "/1k"}, {"small", "/small"}} {
		for _, key := range keys {
			var onMeasure func() func()
			if last && h.pprof && key == keys[2] && body.key == "1k" {
				onMeasure = func() func() { return h.startCPUProfiles(ctx, first) }
			}
			lr, err := h.load(ctx, targets[key], body.path, measured[key], backend.proc, onMeasure)
			if err != nil {
				return nil, fmt.Errorf("load %s %s: %w", key, body.key, err)
			}
			f := rd[key]
			sfx := "_" + body.key
			f["rps"+sfx] = lr.rps
			f["p50_ms"+sfx] = lr.p50.Seconds() * 1e3
			f["p99_ms"+sfx] = lr.p99.Seconds() * 1e3
			f["cpu_us_per_req"+sfx] = lr.cpuUS
			f["backend_cpu_us_per_req"+sfx] = lr.backendUS
			f["loadgen_cpu_us_per_req"+sfx] = lr.loadgenUS
			f["errors"+sfx] = float64(lr.errors)
			f["foreign_cpu_pct"+sfx] = lr.foreignPct
			if isWebgwKey(key) {
				f["gateway_cpu_us_per_req"+sfx] = lr.perUS[0]
				f["agent_cpu_us_per_req"+sfx] = lr.perUS[1]
			}
			h.logf("%s  %-5s %-13s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  %6.1f µs CPU/req  other load %4.1f%%%s",
				tag, body.key, key, lr.rps, f["p50_ms"+sfx], f["p99_ms"+sfx], lr.cpuUS, lr.foreignPct, errNote(lr.errors))
		}
	}

	for _, key := range keys {
		br, err := h.bulk(ctx, targets[key], measured[key], h.cfg.BulkSize)
		if err != nil {
			return nil, fmt.Errorf("bulk %s: %w", key, err)
		}
		rd[key]["bulk_mib_s"] = br.mibps
		rd[key]["bulk_cpu_s_per_gib"] = br.cpuSPerGiB
		h.logf("%s  bulk  %-13s %8.0f MiB/s  %5.2f CPU s/GiB", tag, key, br.mibps, br.cpuSPerGiB)
	}
	rd.addRatios()
	return rd, nil
}

// probeTransport checks that an agent reaches a gateway over transport:
// nil when its tunnel comes up over it, else why not.
func (h *harness) probeTransport(ctx context.Context, transport string) error {
	dir := filepath.Join(h.work, "probe-"+transport)
	g, err := h.startGateway(ctx, dir, "gateway", nil)
	if err != nil {
		return err
	}
	defer g.proc.stop()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// An agent that cannot use the transport logs "tunnel down" at once
	// and retries: do not wait for the timeout then.
	go func() {
		for pctx.Err() == nil {
			if b, _ := os.ReadFile(filepath.Join(dir, "agent.log")); strings.Contains(string(b), "tunnel down") {
				cancel()
				return
			}
			sleep(pctx, 50*time.Millisecond)
		}
	}()
	p, _, err := h.startAgent(pctx, dir, "agent", g, nil, "--transport", transport, "http://127.0.0.1:9")
	if err == nil {
		p.stop()
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if pctx.Err() != nil {
		// No URL: say what the agent logged last.
		b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return fmt.Errorf("webgw expose --transport %s: no tunnel came up; its log ends: %s", transport, lines[len(lines)-1])
	}
	return err
}

// scenarios runs the failover and new-upstream scenarios cfg.Rounds times
// each, on fresh processes every time.
func (h *harness) scenarios(ctx context.Context, rep *Report) error {
	for r := range h.cfg.Rounds {
		tag := fmt.Sprintf("run %d/%d", r+1, h.cfg.Rounds)
		if h.cfg.has(partFailover) {
			for _, tr := range h.cfg.Transports {
				key := "failover_" + tr
				busy := busyPct(ctx, 300*time.Millisecond)
				f, err := h.failover(ctx, scenarioDir(h.work, key, r), tr)
				if err != nil {
					return fmt.Errorf("failover (%s) %s: %w", tr, tag, err)
				}
				f["busy_pct_before"] = busy
				rep.addScenario(key, f)
				h.logf("%s  failover %-4s failed GET %.0f, POST %.0f; last failure %.0f ms, throughput back %.0f ms after the kill (%.0f req/s before, %.0f after; slowest %.0f ms)",
					tag, tr, f["failed_get"], f["failed_post"], f["last_fail_ms"], f["takeover_ms"], f["rps_before"], f["rps_after"], f["slowest_ms"])
			}
		}
		if h.cfg.has(partYgg) {
			f, err := h.yggScenario(ctx, scenarioDir(h.work, "ygg", r))
			if err != nil {
				return fmt.Errorf("ygg %s: %w", tag, err)
			}
			rep.addScenario("ygg", f)
			h.logf("%s  ygg: small %.0f req/s over Yggdrasil, %.0f plain (%.2f); 1k %.0f, %.0f (%.2f); bulk %.0f MiB/s, %.0f (%.2f)",
				tag, f["ygg_small_rps"], f["plain_small_rps"], f["ygg_vs_plain_small_rps"], f["ygg_1k_rps"], f["plain_1k_rps"], f["ygg_vs_plain_1k_rps"],
				f["ygg_bulk_mibs"], f["plain_bulk_mibs"], f["ygg_vs_plain_bulk_mibs"])
		}
		if h.cfg.has(part4to6) {
			f, err := h.fourToSix(ctx, scenarioDir(h.work, "4to6", r))
			if err != nil {
				return fmt.Errorf("4to6 %s: %w", tag, err)
			}
			rep.addScenario("4to6", f)
			h.logf("%s  4to6: bulk %.0f MiB/s through the tunnel, %.0f plain (%.2f); round trip %.0f µs, %.0f plain (%.2f); gateway %.2f CPU s/GiB, laptop %.2f",
				tag, f["tunnel_mibs"], f["direct_mibs"], f["tunnel_vs_direct_mibs"], f["tunnel_rtt_us"], f["direct_rtt_us"], f["tunnel_vs_direct_rtt"],
				f["gw_cpu_s_per_gib"], f["client_cpu_s_per_gib"])
		}
		if h.cfg.has(partCluster) {
			f, err := h.clusterScenario(ctx, scenarioDir(h.work, "cluster", r))
			if err != nil {
				return fmt.Errorf("cluster %s: %w", tag, err)
			}
			rep.addScenario("cluster", f)
			h.logf("%s  cluster: joined in %.0f ms; a new service served by all three %.0f ms (slowest %.0f ms) after the CLI returned; a killed gateway left DNS after %.0f ms, the member list after %.0f ms",
				tag, f["join_ms"], f["propagate_ms"], f["propagate_max_ms"], f["dns_withdraw_ms"], f["member_gone_ms"])
		}
		if h.cfg.has(partUpstream) {
			busy := busyPct(ctx, 300*time.Millisecond)
			f, err := h.newUpstream(ctx, scenarioDir(h.work, "new-upstream", r))
			if err != nil {
				return fmt.Errorf("new upstream %s: %w", tag, err)
			}
			f["busy_pct_before"] = busy
			rep.addScenario("new_upstream", f)
			h.logf("%s  new upstream: first request %.1f ms after `service set` returned (%.1f ms after it started; it ran %.1f ms), %.1f ms after the API PUT returned (%.1f after it started; it took %.1f ms); %.0f failed",
				tag, f["cli_from_return_ms"], f["cli_from_start_ms"], f["cli_call_ms"], f["api_from_return_ms"], f["api_from_start_ms"], f["api_call_ms"], f["failed"])
		}
	}
	return nil
}

func errNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("  (%d errors)", n)
}

// buildWebgw builds ./cmd/webgw of the module enclosing the working
// directory into dir. withPprof adds the harness's pprof hook through a
// build overlay; the source tree is not touched.
func buildWebgw(ctx context.Context, dir string, withPprof bool) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the webgw module: run from the repository (go run ./bench) or pass -webgw BINARY")
	}
	root := filepath.Dir(gomod)
	bin := filepath.Join(dir, "webgw")
	args := []string{"build", "-o", bin}
	if withPprof {
		overlay, err := writePprofOverlay(dir, root)
		if err != nil {
			return "", err
		}
		args = append(args, "-overlay", overlay)
	}
	args = append(args, "./cmd/webgw")
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/webgw: %w\n%s", err, out)
	}
	return bin, nil
}

// raiseNofile lifts the soft open-files limit to the hard one and checks that
// need descriptors fit.
func raiseNofile(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < need {
		return fmt.Errorf("open-files limit %d is below the %d this run needs: lower -idle-conns or raise the hard limit (ulimit -Hn)", lim.Cur, need)
	}
	return nil
}

// busyPct samples how busy the whole machine is over d, in % of all CPUs.
func busyPct(ctx context.Context, d time.Duration) float64 {
	b0, t0, err := machineTicks()
	if err != nil {
		return -1
	}
	sleep(ctx, d)
	b1, t1, err := machineTicks()
	if err != nil || t1 <= t0 {
		return -1
	}
	return float64(b1-b0) * 100 / float64(t1-t0)
}
