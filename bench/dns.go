package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// The dns part's zone, the same for the gateway (--domain, --public-ip, a
// service of that name) and for the reference (`bench dnsref`).
const (
	dnsDomain = "gw.test"
	dnsName   = "shop"
	dnsIP     = "192.0.2.10"
	// dnsMissing is how many different missing names the missing-name runs
	// ask for, in turn.
	dnsMissing = 1024
	// defaultDNSClients is the queries in flight (Config.DNSClients).
	defaultDNSClients = 32
	// dnsTimeout is how long a query waits for its answer before it counts
	// as lost.
	dnsTimeout = 500 * time.Millisecond
)

// DNS figures (Report.DNS), per target (keyDirect: the reference server;
// keyWebgw: the gateway) and per kind of name, KIND = exist or missing:
//
//	go_KIND_qps                 answers per second, Go load client
//	go_KIND_p50_ms, _p99_ms     latency of one query
//	go_KIND_cpu_us              CPU µs per answer of the server process
//	go_KIND_loadgen_cpu_us      CPU µs per answer of the load client
//	go_KIND_loss_pct            queries not answered within dnsTimeout, %
//	go_KIND_errors              answers with the wrong rcode, no A record or TC set
//	go_KIND_foreign_cpu_pct     % of the machine's CPU other processes used in the run
//	dnsperf_KIND_qps            the same measured by dnsperf, when installed
//	dnsperf_KIND_mean_ms        its mean latency (dnsperf 2.10 reports no percentiles)
//	dnsperf_KIND_sd_ms          and its standard deviation
//	dnsperf_KIND_cpu_us, _loss_pct, _errors, _foreign_cpu_pct, _loadgen_cpu_us
//
// Ratios are webgw/reference, key keyWebgw+"_vs_direct".
var dnsKinds = []string{"exist", "missing"}

// dnsQueries are the names asked for by the runs of one kind of name.
func dnsQueries(kind string) []string {
	if kind == "exist" {
		return []string{dnsName + "." + dnsDomain + "."}
	}
	r := rand.New(rand.NewPCG(1, 2)) // the same names every run
	names := make([]string, dnsMissing)
	for i := range names {
		names[i] = fmt.Sprintf("nx%04d-%08x.%s.", i, r.Uint32(), dnsDomain)
	}
	return names
}

// dnsTarget is one authoritative server for dnsDomain.
type dnsTarget struct {
	key  string
	addr string // UDP host:port
	proc *proc  // the server process, charged for its CPU
}

// startDNSRef starts `bench dnsref` and reads its address.
func (h *harness) startDNSRef(ctx context.Context, dir string) (*proc, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	argv := append(h.selfArgv(), "dnsref", "-domain", dnsDomain, "-name", dnsName, "-ip", dnsIP)
	p, err := h.start("dnsref", dir, argv, []string{backendRoleEnv + "=dnsref"}, true)
	if err != nil {
		return nil, "", err
	}
	var addr string
	err = p.readLines(ctx, 20*time.Second, func(line string) bool {
		addr, _ = strings.CutPrefix(line, "udp ")
		return addr != ""
	})
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// startDNSGateway starts a gateway authoritative for dnsDomain with a
// service dnsName (no agent: the name exists once the service does).
func (h *harness) startDNSGateway(ctx context.Context, dir string) (*gateway, error) {
	g, err := h.startGateway(ctx, dir, "gateway", nil, "--domain", dnsDomain, "--public-ip", dnsIP)
	if err != nil {
		return nil, err
	}
	if g.dnsAddr == "" {
		g.proc.stop()
		return nil, fmt.Errorf("the gateway serves no DNS (its banner has no dns address):\n%s", g.proc.tail())
	}
	for _, args := range [][]string{{"tenant", "add", "bench"}, {"service", "add", dnsName, "--tenant", "bench"}} {
		if _, err := h.cli(ctx, g, args...); err != nil {
			g.proc.stop()
			return nil, err
		}
	}
	return g, nil
}

// checkDNS asks addr once for the existing name and once for a missing one
// and checks the answers in full, polling until the first answer comes.
func checkDNS(ctx context.Context, addr string) error {
	c := &mdns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	ask := func(name string) (*mdns.Msg, error) {
		m := new(mdns.Msg)
		m.SetQuestion(name, mdns.TypeA)
		r, _, err := c.ExchangeContext(ctx, m, addr)
		return r, err
	}
	var r *mdns.Msg
	var last error
	err := waitFor(ctx, 10*time.Second, "an answer from "+addr, func() bool {
		r, last = ask(dnsQueries("exist")[0])
		return last == nil
	})
	if err != nil {
		return fmt.Errorf("%w: %v", err, last)
	}
	if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
		return fmt.Errorf("%s A: want one authoritative A record, got:\n%s", dnsName, r)
	}
	if a, ok := r.Answer[0].(*mdns.A); !ok || a.A.String() != dnsIP {
		return fmt.Errorf("%s A: want %s, got %s", dnsName, dnsIP, r.Answer[0])
	}
	if r, err = ask(dnsQueries("missing")[0]); err != nil {
		return err
	}
	if r.Rcode != mdns.RcodeNameError || !r.Authoritative {
		return fmt.Errorf("missing name: want an authoritative NXDOMAIN, got:\n%s", r)
	}
	return nil
}

