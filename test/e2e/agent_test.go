package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// status GETs url with curl (--max-time 1) and returns the HTTP status
// ("000" when there was no answer in time) and the body.
func status(t testing.TB, ca, url string) (string, string) {
	t.Helper()
	r := curl(t, "--max-time", "1", "--cacert", ca, "-w", "\n%{http_code}", url)
	body, code, _ := cutLast(r.stdout, "\n")
	if code == "" {
		code = "000"
	}
	return code, body
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return "", s, false
}

// TestAgentKilledAndRestarted: when the only agent of a name dies, the name
// answers 502/503 within 1 s instead of hanging; a restarted agent serves it
// again within 2 s of its start.
func TestAgentKilledAndRestarted(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tok := g.addTenant(t, "acme")
	args := []string{"expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--token", tok, "--name", "app",
		textBackend(t, "app ok\n")}
	a := startProc(t, "expose", args...)
	url := waitURL(t, a)
	if code, body := status(t, g.caFile, url); code != "200" || body != "app ok\n" {
		t.Fatalf("before the kill: GET %s = %s %q", url, code, body)
	}

	killed := time.Now()
	a.kill(t)
	var seen []string
	for {
		code, _ := status(t, g.caFile, url)
		seen = append(seen, code)
		if code == "502" || code == "503" {
			if d := time.Since(killed); d > time.Second {
				t.Fatalf("502/503 came %v after the kill, want within 1 s (statuses seen: %v)", d, seen)
			}
			break
		}
		if time.Since(killed) > time.Second {
			t.Fatalf("no 502/503 within 1 s of killing the agent (statuses seen: %v)", seen)
		}
	}

	restarted := time.Now()
	a2 := startProc(t, "expose (restarted)", args...)
	seen = nil
	for {
		code, body := status(t, g.caFile, url)
		seen = append(seen, code)
		if code == "200" && body == "app ok\n" {
			break
		}
		if time.Since(restarted) > 2*time.Second {
			t.Fatalf("not served within 2 s of restarting the agent (statuses seen: %v)", seen)
		}
	}
	if got := waitURL(t, a2); got != url {
		t.Errorf("restarted agent printed %q, want the same URL %q", got, url)
	}
}

