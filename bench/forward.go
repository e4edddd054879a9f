package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults of the forward part.
const (
	defaultFwdBulkSize = 1 << 30
	defaultFwdDialers  = 8
	defaultUDPRate     = 20000
	defaultUDPSize     = 64
	defaultUDPFlows    = 4
	// fwdStreams is the parallel bulk run's number of connections.
	fwdStreams = 8
	// udpDrain is how long a UDP run waits for the last echoes after it
	// stopped sending.
	udpDrain = 500 * time.Millisecond
	// defaultFwdRedo is how often a run is redone at most while other
	// processes take more than fwdOtherMax % of the CPUs (Config.FwdRedo).
	defaultFwdRedo = 3
	fwdOtherMax    = 5.0
	// fwdOtherMinTicks is the least other load, in clock ticks over all
	// CPUs, that makes a run be redone. A bulk run direct lasts 0.2-0.3 s
	// (40-60 ticks on 2 CPUs), where 5% is 2-3 ticks: within the error of
	// reading each process's ticks, and of the kernel's softirq work for
	// loopback traffic, which no process of ours is charged for.
	fwdOtherMinTicks = 10
	// udpHeader is what a UDP run's datagram carries first: run id,
	// sequence number and send time, 8 bytes each.
	udpHeader = 24
)

// Forward figures (Report.Forward), per target:
//
//	down1_mib_s, down8_mib_s       TCP download of -fwd-bulk-size over 1 connection, and
//	                               over 8 at once (each an eighth), MiB/s
//	up1_mib_s, up8_mib_s           the same, uploaded
//	*_cpu_s_per_gib                CPU s per GiB of the measured processes (direct: the
//	                               backend; webgw: gateway+agent)
//	gateway_*_cpu_s_per_gib, ...   webgw only: the gateway's and the agent's part
//	conn_s                         new TCP connections per second, each: connect, send 1
//	                               byte, read its echo, close (-fwd-dialers at once)
//	conn_p50_ms, conn_p99_ms       the time of one such connection
//	conn_cpu_us                    CPU µs per connection of the measured processes
//	gateway_conn_cpu_us, agent_... webgw only: the two parts of the above
//	conn_errors                    connections that failed in the window
//	udp_sent_pps                   datagrams sent per second (-udp-rate offered)
//	udp_pps                        echoes received per second of sending
//	udp_loss_pct                   datagrams sent whose echo never came back, %
//	udp_p50_ms, udp_p99_ms         round trip of the echoes received
//	udp_cpu_us                     CPU µs per datagram sent of the measured processes
//	*_foreign_cpu_pct              % of the machine's CPU other processes used in the run
//
// keyDirect is the forward part's direct target: the load generator to the
// forward backend. Its webgw targets are webgwKey(transport), and the ratios
// webgwKey(transport)+"_vs_direct".
const keyDirect = "direct"

// fwdBackend is a running `bench fwdbackend`.
type fwdBackend struct {
	proc             *proc
	tcpAddr, udpAddr string
}