// dnsPart runs the dns part: the reference against the gateway, each kind
// of name with the Go load client and with dnsperf (when installed),
// cfg.Rounds times interleaved.
func (h *harness) dnsPart(ctx context.Context, rep *Report) error {
	dir := filepath.Join(h.work, "dns")
	ref, refAddr, err := h.startDNSRef(ctx, dir)
	if err != nil {
		return fmt.Errorf("dns reference: %w", err)
	}
	defer ref.stop()
	g, err := h.startDNSGateway(ctx, dir)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	defer g.proc.stop()
	targets := []*dnsTarget{{key: keyDirect, addr: refAddr, proc: ref}, {key: keyWebgw, addr: g.dnsAddr, proc: g.proc}}
	ours := []*proc{ref, g.proc}
	for _, t := range targets {
		if err := checkDNS(ctx, t.addr); err != nil {
			return fmt.Errorf("dns %s: %w", t.key, err)
		}
	}
	h.logf("dns: reference %s, gateway %s (authoritative for %s; %s is a service)", refAddr, g.dnsAddr, dnsDomain, dnsName)

	dnsperf, lookErr := exec.LookPath("dnsperf")
	if lookErr != nil {
		rep.Notes = append(rep.Notes, "dns: dnsperf not installed (apt-get install dnsperf); the Go load client only")
		h.logf("dns: no dnsperf; the Go load client only")
	}
	files := map[string]string{}
	if dnsperf != "" {
		for _, kind := range dnsKinds {
			var b strings.Builder
			for _, n := range dnsQueries(kind) {
				fmt.Fprintf(&b, "%s A\n", n)
			}
			files[kind] = filepath.Join(dir, "queries-"+kind+".txt")
			if err := os.WriteFile(files[kind], []byte(b.String()), 0o600); err != nil {
				return err
			}
		}
	}

	for r := range h.cfg.Rounds {
		tag := fmt.Sprintf("dns %d/%d", r+1, h.cfg.Rounds)
		rd := Round{}
		for _, t := range targets {
			rd[t.key] = Figures{}
		}
		for _, kind := range dnsKinds {
			for _, t := range targets {
				res, err := quietest(h, &rep.DNSRedone, tag+" go "+kind+" "+t.key, func() (*dnsResult, float64, int64, error) {
					res, err := h.dnsLoad(ctx, t.addr, dnsQueries(kind), kind == "exist", t.proc, ours)
					if err != nil {
						return nil, 0, 0, err
					}
					return res, res.foreignPct, res.otherTicks, nil
				})
				if err != nil {
					return fmt.Errorf("dns: go client, %s names, %s: %w", kind, t.key, err)
				}
				res.record(rd[t.key], "go_"+kind)
				h.logf("%s  go      %-7s %-6s %8.0f answers/s  p50 %6.3f ms  p99 %6.3f ms  %5.1f µs CPU/answer  lost %.3f%%  other load %4.1f%%%s",
					tag, kind, t.key, res.qps, ms(res.p50), ms(res.p99), res.cpuUS, res.lossPct, res.foreignPct, errNote(res.errors))
			}
			if dnsperf == "" {
				continue
			}
			for _, t := range targets {
				res, err := quietest(h, &rep.DNSRedone, tag+" dnsperf "+kind+" "+t.key, func() (*dnsResult, float64, int64, error) {
					res, err := h.dnsperfRun(ctx, dnsperf, t.addr, files[kind], kind == "exist", t.proc, ours)
					if err != nil {
						return nil, 0, 0, err
					}
					return res, res.foreignPct, res.otherTicks, nil
				})
				if err != nil {
					return fmt.Errorf("dns: dnsperf, %s names, %s: %w", kind, t.key, err)
				}
				res.record(rd[t.key], "dnsperf_"+kind)
				h.logf("%s  dnsperf %-7s %-6s %8.0f answers/s  mean %6.3f ms  sd %6.3f ms  %5.1f µs CPU/answer  lost %.3f%%  other load %4.1f%%%s",
					tag, kind, t.key, res.qps, ms(res.mean), ms(res.sd), res.cpuUS, res.lossPct, res.foreignPct, errNote(res.errors))
			}
		}
		rd.addFwdRatios()
		rep.DNS = append(rep.DNS, rd)
	}
	return nil
}

