package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// webgwBin is the webgw binary built once by TestMain.
var webgwBin string

// curlErr is set when curl is not installed; tests that need it fail with it.
var curlErr error

// helpers are the modes a re-executed test binary can run in instead of the
// tests (netns_test.go registers them), chosen by $WEBGW_E2E_HELPER; the
// arguments are os.Args[1:].
var helpers = map[string]func(args []string) int{}

func TestMain(m *testing.M) {
	if mode := os.Getenv("WEBGW_E2E_HELPER"); mode != "" {
		h, ok := helpers[mode]
		if !ok {
			fmt.Fprintf(os.Stderr, "e2e: unknown helper mode %q\n", mode)
			os.Exit(2)
		}
		os.Exit(h(os.Args[1:]))
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "webgw-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	webgwBin = filepath.Join(dir, "webgw")
	build := exec.Command("go", "build", "-o", webgwBin, "github.com/webgw/webgw/cmd/webgw")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build of webgw failed: %v\n%s", err, out)
		return 1
	}
	if _, err := exec.LookPath("curl"); err != nil {
		curlErr = fmt.Errorf("curl is not installed (the e2e tests check the gateway with real curl; install it, e.g. apt-get install curl): %w", err)
	}
	return m.Run()
}

// poll calls cond every 10 ms until it returns true (true) or timeout passes (false).
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cleanEnv is the environment without WEBGW_* variables, so a developer's
// settings cannot change what the tests run.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WEBGW_") {
			env = append(env, kv)
		}
	}
	return env
}

// proc is a running webgw process whose stdout and stderr are captured.
type proc struct {
	name   string
	args   []string
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{} // closed once the process has exited and been waited for
	state  *os.ProcessState
}

// startProc starts webgw with args in a fresh working directory. A cleanup
// kills it (if still running) and waits for it, and on failure logs its output.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, args: args, done: make(chan struct{})}
	p.cmd = exec.Command(webgwBin, args...)
	p.cmd.Dir = t.TempDir()
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			p.cmd.Process.Kill()
		}
		<-p.done
		if t.Failed() {
			t.Logf("--- %s (webgw %s) exited %v\nstdout:\n%s\nstderr (tail):\n%s",
				p.name, strings.Join(p.args, " "), p.state, p.stdout.String(), tail(p.stderr.String(), 6000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// waitLine waits until stdout has a line matching re and returns its submatches.
func (p *proc) waitLine(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	var exited bool
	ok := poll(timeout, func() bool {
		exited = !p.running()
		for _, line := range strings.Split(p.stdout.String(), "\n") {
			if m = re.FindStringSubmatch(line); m != nil {
				return true
			}
		}
		return exited
	})
	if m != nil {
		return m
	}
	if exited {
		t.Fatalf("%s exited (%v) before printing a line matching %q\nstdout:\n%s\nstderr:\n%s", p.name, p.state, re, p.stdout.String(), tail(p.stderr.String(), 4000))
	}
	if !ok {
		t.Fatalf("%s printed no line matching %q within %v\nstdout:\n%s\nstderr:\n%s", p.name, re, timeout, p.stdout.String(), tail(p.stderr.String(), 4000))
	}
	return nil
}

// signal sends sig to the process.
func (p *proc) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
}

// wait waits for the process to exit and returns its exit code (-1 if
// killed by a signal); it fails the test after timeout.
func (p *proc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v", p.name, timeout)
	}
	return p.state.ExitCode()
}

// kill sends SIGKILL and waits for the process.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
}