// TestGatewayRestart: after a gateway restart (SIGTERM, exit 0, same flags
// and data dir) the same agent process reconnects by itself and the name
// still belongs to its tenant: another tenant cannot take it.
func TestGatewayRestart(t *testing.T) {
	t.Parallel()
	addrs := freeAddrs(t, 3)
	args := []string{"gateway", "--https-addr", addrs[0], "--http-addr", addrs[1], "--api-addr", addrs[2], "--data-dir", t.TempDir()}
	g := startGatewayArgs(t, args...)
	if g.httpsAddr != addrs[0] || g.httpAddr != addrs[1] || g.apiAddr != addrs[2] {
		t.Fatalf("banner addresses %s %s %s, want the ones passed: %v", g.httpsAddr, g.httpAddr, g.apiAddr, addrs)
	}
	tok := g.addTenant(t, "acme")
	a, url := g.expose(t, "--token", tok, "--name", "keep", textBackend(t, "first backend\n"))
	if code, body := status(t, g.caFile, url); code != "200" || body != "first backend\n" {
		t.Fatalf("GET %s = %s %q", url, code, body)
	}

	g.signal(t, syscall.SIGTERM)
	if code := g.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("gateway exit code after SIGTERM = %d, want 0", code)
	}
	g2 := startGatewayArgs(t, args...)
	waitFor(t, 15*time.Second, "the agent to reconnect and "+url+" to serve 200 again", func() bool {
		code, body := status(t, g2.caFile, url)
		return code == "200" && body == "first backend\n"
	})
	if !a.running() {
		t.Fatalf("the agent exited (%v) instead of reconnecting", a.state)
	}

	evil := g2.addTenant(t, "evil")
	out, errOut, code := run(t, 20*time.Second, "expose", "--gateway", g2.httpsAddr, "--ca", g2.caFile,
		"--token", evil, "--name", "keep", textBackend(t, "evil backend\n"))
	if code == 0 {
		t.Errorf("hijack attempt: expose exited 0, want non-zero\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
	if !strings.Contains(errOut, "belongs to another tenant") {
		t.Errorf("hijack attempt: stderr does not say the name belongs to another tenant:\n%s", errOut)
	}
	if code, body := status(t, g2.caFile, url); code != "200" || body != "first backend\n" {
		t.Errorf("after the hijack attempt GET %s = %s %q, want 200 from the first backend", url, code, body)
	}
}

// TestClosedMode: a gateway with --open=false refuses agents without a
// token and accepts a tenant's.
func TestClosedMode(t *testing.T) {
	t.Parallel()
	g := startGateway(t, "--open=false")
	backend := textBackend(t, "closed ok\n")
	out, errOut, code := run(t, 20*time.Second, "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, backend)
	if code == 0 {
		t.Errorf("expose without a token on a closed gateway exited 0\nstdout:\n%s", out)
	}
	if !regexp.MustCompile(`(?i)token`).MatchString(errOut) || !regexp.MustCompile(`(?i)requir`).MatchString(errOut) {
		t.Errorf("expose without a token: stderr does not say a token is required:\n%s", errOut)
	}
	if strings.TrimSpace(out) != "" {
		t.Errorf("expose without a token printed a URL: %q", out)
	}

	tok := g.addTenant(t, "acme")
	_, url := g.expose(t, "--token", tok, backend)
	if code, body := status(t, g.caFile, url); code != "200" || body != "closed ok\n" {
		t.Errorf("GET %s = %s %q", url, code, body)
	}
}

// TestAgentDrain: SIGTERM lets an in-flight request finish, then the agent exits 0.
func TestAgentDrain(t *testing.T) {
	t.Parallel()
	inFlight := make(chan struct{}, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case inFlight <- struct{}{}:
		default:
		}
		select { // a slow request: about a second of work
		case <-time.After(time.Second):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "slow done\n")
	}))
	g := startGateway(t)
	a, url := g.expose(t, backend)

	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	client := g.client(t, caPool(t, g.caFile))
	go func() {
		resp, err := client.Get(url + "/slow")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-inFlight:
	case r := <-done:
		t.Fatalf("request ended before reaching the backend: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the backend within 10 s")
	}
	a.signal(t, syscall.SIGTERM)
	select {
	case r := <-done:
		if r.err != nil || r.status != 200 || r.body != "slow done\n" {
			t.Errorf("in-flight request across the agent's SIGTERM = %d %q, %v; want 200 \"slow done\"", r.status, r.body, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("in-flight request did not complete within 15 s of SIGTERM")
	}
	if code := a.wait(t, 15*time.Second); code != 0 {
		t.Errorf("agent exit code after SIGTERM = %d, want 0", code)
	}
}

// TestAgentBeforeGateway: an agent started while its gateway is down keeps
// retrying and comes up when the gateway does.
func TestAgentBeforeGateway(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	// An earlier run of the gateway made the data dir and its CA, which the
	// agent is given.
	first := startGatewayArgs(t, "gateway", "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--data-dir", dataDir)
	first.signal(t, syscall.SIGTERM)
	if code := first.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("first gateway exit code after SIGTERM = %d, want 0", code)
	}

	httpsAddr := freeAddr(t)
	a := startProc(t, "expose", "expose", "--gateway", httpsAddr, "--ca", first.caFile, textBackend(t, "early ok\n"))
	waitFor(t, 10*time.Second, "the agent to log its failed connection", func() bool {
		return a.stderr.String() != "" || !a.running()
	})
	if !a.running() {
		t.Fatalf("agent exited (%v) while the gateway was down, want it to retry\nstderr:\n%s", a.state, a.stderr.String())
	}
	g := startGatewayArgs(t, "gateway", "--https-addr", httpsAddr, "--http-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--data-dir", dataDir)
	url := a.waitLine(t, reURL, 10*time.Second)[1]
	if code, body := status(t, g.caFile, url); code != "200" || body != "early ok\n" {
		t.Errorf("GET %s = %s %q", url, code, body)
	}
}