func (h *harness) startFwdBackend(ctx context.Context, dir string) (*fwdBackend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p, err := h.start("fwdbackend", dir, append(h.selfArgv(), "fwdbackend"), []string{backendRoleEnv + "=fwdbackend"}, true)
	if err != nil {
		return nil, err
	}
	b := &fwdBackend{proc: p}
	err = p.readLines(ctx, 20*time.Second, func(line string) bool {
		if v, ok := strings.CutPrefix(line, "tcp "); ok {
			b.tcpAddr = v
		}
		if v, ok := strings.CutPrefix(line, "udp "); ok {
			b.udpAddr = v
		}
		return b.tcpAddr != "" && b.udpAddr != ""
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return b, nil
}

// fwdStack is a gateway and two agents over one transport: one forwards a
// public TCP port to the backend's TCP port, the other a public UDP port to
// its UDP port.
type fwdStack struct {
	transport          string
	gateway            *gateway
	tcpAgent, udpAgent *proc
	tcpAddr, udpAddr   string // the public ports
}

func (s *fwdStack) stop() {
	for _, p := range []*proc{s.tcpAgent, s.udpAgent} {
		if p != nil {
			p.stop()
		}
	}
	if s.gateway != nil {
		s.gateway.proc.stop()
	}
}

// errExposeExited is returned by startForward when `webgw expose` exits
// before it prints an address: a webgw that cannot forward ports.
var errExposeExited = errors.New("webgw expose exited before it printed the public address")

// startFwdStack starts a gateway with a free --port-range, a tenant, and the
// two agents, and waits until a 1-byte echo comes back through the TCP port.
func (h *harness) startFwdStack(ctx context.Context, dir string, b *fwdBackend, transport string) (_ *fwdStack, err error) {
	s := &fwdStack{transport: transport}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	first, last, err := freePortRange(8)
	if err != nil {
		return nil, err
	}
	if s.gateway, err = h.startGateway(ctx, dir, "gateway", nil, "--port-range", fmt.Sprintf("%d-%d", first, last)); err != nil {
		return nil, err
	}
	out, err := h.cli(ctx, s.gateway, "tenant", "add", "bench")
	if err != nil {
		return nil, err
	}
	token := strings.TrimSpace(out)
	if s.tcpAgent, s.tcpAddr, err = h.startForward(ctx, dir, "agent-tcp", s.gateway, "--token", token, "--name", "fwdtcp", "--transport", transport, "tcp://"+b.tcpAddr); err != nil {
		return nil, err
	}
	if s.udpAgent, s.udpAddr, err = h.startForward(ctx, dir, "agent-udp", s.gateway, "--token", token, "--name", "fwdudp", "--transport", transport, "udp://"+b.udpAddr); err != nil {
		return nil, err
	}
	var last1 error
	err = waitFor(ctx, 10*time.Second, "a 1-byte echo through "+s.tcpAddr, func() bool {
		last1 = echoOnce(ctx, s.tcpAddr, time.Second)
		return last1 == nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v\ngateway:\n%s\nagent:\n%s", err, last1, s.gateway.proc.tail(), s.tcpAgent.tail())
	}
	return s, nil
}

// startForward starts `webgw expose ARGS` (flags, then tcp://ADDR or
// udp://ADDR) through g and waits for the public HOST:PORT it prints.
func (h *harness) startForward(ctx context.Context, dir, name string, g *gateway, args ...string) (*proc, string, error) {
	argv := append([]string{h.bin, "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--log-level", "info"}, args...)
	p, err := h.start(name, dir, argv, nil, false)
	if err != nil {
		return nil, "", err
	}
	var public string
	exited := false
	err = p.readLines(ctx, 30*time.Second, func(line string) bool {
		line = strings.TrimSpace(line)
		for _, scheme := range []string{"tcp://", "udp://"} {
			line = strings.TrimPrefix(line, scheme)
		}
		host, port, err := net.SplitHostPort(line)
		if err != nil || host == "" {
			return false
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return false
		}
		// The ports listen on the host of the gateway's --https-addr;
		// dial its IP when the address printed has a name (localhost
		// may resolve to ::1 first).
		if net.ParseIP(host) == nil {
			host = hostOnly(g.httpsAddr)
		}
		public = net.JoinHostPort(host, port)
		return true
	})
	if err != nil {
		select {
		case <-p.exited:
			exited = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err == nil {
		err = checkTransport(ctx, p, args)
	}
	if err != nil {
		p.stop()
		if exited {
			b, _ := os.ReadFile(p.logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			return nil, "", fmt.Errorf("%w: webgw expose %s: %s", errExposeExited, args[len(args)-1], lines[len(lines)-1])
		}
		return nil, "", err
	}
	return p, public, nil
}

// freePortRange finds n consecutive ports, below Linux's ephemeral range,
// that are free on 127.0.0.1 for TCP and UDP right now, for a gateway's
// --port-range (its default range may be in use by other tests).
func freePortRange(n int) (first, last int, err error) {
	for range 100 {
		first = 21000 + rand.IntN(11000-n)
		if portsFree(first, first+n-1) {
			return first, first + n - 1, nil
		}
	}
	return 0, 0, fmt.Errorf("no %d consecutive free ports found in 21000-31999 for --port-range", n)
}

func portsFree(first, last int) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for p := first; p <= last; p++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		closers = append(closers, ln)
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		closers = append(closers, pc)
	}
	return true
}

// echoOnce makes one connection to addr, sends fwdEcho and reads it back.
func echoOnce(ctx context.Context, addr string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{fwdEcho}); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != fwdEcho {
		return fmt.Errorf("echo %q, want %q", b[0], fwdEcho)
	}
	return nil
}

// fwdTarget is one way to reach the forward backend.
type fwdTarget struct {
	key              string
	tcpAddr, udpAddr string
	// tcpProcs and udpProcs are the processes charged for the TCP and the
	// UDP runs (direct: the backend; webgw: the gateway, then the agent).
	tcpProcs, udpProcs []*proc
}

// forward runs the forward part: direct against webgw per transport, over
// the public TCP and UDP ports of a gateway, cfg.Rounds times interleaved.
func (h *harness) forward(ctx context.Context, rep *Report) error {
	dir := filepath.Join(h.work, "forward")
	backend, err := h.startFwdBackend(ctx, dir)
	if err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	defer backend.proc.stop()
	targets := []*fwdTarget{{key: keyDirect, tcpAddr: backend.tcpAddr, udpAddr: backend.udpAddr,
		tcpProcs: []*proc{backend.proc}, udpProcs: []*proc{backend.proc}}}
	ours := []*proc{backend.proc}
	for _, tr := range h.cfg.Transports {
		s, err := h.startFwdStack(ctx, filepath.Join(dir, tr), backend, tr)
		if errors.Is(err, errExposeExited) && len(targets) == 1 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("forward not measured: %v", err))
			h.logf("forward not measured: %v", err)
			return nil
		}
		if err != nil {
			return fmt.Errorf("forward, webgw over %s: %w", tr, err)
		}
		defer s.stop()
		targets = append(targets, &fwdTarget{key: webgwKey(tr), tcpAddr: s.tcpAddr, udpAddr: s.udpAddr,
			tcpProcs: []*proc{s.gateway.proc, s.tcpAgent}, udpProcs: []*proc{s.gateway.proc, s.udpAgent}})
		ours = append(ours, s.gateway.proc, s.tcpAgent, s.udpAgent)
		h.logf("forward: webgw over %s: TCP %s -> %s, UDP %s -> %s", tr, s.tcpAddr, backend.tcpAddr, s.udpAddr, backend.udpAddr)
	}

	for r := range h.cfg.Rounds {
		tag := fmt.Sprintf("forward %d/%d", r+1, h.cfg.Rounds)
		rd := Round{}
		for _, t := range targets {
			rd[t.key] = Figures{}
		}
		for _, b := range []struct {
			name    string
			mode    byte
			streams int
		}{{"down1", fwdDownload, 1}, {"down8", fwdDownload, fwdStreams}, {"up1", fwdUpload, 1}, {"up8", fwdUpload, fwdStreams}} {
			for _, t := range targets {
				br, err := quietest(h, &rep.ForwardRedone, tag+" "+b.name+" "+t.key, func() (*fwdBulkResult, float64, int64, error) {
					br, err := fwdBulk(ctx, t.tcpAddr, b.mode, b.streams, h.cfg.FwdBulkSize, t.tcpProcs, ours)
					if err != nil {
						return nil, 0, 0, err
					}
					return br, br.foreignPct, br.otherTicks, nil
				})
				if err != nil {
					return fmt.Errorf("forward: %s %s: %w", b.name, t.key, err)
				}
				rd[t.key][b.name+"_mib_s"] = br.mibps
				rd[t.key][b.name+"_cpu_s_per_gib"] = br.cpuSPerGiB
				rd[t.key][b.name+"_foreign_cpu_pct"] = br.foreignPct
				if isWebgwKey(t.key) {
					rd[t.key]["gateway_"+b.name+"_cpu_s_per_gib"] = br.perSPerGiB[0]
					rd[t.key]["agent_"+b.name+"_cpu_s_per_gib"] = br.perSPerGiB[1]
				}
				h.logf("%s  %-5s %-13s %8.0f MiB/s  %5.2f CPU s/GiB  other load %4.1f%%", tag, b.name, t.key, br.mibps, br.cpuSPerGiB, br.foreignPct)
			}
		}
		for _, t := range targets {
			cr, err := quietest(h, &rep.ForwardRedone, tag+" conn "+t.key, func() (*connResult, float64, int64, error) {
				cr, err := h.connRate(ctx, t.tcpAddr, t.tcpProcs, ours)
				if err != nil {
					return nil, 0, 0, err
				}
				return cr, cr.foreignPct, cr.otherTicks, nil
			})
			if err != nil {
				return fmt.Errorf("forward: conn/s %s: %w", t.key, err)
			}
			f := rd[t.key]
			f["conn_s"] = cr.rate
			f["conn_p50_ms"] = ms(cr.p50)
			f["conn_p99_ms"] = ms(cr.p99)
			f["conn_cpu_us"] = cr.cpuUS
			f["conn_errors"] = float64(cr.errors)
			f["conn_foreign_cpu_pct"] = cr.foreignPct
			if isWebgwKey(t.key) {
				f["gateway_conn_cpu_us"] = cr.perUS[0]
				f["agent_conn_cpu_us"] = cr.perUS[1]
			}
			h.logf("%s  conn  %-13s %8.0f conn/s  p50 %6.2f ms  p99 %6.2f ms  %6.1f µs CPU/conn  other load %4.1f%%%s",
				tag, t.key, cr.rate, f["conn_p50_ms"], f["conn_p99_ms"], cr.cpuUS, cr.foreignPct, errNote(cr.errors))
			if cr.errors > 0 {
				h.logf("%s  conn  %-13s first error: %v", tag, t.key, cr.firstErr)
			}
		}
		for _, t := range targets {
			ur, err := quietest(h, &rep.ForwardRedone, tag+" udp "+t.key, func() (*udpResult, float64, int64, error) {
				ur, err := h.udpRun(ctx, t.udpAddr, t.udpProcs, ours)
				if err != nil {
					return nil, 0, 0, err
				}
				return ur, ur.foreignPct, ur.otherTicks, nil
			})
			if err != nil {
				return fmt.Errorf("forward: udp %s: %w", t.key, err)
			}
			f := rd[t.key]
			f["udp_sent_pps"] = ur.sentPPS
			f["udp_pps"] = ur.pps
			f["udp_loss_pct"] = ur.lossPct
			f["udp_p50_ms"] = ms(ur.p50)
			f["udp_p99_ms"] = ms(ur.p99)
			f["udp_cpu_us"] = ur.cpuUS
			f["udp_foreign_cpu_pct"] = ur.foreignPct
			h.logf("%s  udp   %-13s %8.0f of %.0f pps back  loss %5.2f%%  p50 %6.2f ms  p99 %6.2f ms  %6.1f µs CPU/datagram  other load %4.1f%%",
				tag, t.key, ur.pps, ur.sentPPS, ur.lossPct, f["udp_p50_ms"], f["udp_p99_ms"], ur.cpuUS, ur.foreignPct)
		}
		rd.addFwdRatios()
		rep.Forward = append(rep.Forward, rd)
	}
	return nil
}

// quietest runs run, and runs it again (up to cfg.FwdRedo more times) while
// other processes took more than fwdOtherMax % of the machine's CPU during
// it, and at least fwdOtherMinTicks; it returns the run with the least other
// load and adds the runs made again to *redone. The forward and dns parts
// run on machines others share: a run that competed for the cores says
// little. run returns its result, the other load in % and in clock ticks.
func quietest[T any](h *harness, redone *int, what string, run func() (T, float64, int64, error)) (T, error) {
	var best T
	bestOther := -1.0
	for i := 0; i <= max(h.cfg.FwdRedo, 0); i++ {
		r, other, ticks, err := run()
		if err != nil {
			return r, err
		}
		if bestOther < 0 || other < bestOther {
			best, bestOther = r, other
		}
		if other <= fwdOtherMax || ticks < fwdOtherMinTicks || i == max(h.cfg.FwdRedo, 0) {
			break
		}
		*redone++
		h.logf("%s: other processes took %.1f%% of the CPUs, run again", what, other)
	}
	return best, nil
}

// addFwdRatios adds webgw/direct for every webgw target and every rate,
// time and CPU figure both have.
func (r Round) addFwdRatios() {
	d, ok := r[keyDirect]
	if !ok {
		return
	}
	for wk, w := range r {
		if !isWebgwKey(wk) {
			continue
		}
		f := Figures{}
		for k, v := range w {
			if strings.Contains(k, "errors") || strings.Contains(k, "foreign") || strings.Contains(k, "loss") || strings.Contains(k, "sent") {
				continue
			}
			if dv, ok := d[k]; ok && dv != 0 {
				f[k] = v / dv
			}
		}
		r[wk+"_vs_direct"] = f
	}
}

// fwdBulk moves size bytes to (fwdUpload) or from (fwdDownload) the backend
// at addr over streams connections at once, each carrying its share. The
// connections are opened end to end before the timing starts.
func fwdBulk(ctx context.Context, addr string, mode byte, streams int, size int64, measured, ours []*proc) (*fwdBulkResult, error) {
	per := size / int64(streams)
	conns := make([]net.Conn, streams)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	d := net.Dialer{Timeout: 10 * time.Second}
	for i := range conns {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		conns[i] = c
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var ready [1]byte
		if _, err := c.Write([]byte{mode}); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, ready[:]); err != nil {
			return nil, fmt.Errorf("connection %d: wait for the backend: %w", i, err)
		}
		if ready[0] != fwdReady {
			return nil, fmt.Errorf("connection %d: backend answered %q, want %q", i, ready[0], fwdReady)
		}
		c.SetDeadline(time.Now().Add(5 * time.Minute))
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetDeadline(time.Now())
		}
	})
	defer stop()

	win, err := startCPUWindow(measured, ours)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = bulkOne(c, mode, per)
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	per1, foreign, err := win.end()
	if err != nil {
		return nil, err
	}
	total := per * int64(streams)
	gib := float64(total) / (1 << 30)
	r := &fwdBulkResult{mibps: float64(total) / (1 << 20) / elapsed.Seconds(), foreignPct: foreign, otherTicks: win.otherTicks}
	for _, t := range per1 {
		s := float64(t) / clkTck / gib
		r.perSPerGiB = append(r.perSPerGiB, s)
		r.cpuSPerGiB += s
	}
	return r, nil
}