// dnsResult is one run of a load client against one server.
type dnsResult struct {
	answers, lost, errors int
	firstErr              error
	qps                   float64
	p50, p99              time.Duration // Go client
	mean, sd              time.Duration // dnsperf
	lossPct               float64
	cpuUS, loadgenUS      float64 // CPU µs per answer: the server, the load client
	foreignPct            float64
	otherTicks            int64
}

// record puts r's figures into f under prefix (go_exist, dnsperf_missing).
func (r *dnsResult) record(f Figures, prefix string) {
	f[prefix+"_qps"] = r.qps
	if r.p50 > 0 {
		f[prefix+"_p50_ms"] = ms(r.p50)
		f[prefix+"_p99_ms"] = ms(r.p99)
	}
	if r.mean > 0 {
		f[prefix+"_mean_ms"] = ms(r.mean)
		f[prefix+"_sd_ms"] = ms(r.sd)
	}
	f[prefix+"_cpu_us"] = r.cpuUS
	f[prefix+"_loadgen_cpu_us"] = r.loadgenUS
	f[prefix+"_loss_pct"] = r.lossPct
	f[prefix+"_errors"] = float64(r.errors)
	f[prefix+"_foreign_cpu_pct"] = r.foreignPct
}

// dnsLoad runs cfg.DNSClients clients against addr for warm-up plus
// duration, each on its own UDP socket with one query in flight: it sends
// the next of names (type A, no EDNS0, like dnsperf's default) as soon as
// the answer to the last one came, or after dnsTimeout. Answers must be
// NOERROR with an answer record (exist) or NXDOMAIN (missing), without TC.
// Only queries that end in the window after warm-up count.
func (h *harness) dnsLoad(ctx context.Context, addr string, names []string, exist bool, server *proc, ours []*proc) (*dnsResult, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	wire := make([][]byte, len(names))
	for i, n := range names {
		m := new(mdns.Msg)
		m.SetQuestion(n, mdns.TypeA)
		if wire[i], err = m.Pack(); err != nil {
			return nil, err
		}
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var phase atomic.Int32
	type client struct {
		lat          []time.Duration
		lost, errors int
		err          error
	}
	clients := make([]client, h.cfg.DNSClients)
	var wg sync.WaitGroup
	var dialErr error
	for i := range clients {
		c := &clients[i]
		c.lat = make([]time.Duration, 0, 1<<16)
		conn, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			dialErr = err
			break
		}
		stop := context.AfterFunc(lctx, func() { conn.SetReadDeadline(time.Now()) })
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer stop()
			defer conn.Close()
			q := make([]byte, 0, 512)
			buf := make([]byte, 2048)
			next := i // clients start at different names
			id := uint16(rand.Uint32())
			for phase.Load() != phaseStop && lctx.Err() == nil {
				id++
				q = append(q[:0], wire[next%len(wire)]...)
				next++
				binary.BigEndian.PutUint16(q, id)
				t0 := time.Now()
				_, werr := conn.Write(q)
				ok, rerr := werr == nil, werr
				for ok {
					conn.SetReadDeadline(t0.Add(dnsTimeout))
					n, err := conn.Read(buf)
					if err != nil {
						ok, rerr = false, err
						break
					}
					if n >= 12 && binary.BigEndian.Uint16(buf) == id {
						rerr = checkDNSAnswer(buf[:n], exist)
						break
					}
					// A late answer to an earlier query: wait on.
				}
				d := time.Since(t0)
				if phase.Load() != phaseMeasure || lctx.Err() != nil {
					continue
				}
				switch {
				case !ok:
					c.lost++
					if c.err == nil {
						c.err = rerr
					}
				case rerr != nil:
					c.errors++
					if c.err == nil {
						c.err = rerr
					}
				default:
					c.lat = append(c.lat, d)
				}
			}
		}()
	}
	finish := func() {
		phase.Store(phaseStop)
		cancel()
		wg.Wait()
	}
	if dialErr != nil {
		finish()
		return nil, dialErr
	}
	sleep(ctx, h.cfg.Warmup)
	win, err := startCPUWindow(procs(server), ours)
	if err != nil {
		finish()
		return nil, err
	}
	self0, _ := cpuTicks(selfPID)
	t0 := time.Now()
	phase.Store(phaseMeasure)
	sleep(ctx, h.cfg.Duration)
	phase.Store(phaseStop)
	per, foreign, err1 := win.end()
	self1, _ := cpuTicks(selfPID)
	elapsed := time.Since(t0)
	finish()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err1 != nil {
		return nil, err1
	}
	r := &dnsResult{foreignPct: foreign, otherTicks: win.otherTicks}
	var lat []time.Duration
	for i := range clients {
		lat = append(lat, clients[i].lat...)
		r.lost += clients[i].lost
		r.errors += clients[i].errors
		if r.firstErr == nil {
			r.firstErr = clients[i].err
		}
	}
	r.answers = len(lat)
	if r.answers == 0 {
		return nil, fmt.Errorf("no query answered in %s (%d lost, %d wrong; first: %v)", h.cfg.Duration, r.lost, r.errors, r.firstErr)
	}
	slices.Sort(lat)
	r.qps = float64(r.answers) / elapsed.Seconds()
	r.p50 = lat[len(lat)*50/100]
	r.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	r.lossPct = float64(r.lost) * 100 / float64(r.answers+r.lost+r.errors)
	if len(per) > 0 {
		r.cpuUS = float64(per[0]) * (1e6 / clkTck) / float64(r.answers)
	}
	r.loadgenUS = float64(self1-self0) * (1e6 / clkTck) / float64(r.answers)
	return r, nil
}