// run runs webgw to completion (at most timeout) and returns its output and exit code.
func run(t testing.TB, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, webgwBin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = cleanEnv()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("webgw %s did not finish within %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), timeout, o.String(), e.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run webgw %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// mustRun is run that fails the test unless webgw exits 0.
func mustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := run(t, 30*time.Second, args...)
	if code != 0 {
		t.Fatalf("webgw %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// curlResult is what one curl run gave.
type curlResult struct {
	stdout, stderr string
	code           int // curl's exit code
}

// curl runs curl -sS with args (at most 30 s).
func curl(t testing.TB, args ...string) curlResult {
	t.Helper()
	if curlErr != nil {
		t.Fatal(curlErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run curl: %v", err)
	}
	return curlResult{stdout: o.String(), stderr: e.String(), code: cmd.ProcessState.ExitCode()}
}

// mustCurl is curl that fails the test unless curl exits 0.
func mustCurl(t testing.TB, args ...string) string {
	t.Helper()
	r := curl(t, args...)
	if r.code != 0 {
		t.Fatalf("curl %s: exit %d: %s%s", strings.Join(args, " "), r.code, r.stderr, r.stdout)
	}
	return r.stdout
}

// gateway is a running `webgw gateway` and what its banner said.
type gateway struct {
	*proc
	dataDir     string
	httpsAddr   string // https+tunnel, 127.0.0.1:PORT
	httpAddr    string // plain http
	apiAddr     string // admin API HOST:PORT
	tokenFile   string // admin token
	caFile      string
	fingerprint string
	dnsAddr     string // the DNS server's address; "" when DNS is off
	exposeLine  string // the ready-to-paste `webgw expose ...` line
}

var (
	reExposeLine = regexp.MustCompile(`^\s+(webgw expose --gateway (\S+) --ca (\S+) \S+)$`)
	reHTTPS      = regexp.MustCompile(`(?m)^  https\+tunnel  (\S+)$`)
	reHTTP       = regexp.MustCompile(`(?m)^  http +(\S+) \(redirects to https\)$`)
	reAPI        = regexp.MustCompile(`(?m)^  admin api +http://(\S+) \(token in (\S+)\)$`)
	reCA         = regexp.MustCompile(`(?m)^  ca +(\S+)$`)
	reFinger     = regexp.MustCompile(`(?m)^  fingerprint +(\S+)$`)
	reDNS        = regexp.MustCompile(`(?m)^  dns +(\S+) \(udp and tcp`)
	reURL        = regexp.MustCompile(`^(https://[a-z0-9-]+\.localhost:\d+)$`)
)

// startGateway starts a gateway on OS-chosen loopback ports with a fresh data dir.
func startGateway(t testing.TB, extra ...string) *gateway {
	t.Helper()
	args := []string{"gateway", "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0", "--data-dir", t.TempDir()}
	return startGatewayArgs(t, append(args, extra...)...)
}

// startGatewayArgs starts `webgw ARGS...` and reads its banner.
func startGatewayArgs(t testing.TB, args ...string) *gateway {
	t.Helper()
	p := startProc(t, "gateway", args...)
	m := p.waitLine(t, reExposeLine, 20*time.Second)
	out := p.stdout.String()
	g := &gateway{proc: p, exposeLine: m[1]}
	for i, a := range args {
		if a == "--data-dir" && i+1 < len(args) {
			g.dataDir = args[i+1]
		}
	}
	field := func(re *regexp.Regexp, what string) []string {
		t.Helper()
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("gateway banner has no %s line (%q):\n%s", what, re, out)
		}
		return m
	}
	g.httpsAddr = field(reHTTPS, "https+tunnel")[1]
	g.httpAddr = field(reHTTP, "http")[1]
	am := field(reAPI, "admin api")
	g.apiAddr, g.tokenFile = am[1], am[2]
	g.caFile = field(reCA, "ca")[1]
	g.fingerprint = field(reFinger, "fingerprint")[1]
	if m := reDNS.FindStringSubmatch(out); m != nil {
		g.dnsAddr = m[1]
	}
	return g
}

// httpsPort is the port of the gateway's HTTPS listener.
func (g *gateway) httpsPort() string { return portOf(g.httpsAddr) }

// admin returns the flags an admin CLI command needs to reach this gateway.
func (g *gateway) admin() []string {
	return []string{"--api-addr", g.apiAddr, "--data-dir", g.dataDir}
}

// addTenant creates a tenant and returns its token.
func (g *gateway) addTenant(t testing.TB, name string) string {
	t.Helper()
	out := mustRun(t, append([]string{"tenant", "add", name}, g.admin()...)...)
	tok := strings.TrimSpace(out)
	if tok == "" || strings.Contains(tok, "\n") {
		t.Fatalf("tenant add %s: want the token as the only stdout line, got %q", name, out)
	}
	return tok
}

// expose starts `webgw expose --gateway G --ca CA ARGS...` and waits for its URL.
func (g *gateway) expose(t testing.TB, args ...string) (*proc, string) {
	t.Helper()
	p := startProc(t, "expose", append([]string{"expose", "--gateway", g.httpsAddr, "--ca", g.caFile}, args...)...)
	return p, waitURL(t, p)
}

// waitURL waits for an expose process to print its public URL.
func waitURL(t testing.TB, p *proc) string {
	t.Helper()
	return p.waitLine(t, reURL, 15*time.Second)[1]
}

// caPool reads PEM certificates into a pool.
func caPool(t testing.TB, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("%s holds no PEM certificate", file)
	}
	return pool
}

// client is an HTTP client that dials the gateway's HTTPS address for every
// URL (NAME.localhost needs no resolver) and trusts roots.
func (g *gateway) client(t testing.TB, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.httpsAddr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	return freeAddrs(t, 1)[0]
}

// freeAddrs returns n distinct loopback addresses with ports that were free
// a moment ago (all held open together, so they differ).
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

func portOf(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		panic(err)
	}
	return p
}

// hostOf returns the host of an https://HOST:PORT URL.
func hostOf(url string) string {
	h, _, err := net.SplitHostPort(strings.TrimPrefix(url, "https://"))
	if err != nil {
		panic(err)
	}
	return h
}