type fwdBulkResult struct {
	mibps      float64
	cpuSPerGiB float64   // CPU seconds per GiB of the measured processes
	perSPerGiB []float64 // the same, per measured process
	foreignPct float64
	otherTicks int64
}

// bulkOne runs one bulk transfer of n bytes on c, which is past fwdReady.
func bulkOne(c net.Conn, mode byte, n int64) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return err
	}
	if mode == fwdDownload {
		got, err := io.CopyBuffer(writerOnly{io.Discard}, io.LimitReader(c, n), make([]byte, 256<<10))
		if err == nil && got != n {
			err = fmt.Errorf("download: %d of %d bytes, then EOF", got, n)
		}
		return err
	}
	for left := n; left > 0; {
		k := min(left, int64(len(bulkChunk)))
		if _, err := c.Write(bulkChunk[:k]); err != nil {
			return fmt.Errorf("upload: after %d of %d bytes: %w", n-left, n, err)
		}
		left -= k
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return fmt.Errorf("upload: read the backend's count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != n {
		return fmt.Errorf("upload: the backend counted %d of %d bytes", got, n)
	}
	return nil
}

// cpuWindow measures the CPU of some processes of ours, of this process and
// of the whole machine between start and end.
type cpuWindow struct {
	measured, others []*proc
	cpu0             []int64
	self0            int64
	busy0, total0    int64
	// otherTicks is, after end, the CPU time in clock ticks (all CPUs)
	// that processes not ours used in the window.
	otherTicks int64
	// extraOurs, set before end, is CPU time in clock ticks of processes
	// of ours that are not in measured or others, such as one that exited
	// in the window (its rusage).
	extraOurs int64
}