// checkDNSAnswer checks the header of an answer (its ID matched): a
// response, not truncated, NOERROR with an answer record when exist, else
// NXDOMAIN.
func checkDNSAnswer(b []byte, exist bool) error {
	flags := binary.BigEndian.Uint16(b[2:])
	rcode := int(flags & 0xf)
	ancount := binary.BigEndian.Uint16(b[6:])
	switch {
	case flags&(1<<15) == 0:
		return errors.New("answer without the QR bit")
	case flags&(1<<9) != 0:
		return errors.New("answer truncated (TC)")
	case exist && (rcode != mdns.RcodeSuccess || ancount == 0):
		return fmt.Errorf("existing name: rcode %s with %d answer records", mdns.RcodeToString[rcode], ancount)
	case !exist && rcode != mdns.RcodeNameError:
		return fmt.Errorf("missing name: rcode %s, want NXDOMAIN", mdns.RcodeToString[rcode])
	}
	return nil
}

// dnsperfRun runs dnsperf against addr for cfg.Duration with the queries
// in file, cfg.DNSClients sockets and as many queries in flight (as the Go
// client), and reads its statistics. The server's CPU and other load are
// measured over dnsperf's life; dnsperf's own CPU counts as ours.
func (h *harness) dnsperfRun(ctx context.Context, bin, addr, file string, exist bool, server *proc, ours []*proc) (*dnsResult, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	n := strconv.Itoa(h.cfg.DNSClients)
	secs := strconv.FormatFloat(h.cfg.Duration.Seconds(), 'f', -1, 64)
	timeout := strconv.FormatFloat(dnsTimeout.Seconds(), 'f', -1, 64)
	cctx, cancel := context.WithTimeout(ctx, h.cfg.Duration+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, "-s", host, "-p", port, "-d", file, "-l", secs, "-c", n, "-q", n, "-t", timeout)
	cmd.SysProcAttr = childAttr()
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	win, err := startCPUWindow(procs(server), ours)
	if err != nil {
		return nil, err
	}
	self0, _ := cpuTicks(selfPID)
	err = cmd.Run()
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s%s", strings.Join(cmd.Args, " "), err, out.String(), stderr.String())
	}
	rusage := int64((cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds() * clkTck)
	self1, _ := cpuTicks(selfPID)
	win.extraOurs = rusage
	per, foreign, err := win.end()
	if err != nil {
		return nil, err
	}
	r, err := parseDNSPerf(out.String(), exist)
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out.String())
	}
	r.foreignPct, r.otherTicks = foreign, win.otherTicks
	if r.answers > 0 && len(per) > 0 {
		r.cpuUS = float64(per[0]) * (1e6 / clkTck) / float64(r.answers)
	}
	if r.answers > 0 {
		r.loadgenUS = float64(rusage+self1-self0) * (1e6 / clkTck) / float64(r.answers)
	}
	return r, nil
}