// TestAgentConfigFile: `webgw agent --config` serves several services and
// prints "NAME URL" for each.
func TestAgentConfigFile(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	cfg := fmt.Sprintf(`ca: %s
gateways:
  - addr: %s
services:
  - target: %s
  - name: named
    target: %s
`, g.caFile, g.httpsAddr, textBackend(t, "backend A\n"), textBackend(t, "backend B\n"))
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startProc(t, "agent", "agent", "--config", file)
	reLine := regexp.MustCompile(`^([a-z0-9-]+) (https://[a-z0-9-]+\.localhost:\d+)$`)
	urls := map[string]string{}
	waitFor(t, 15*time.Second, "two \"NAME URL\" lines from the agent", func() bool {
		for _, l := range strings.Split(a.stdout.String(), "\n") {
			if m := reLine.FindStringSubmatch(l); m != nil {
				urls[m[1]] = m[2]
			}
		}
		return len(urls) >= 2 || !a.running()
	})
	if len(urls) != 2 {
		t.Fatalf("agent printed %v, want two \"NAME URL\" lines\nstdout:\n%s", urls, a.stdout.String())
	}
	if want := "https://named.localhost:" + g.httpsPort(); urls["named"] != want {
		t.Errorf("named service URL = %q, want %q (all: %v)", urls["named"], want, urls)
	}
	for name, url := range urls {
		if hostOf(url) != name+".localhost" {
			t.Errorf("line %q: URL does not match the name", name+" "+url)
		}
		want := "backend A\n"
		if name == "named" {
			want = "backend B\n"
		}
		if code, body := status(t, g.caFile, url); code != "200" || body != want {
			t.Errorf("GET %s = %s %q, want 200 %q", url, code, body, want)
		}
	}
}

// TestGatewayDrain: SIGTERM to the gateway lets a request in flight through
// an agent's tunnel finish (HTTP/1.1 fast path and HTTP/2), then exits 0.
func TestGatewayDrain(t *testing.T) {
	t.Parallel()
	inFlight := make(chan struct{}, 2)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight <- struct{}{}
		select { // a slow request: about a second of work
		case <-time.After(time.Second):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "slow done\n")
	}))
	g := startGateway(t)
	_, url := g.expose(t, backend)

	type result struct {
		proto  string
		status int
		body   string
		err    error
	}
	done := make(chan result, 2)
	h1 := g.client(t, caPool(t, g.caFile))
	h2 := g.client(t, caPool(t, g.caFile))
	h1tr := h1.Transport.(*http.Transport)
	h1tr.ForceAttemptHTTP2 = false
	h1tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	for _, c := range []*http.Client{h1, h2} {
		go func() {
			resp, err := c.Get(url + "/slow")
			if err != nil {
				done <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			done <- result{resp.Proto, resp.StatusCode, string(b), err}
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case <-inFlight:
		case r := <-done:
			t.Fatalf("request ended before reaching the backend: %+v", r)
		case <-time.After(10 * time.Second):
			t.Fatal("the requests did not reach the backend within 10 s")
		}
	}
	g.signal(t, syscall.SIGTERM)
	protos := map[string]bool{}
	for i := 0; i < 2; i++ {
		select {
		case r := <-done:
			if r.err != nil || r.status != 200 || r.body != "slow done\n" {
				t.Errorf("in-flight request across the gateway's SIGTERM = %s %d %q, %v; want 200 \"slow done\"", r.proto, r.status, r.body, r.err)
			}
			protos[r.proto] = true
		case <-time.After(15 * time.Second):
			t.Fatal("in-flight request did not complete within 15 s of SIGTERM")
		}
	}
	if !protos["HTTP/1.1"] || !protos["HTTP/2.0"] {
		t.Errorf("protocols seen %v, want one HTTP/1.1 and one HTTP/2.0 request", protos)
	}
	if code := g.wait(t, 15*time.Second); code != 0 {
		t.Errorf("gateway exit code after SIGTERM = %d, want 0", code)
	}
}