// startCPUWindow opens a window; others are our processes not measured
// (they do not count as other load).
func startCPUWindow(measured, others []*proc) (*cpuWindow, error) {
	w := &cpuWindow{measured: measured}
	for _, p := range others {
		if !slices.Contains(measured, p) {
			w.others = append(w.others, p)
		}
	}
	var err0, err1, err2 error
	w.cpu0, err0 = cpuOf(append(append([]*proc(nil), w.measured...), w.others...))
	w.self0, err1 = cpuTicks(selfPID)
	w.busy0, w.total0, err2 = machineTicks()
	return w, errors.Join(err0, err1, err2)
}

// end closes the window: the ticks of each measured process, and the share
// of the machine's CPU that processes not ours used, in %.
func (w *cpuWindow) end() (per []int64, foreignPct float64, err error) {
	all := append(append([]*proc(nil), w.measured...), w.others...)
	cpu1, err0 := cpuOf(all)
	self1, err1 := cpuTicks(selfPID)
	busy1, total1, err2 := machineTicks()
	if err := errors.Join(err0, err1, err2); err != nil {
		return nil, 0, err
	}
	ours := self1 - w.self0 + w.extraOurs
	for i := range all {
		ours += cpu1[i] - w.cpu0[i]
		if i < len(w.measured) {
			per = append(per, cpu1[i]-w.cpu0[i])
		}
	}
	w.otherTicks = max(0, busy1-w.busy0-ours)
	if total1 > w.total0 {
		foreignPct = float64(w.otherTicks) * 100 / float64(total1-w.total0)
	}
	return per, foreignPct, nil
}