// parseDNSPerf reads dnsperf's statistics: queries completed and lost,
// response codes, queries per second, mean latency and its deviation.
func parseDNSPerf(out string, exist bool) (*dnsResult, error) {
	r := &dnsResult{}
	var sent int
	var have int
	want := "NOERROR"
	if !exist {
		want = "NXDOMAIN"
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		num := func() float64 { x, _ := strconv.ParseFloat(f[0], 64); return x }
		switch k {
		case "Queries sent":
			sent = int(num())
		case "Queries completed":
			r.answers = int(num())
			have++
		case "Queries lost":
			r.lost = int(num())
		case "Queries per second":
			r.qps = num()
			have++
		case "Average Latency (s)":
			r.mean = time.Duration(num() * float64(time.Second))
			have++
		case "Latency StdDev (s)":
			r.sd = time.Duration(num() * float64(time.Second))
		case "Response codes":
			// "NOERROR 334278 (100.00%)[, NXDOMAIN 12 (0.00%)]"
			for c := range strings.SplitSeq(v, ",") {
				cf := strings.Fields(c)
				if len(cf) >= 2 && cf[0] != want {
					x, _ := strconv.Atoi(cf[1])
					r.errors += x
				}
			}
		}
	}
	if have < 3 {
		return nil, errors.New("no statistics in dnsperf's output")
	}
	if r.answers == 0 {
		return nil, fmt.Errorf("no query answered (%d sent, %d lost)", sent, r.lost)
	}
	// Answers with another rcode count as errors, not as answers.
	r.qps *= float64(r.answers-r.errors) / float64(r.answers)
	r.answers -= r.errors
	if sent > 0 {
		r.lossPct = float64(r.lost) * 100 / float64(sent)
	}
	return r, nil
}

// procs is p as a list, empty when p is nil (a server in this process, in
// tests).
func procs(p *proc) []*proc {
	if p == nil {
		return nil
	}
	return []*proc{p}
}
