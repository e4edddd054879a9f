package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// proc is one child process. Its stdout and stderr go to logPath; stdout
// lines are also offered on lines until the harness has read what it needs.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	lines   chan string   // stdout lines; closed at EOF
	exited  chan struct{} // closed when the process has been reaped
	stdin   io.Closer     // held open for the backend, which exits when it closes

	stopOnce sync.Once
}

// procTable remembers every running child so a failing or interrupted run
// still kills them all.
type procTable struct {
	mu    sync.Mutex
	procs map[*proc]bool // guarded by mu
}

func (t *procTable) add(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.procs == nil {
		t.procs = map[*proc]bool{}
	}
	t.procs[p] = true
}

func (t *procTable) killAll() {
	t.mu.Lock()
	ps := make([]*proc, 0, len(t.procs))
	for p := range t.procs {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	for _, p := range ps {
		p.stop()
	}
}

// start runs argv with its output in dir/name.log.
func (h *harness) start(name, dir string, argv []string, env []string, withStdin bool) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = pw
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = childAttr()
	p := &proc{name: name, cmd: cmd, logPath: logPath, lines: make(chan string, 64), exited: make(chan struct{})}
	if withStdin {
		in, err := cmd.StdinPipe()
		if err != nil {
			pr.Close()
			pw.Close()
			return nil, err
		}
		p.stdin = in
	}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close()
	h.procs.add(p)
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		out = nil
	}
	go func() {
		defer close(p.lines)
		defer pr.Close()
		if out != nil {
			defer out.Close()
		}
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if out != nil {
				fmt.Fprintln(out, line)
			}
			select {
			case p.lines <- line:
			default: // nobody is listening any more
			}
		}
	}()
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// pid is the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop kills the process and reaps it.
func (p *proc) stop() {
	p.stopOnce.Do(func() {
		if p.stdin != nil {
			p.stdin.Close()
		}
		p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
		}
	})
}

// closeAndWait closes the process's stdin (the backend and the link exit
// then), waits up to timeout for it to exit, and stops it.
func (p *proc) closeAndWait(timeout time.Duration) {
	if p.stdin != nil {
		p.stdin.Close()
		select {
		case <-p.exited:
		case <-time.After(timeout):
		}
	}
	p.stop()
}

// readLines reads stdout lines until done says it has what it needs, the
// process exits, or the timeout passes.
func (p *proc) readLines(ctx context.Context, timeout time.Duration, done func(line string) bool) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return fmt.Errorf("%s exited before it was ready:\n%s", p.name, p.tail())
			}
			if done(line) {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("%s not ready after %s:\n%s", p.name, timeout, p.tail())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "  " + strings.Join(lines, "\n  ") + "\n  (log: " + p.logPath + ")"
}

// backend is a running `bench backend`.
type backend struct {
	proc                *proc
	httpAddr, httpsAddr string
	dialNS              string // namespace the load generator dials it from; "" is its own
}

func (h *harness) startBackend(ctx context.Context, dir string) (*backend, error) {
	return h.startTaggedBackend(ctx, dir, "")
}