type connResult struct {
	conns, errors int
	firstErr      error
	rate          float64
	p50, p99      time.Duration
	cpuUS         float64   // CPU µs per connection of the measured processes
	perUS         []float64 // the same, per measured process
	foreignPct    float64
	otherTicks    int64
}

// connRate runs cfg.FwdDialers dialers against addr for warm-up plus
// duration, each making connections one after another: connect, send
// fwdEcho, read the echo, close. It counts the connections that end in the
// window after warm-up.
func (h *harness) connRate(ctx context.Context, addr string, measured, ours []*proc) (*connResult, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var phase atomic.Int32
	type worker struct {
		lat    []time.Duration
		errors int
		err    error
	}
	workers := make([]worker, h.cfg.FwdDialers)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		w.lat = make([]time.Duration, 0, 1<<14)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for phase.Load() != phaseStop && lctx.Err() == nil {
				t0 := time.Now()
				err := echoOnce(lctx, addr, 5*time.Second)
				d := time.Since(t0)
				if phase.Load() != phaseMeasure {
					continue
				}
				if err != nil {
					if lctx.Err() != nil {
						return
					}
					w.errors++
					if w.err == nil {
						w.err = err
					}
					continue
				}
				w.lat = append(w.lat, d)
			}
		}()
	}
	sleep(ctx, h.cfg.Warmup)
	win, err := startCPUWindow(measured, ours)
	if err != nil {
		phase.Store(phaseStop)
		cancel()
		wg.Wait()
		return nil, err
	}
	t0 := time.Now()
	phase.Store(phaseMeasure)
	sleep(ctx, h.cfg.Duration)
	per, foreign, err1 := win.end()
	elapsed := time.Since(t0)
	phase.Store(phaseStop)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err1 != nil {
		return nil, err1
	}
	r := &connResult{foreignPct: foreign, otherTicks: win.otherTicks}
	var lat []time.Duration
	for i := range workers {
		lat = append(lat, workers[i].lat...)
		r.errors += workers[i].errors
		if r.firstErr == nil {
			r.firstErr = workers[i].err
		}
	}
	r.conns = len(lat)
	if r.conns == 0 {
		return nil, fmt.Errorf("no connection succeeded in %s (%d errors; first: %v)", h.cfg.Duration, r.errors, r.firstErr)
	}
	slices.Sort(lat)
	r.rate = float64(r.conns) / elapsed.Seconds()
	r.p50 = lat[len(lat)*50/100]
	r.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	for _, t := range per {
		us := float64(t) * (1e6 / clkTck) / float64(r.conns)
		r.perUS = append(r.perUS, us)
		r.cpuUS += us
	}
	return r, nil
}