// startTaggedBackend starts a backend; a non-empty id tags its answers
// (backendIDHeader, backendRecvHeader) and names its log backend-ID.log.
func (h *harness) startTaggedBackend(ctx context.Context, dir, id string) (*backend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	argv := append(append([]string(nil), h.backend...), "-cert", h.certFile, "-key", h.keyFile)
	b := &backend{}
	if n := h.place; n != nil {
		argv = netnsArgv(n.agent, append(argv, "-listen", n.agentIP))
		b.dialNS = n.gw
	}
	name := "backend"
	if id != "" {
		argv = append(argv, "-id", id)
		name += "-" + id
	}
	p, err := h.start(name, dir, argv, []string{backendRoleEnv + "=backend"}, true)
	if err != nil {
		return nil, err
	}
	b.proc = p
	err = p.readLines(ctx, 20*time.Second, func(line string) bool {
		if v, ok := strings.CutPrefix(line, "http "); ok {
			b.httpAddr = v
		}
		if v, ok := strings.CutPrefix(line, "https "); ok {
			b.httpsAddr = v
		}
		return b.httpAddr != "" && b.httpsAddr != ""
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return b, nil
}

func (b *backend) target(key string, roots *x509.CertPool) *target {
	if key == keyHTTPS {
		return &target{key: key, base: "https://" + b.httpsAddr, dialAddr: b.httpsAddr, tlsName: hostOnly(b.httpsAddr), roots: roots, netns: b.dialNS}
	}
	return &target{key: key, base: "http://" + b.httpAddr, dialAddr: b.httpAddr, netns: b.dialNS}
}

// gateway is a running `webgw gateway`, with what its banner says.
type gateway struct {
	proc      *proc
	dataDir   string
	httpsAddr string // HTTPS, tunnel (TCP) and, with QUIC, the UDP port of the same number
	apiAddr   string // admin API, host:port
	dnsAddr   string // authoritative DNS, UDP and TCP; "" when the banner says off
	caFile    string
	caRoots   *x509.CertPool
	dialNS    string // namespace the load generator dials it from; "" is its own
}

// startGateway starts a gateway on 127.0.0.1 with its data in dir/name-data
// and reads its banner. extra are more flags (e.g. --upstream-allow).
func (h *harness) startGateway(ctx context.Context, dir, name string, env []string, extra ...string) (*gateway, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	g := &gateway{dataDir: filepath.Join(dir, name+"-data")}
	args := append([]string{h.bin, "gateway",
		"--data-dir", g.dataDir,
		"--https-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0",
		"--access-log=false", "--log-level", "warn",
	}, extra...)
	if n := h.place; n != nil {
		args = netnsArgv(n.gw, append(args, "--https-addr", n.gwIP+":0"))
		g.dialNS = n.gw
	}
	p, err := h.start(name, dir, args, env, false)
	if err != nil {
		return nil, err
	}
	g.proc = p
	// The banner: "  https+tunnel  ADDR", "  admin api     http://ADDR (...)",
	// "  dns           ADDR (udp and tcp, ...)" (before the ca line) and
	// "  ca            FILE".
	err = p.readLines(ctx, 30*time.Second, func(line string) bool {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "https+tunnel":
			g.httpsAddr = f[1]
		case len(f) >= 3 && f[0] == "admin" && f[1] == "api":
			g.apiAddr = strings.TrimPrefix(f[2], "http://")
		case len(f) >= 2 && f[0] == "ca":
			g.caFile = f[1]
		case len(f) >= 3 && f[0] == "dns" && f[2] == "(udp":
			g.dnsAddr = f[1]
		}
		return g.httpsAddr != "" && g.caFile != "" && g.apiAddr != ""
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	pem, err := os.ReadFile(g.caFile)
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("gateway CA: %w", err)
	}
	g.caRoots = x509.NewCertPool()
	if !g.caRoots.AppendCertsFromPEM(pem) {
		p.stop()
		return nil, fmt.Errorf("gateway CA %s holds no certificate", g.caFile)
	}
	return g, nil
}

// admin is the flags that point an admin command at g.
func (g *gateway) admin() []string {
	return []string{"--api-addr", g.apiAddr, "--data-dir", g.dataDir}
}

// adminToken is the gateway's admin API token.
func (g *gateway) adminToken() (string, error) {
	b, err := os.ReadFile(filepath.Join(g.dataDir, "admin.token"))
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// cli runs `webgw ARGS... <admin flags>` and returns its stdout.
func (h *harness) cli(ctx context.Context, g *gateway, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, h.bin, append(args, g.admin()...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("webgw %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// startAgent starts `webgw expose` through g with args (flags, then the
// target) and waits for the public URL it prints.
func (h *harness) startAgent(ctx context.Context, dir, name string, g *gateway, env []string, args ...string) (*proc, *url.URL, error) {
	// Info logs only connection events (no per-request lines); "tunnel
	// up" says which transport a connection uses.
	argv := append([]string{h.bin, "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--log-level", "info"}, args...)
	if n := h.place; n != nil {
		argv = netnsArgv(n.agent, argv)
	}
	p, err := h.start(name, dir, argv, env, false)
	if err != nil {
		return nil, nil, err
	}
	var public *url.URL
	err = p.readLines(ctx, 30*time.Second, func(line string) bool {
		u, err := url.Parse(strings.TrimSpace(line))
		if err == nil && u.Scheme == "https" && u.Host != "" {
			public = u
			return true
		}
		return false
	})
	if err == nil {
		err = checkTransport(ctx, p, args)
	}
	if err != nil {
		p.stop()
		return nil, nil, err
	}
	return p, public, nil
}

// checkTransport checks that an agent started with --transport T logs its
// tunnels as up over T ("tunnel up ... transport=T"): an agent without the
// transport may fall back to another one.
func checkTransport(ctx context.Context, p *proc, args []string) error {
	want := ""
	for i, a := range args {
		if a == "--transport" && i+1 < len(args) {
			want = args[i+1]
		}
	}
	if want == "" || want == "auto" {
		return nil
	}
	var got []string
	err := waitFor(ctx, 5*time.Second, p.name+" to log its tunnel", func() bool {
		got = got[:0]
		b, _ := os.ReadFile(p.logPath)
		for line := range strings.SplitSeq(string(b), "\n") {
			if !strings.Contains(line, "tunnel up") {
				continue
			}
			for f := range strings.FieldsSeq(line) {
				if v, ok := strings.CutPrefix(f, "transport="); ok {
					got = append(got, v)
				}
			}
		}
		return len(got) > 0
	})
	if err != nil {
		return fmt.Errorf("%w:\n%s", err, p.tail())
	}
	for _, t := range got {
		if t != want {
			return fmt.Errorf("%s was started with --transport %s but its tunnel is up over %s (this webgw cannot use %s)", p.name, want, t, want)
		}
	}
	return nil
}

// publicTarget reaches public (a service URL of g) through g's HTTPS address.
func (g *gateway) publicTarget(key string, public *url.URL) *target {
	return &target{key: key, base: public.Scheme + "://" + public.Host, dialAddr: g.httpsAddr,
		tlsName: public.Hostname(), roots: g.caRoots, host: public.Host, netns: g.dialNS}
}

// stack is a gateway and an agent exposing a backend over one transport.
type stack struct {
	backend        *backend // shared: the round stops it
	transport      string
	gateway, agent *proc
	httpsAddr      string // the gateway's HTTPS and tunnel address
	caFile         string
	publicURL      *url.URL
	caRoots        *x509.CertPool
	dialNS         string           // the gateway's namespace, when placed in one
	pprofAddr      map[*proc]string // pprof listeners when built with the hook
}

func (s *stack) stop() {
	for _, p := range []*proc{s.agent, s.gateway} {
		if p != nil {
			p.stop()
		}
	}
}

// startStack starts a gateway and an agent with --transport transport that
// exposes b; withPprof sets the pprof hook's environment for both.
func (h *harness) startStack(ctx context.Context, dir string, b *backend, transport string, withPprof bool) (_ *stack, err error) {
	s := &stack{backend: b, transport: transport, pprofAddr: map[*proc]string{}}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var env []string
	if withPprof {
		env = []string{pprofEnv + "=" + filepath.Join(dir, "gateway.pprof-addr")}
	}
	g, err := h.startGateway(ctx, dir, "gateway", env)
	if err != nil {
		return nil, err
	}
	s.gateway, s.httpsAddr, s.caFile, s.caRoots, s.dialNS = g.proc, g.httpsAddr, g.caFile, g.caRoots, g.dialNS

	if withPprof {
		env = []string{pprofEnv + "=" + filepath.Join(dir, "agent.pprof-addr")}
	}
	if s.agent, s.publicURL, err = h.startAgent(ctx, dir, "agent", g, env, "--transport", transport, "http://"+b.httpAddr); err != nil {
		return nil, err
	}
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	if withPprof {
		for p, file := range map[*proc]string{s.gateway: "gateway.pprof-addr", s.agent: "agent.pprof-addr"} {
			b, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				return nil, fmt.Errorf("pprof hook of %s: %w", p.name, err)
			}
			s.pprofAddr[p] = strings.TrimSpace(string(b))
		}
	}
	return s, nil
}

// webgwTarget reaches the backend through the gateway's public URL.
func (s *stack) webgwTarget(key string) *target {
	return &target{key: key, base: s.publicURL.Scheme + "://" + s.publicURL.Host, dialAddr: s.httpsAddr,
		tlsName: s.publicURL.Hostname(), roots: s.caRoots, host: s.publicURL.Host, netns: s.dialNS}
}

// ready polls the public URL until it answers 200 (the agent printed its URL,
// so it should at once).
func (s *stack) ready(ctx context.Context) error {
	t := s.webgwTarget(webgwKey(s.transport))
	tr := t.transport(false, 1)
	defer tr.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, "GET", t.base+"/small", nil)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fmt.Errorf("%s does not answer: %v\ngateway:\n%s\nagent:\n%s", t.base, last, s.gateway.tail(), s.agent.tail())
}

func hostOnly(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100
// on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) returns it).
const clkTck = 100

// cpuTicks is utime+stime of pid in clock ticks (all threads, from /proc/PID/stat).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return ut + st, nil
}

// rssKB is VmRSS of pid in KiB (/proc/PID/status says "kB").
func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// cpuOf reads the CPU ticks of each process.
func cpuOf(ps []*proc) ([]int64, error) {
	out := make([]int64, len(ps))
	for i, p := range ps {
		t, err := cpuTicks(p.pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		out[i] = t
	}
	return out, nil
}

// machineTicks is the busy and the total CPU time of the whole machine, in
// clock ticks summed over CPUs (first line of /proc/stat).
func machineTicks() (busy, total int64, err error) {
	line := firstLine("/proc/stat")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected %q", line)
	}
	var v [8]int64 // user nice system idle iowait irq softirq steal
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
	}
	busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return busy, busy + v[3] + v[4], nil
}