type udpResult struct {
	sent, recv       int
	sentPPS, pps     float64
	lossPct          float64
	p50, p99         time.Duration
	cpuUS            float64 // CPU µs per datagram sent of the measured processes
	foreignPct       float64
	otherTicks       int64
	sendErrs, probes int
}

// udpRun offers cfg.UDPRate datagrams of cfg.UDPSize bytes per second to
// addr for cfg.Duration, paced, round robin from cfg.UDPFlows sockets (one
// session each through a gateway), and counts the echoes that come back
// within udpDrain after the last one was sent. Each socket is first probed
// until one echo returns, so every session is open when the run starts.
func (h *harness) udpRun(ctx context.Context, addr string, measured, ours []*proc) (*udpResult, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	flows := h.cfg.UDPFlows
	conns := make([]*net.UDPConn, flows)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			return nil, err
		}
		conns[i] = c
		c.SetReadBuffer(4 << 20)
		c.SetWriteBuffer(4 << 20)
	}
	r := &udpResult{}
	for i, c := range conns {
		n, err := probeUDP(ctx, c, h.cfg.UDPSize, 10*time.Second)
		r.probes += n
		if err != nil {
			return nil, fmt.Errorf("socket %d: %w", i, err)
		}
	}

	run := rand.Uint64() | 1 // probes are run 0
	rate := float64(h.cfg.UDPRate)
	total := max(1, int(rate*h.cfg.Duration.Seconds()))
	perFlow := total/flows + 1
	type flow struct {
		seen []bool
		recv int
		rtt  []time.Duration
	}
	fl := make([]*flow, flows)
	var recvd atomic.Int64
	var wg sync.WaitGroup
	for i, c := range conns {
		f := &flow{seen: make([]bool, perFlow), rtt: make([]time.Duration, 0, perFlow)}
		fl[i] = f
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if err != nil {
					if errors.Is(err, syscall.ECONNREFUSED) {
						continue
					}
					return // closed
				}
				now := time.Now().UnixNano()
				if n < udpHeader || binary.BigEndian.Uint64(buf) != run {
					continue
				}
				seq := binary.BigEndian.Uint64(buf[8:])
				if seq >= uint64(len(f.seen)) || f.seen[seq] {
					continue
				}
				f.seen[seq] = true
				f.recv++
				f.rtt = append(f.rtt, time.Duration(now-int64(binary.BigEndian.Uint64(buf[16:]))))
				recvd.Add(1)
			}
		}()
	}

	win, err := startCPUWindow(measured, ours)
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
		return nil, err
	}
	pkt := make([]byte, h.cfg.UDPSize)
	binary.BigEndian.PutUint64(pkt, run)
	t0 := time.Now()
	sent := 0
	for sent < total && ctx.Err() == nil {
		due := min(total, int(time.Since(t0).Seconds()*rate)+1)
		for ; sent < due; sent++ {
			binary.BigEndian.PutUint64(pkt[8:], uint64(sent/flows))
			binary.BigEndian.PutUint64(pkt[16:], uint64(time.Now().UnixNano()))
			if _, err := conns[sent%flows].Write(pkt); err != nil {
				r.sendErrs++
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	sendTime := time.Since(t0)
	waitFor(ctx, udpDrain, "the last echoes", func() bool { return recvd.Load() >= int64(sent) })
	per, foreign, err := win.end()
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	var rtt []time.Duration
	for _, f := range fl {
		r.recv += f.recv
		rtt = append(rtt, f.rtt...)
	}
	r.sent = sent
	r.sentPPS = float64(sent) / sendTime.Seconds()
	r.pps = float64(r.recv) / sendTime.Seconds()
	r.lossPct = float64(sent-r.recv) * 100 / float64(sent)
	r.foreignPct, r.otherTicks = foreign, win.otherTicks
	for _, t := range per {
		r.cpuUS += float64(t) * (1e6 / clkTck) / float64(sent)
	}
	if len(rtt) == 0 {
		return nil, fmt.Errorf("none of %d datagrams came back", sent)
	}
	slices.Sort(rtt)
	r.p50 = rtt[len(rtt)*50/100]
	r.p99 = rtt[min(len(rtt)-1, len(rtt)*99/100)]
	return r, nil
}

// probeUDP sends a probe (run 0) on c every 20 ms until one comes back, and
// returns how many it sent.
func probeUDP(ctx context.Context, c *net.UDPConn, size int, timeout time.Duration) (int, error) {
	pkt := make([]byte, size)
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(timeout)
	n := 0
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n++
		if _, err := c.Write(pkt); err != nil {
			last = err
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			k, err := c.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					last = err
				}
				break
			}
			if k >= 8 && binary.BigEndian.Uint64(buf) == 0 {
				c.SetReadDeadline(time.Time{})
				return n, nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return n, err
	}
	return n, fmt.Errorf("no echo of %d probes in %s (last error: %v)", n, timeout, last)
}
