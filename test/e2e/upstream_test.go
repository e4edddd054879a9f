package e2e

import (
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// v6Backend serves h on [::1]:0 and returns its port; the test is skipped
// where IPv6 loopback is not available.
func v6Backend(t *testing.T, h http.Handler) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	stop := sync.OnceFunc(func() { srv.Close() })
	t.Cleanup(stop)
	return portOf(ln.Addr().String()), stop
}

// v4curl fetches url from the gateway over IPv4 (127.0.0.1) only.
func (g *gateway) v4curl(t testing.TB, url string, args ...string) curlResult {
	t.Helper()
	host := hostOf(url)
	all := append([]string{"--max-time", "5", "--cacert", g.caFile, "-4", "--resolve", host + ":" + g.httpsPort() + ":127.0.0.1",
		"-w", "\n%{http_code}"}, args...)
	return curl(t, append(all, url)...)
}

// TestDirectUpstreamIPv6: a service whose only upstream is an IPv6 address
// the gateway dials itself, added through the CLI, is reached by an IPv4
// client; the same URL is refused on gateways that did not allow it.
func TestDirectUpstreamIPv6(t *testing.T) {
	t.Parallel()
	port, _ := v6Backend(t, http.HandlerFunc(echoHandler))
	up := "http://[::1]:" + port

	// Not allowed at all: the API says how to allow it.
	g0 := startGateway(t)
	g0.addTenant(t, "acme")
	out, errOut, code := run(t, 30*time.Second, append([]string{"service", "add", "web", "--tenant", "acme", "--upstream", up}, g0.admin()...)...)
	if code == 0 || !strings.Contains(errOut, "--upstream-allow") {
		t.Errorf("service add with no allowed networks: exit %d, stdout %q, stderr %q; want a refusal naming --upstream-allow", code, out, errOut)
	}
	// Allowed by a wide prefix only: loopback needs its own entry.
	g1 := startGateway(t, "--upstream-allow", "::/0")
	g1.addTenant(t, "acme")
	_, errOut, code = run(t, 30*time.Second, append([]string{"service", "add", "web", "--tenant", "acme", "--upstream", up}, g1.admin()...)...)
	if code == 0 || !strings.Contains(errOut, "loopback") {
		t.Errorf("service add of ::1 with --upstream-allow ::/0: exit %d, stderr %q; want a loopback refusal", code, errOut)
	}

	g := startGateway(t, "--upstream-allow", "::1/128")
	g.addTenant(t, "acme")
	url := strings.TrimSpace(mustRun(t, append([]string{"service", "add", "web", "--tenant", "acme", "--upstream", up}, g.admin()...)...))
	if !strings.HasPrefix(url, "https://web.localhost:") {
		t.Fatalf("service add printed %q, want the service URL", url)
	}
	var r curlResult
	waitFor(t, 5*time.Second, "the direct upstream to serve", func() bool {
		r = g.v4curl(t, url+"/v6?x=1")
		return strings.HasSuffix(r.stdout, "\n200")
	})
	body, _, _ := cutLast(r.stdout, "\n")
	e := decodeEcho(t, body)
	if e.URI != "/v6?x=1" || len(e.XForwardedFor) != 1 || e.XForwardedFor[0] != "127.0.0.1" || e.Host != hostOf(url)+":"+g.httpsPort() {
		t.Errorf("backend saw %+v; want the URI, X-Forwarded-For 127.0.0.1 (the IPv4 client) and the public Host", e)
	}
	show := mustRun(t, append([]string{"service", "show", "web"}, g.admin()...)...)
	if !strings.Contains(show, up) {
		t.Errorf("service show does not list the upstream %s:\n%s", up, show)
	}
}

// TestUpstreamsLiveChange: under continuous load, an upstream added through
// the CLI takes traffic at once, a removed one stops getting it, and no
// request fails; when one dies, no GET fails (only POSTs it was serving);
// with every upstream down the service answers 503 with Retry-After at once.
func TestUpstreamsLiveChange(t *testing.T) {
	t.Parallel()
	var hitsA, hitsB atomic.Int64
	portA, stopA := v6Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hitsA.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "A")
	}))
	portB, stopB := v6Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hitsB.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "B")
	}))
	upA, upB := "http://[::1]:"+portA, "http://[::1]:"+portB
	g := startGateway(t, "--upstream-allow", "::1/128")
	g.addTenant(t, "acme")
	url := strings.TrimSpace(mustRun(t, append([]string{"service", "add", "shop", "--tenant", "acme", "--upstream", upA,
		"--health-path", "/", "--health-interval", "200ms", "--unhealthy-threshold", "1"}, g.admin()...)...))

	client := g.client(t, caPool(t, g.caFile))
	var (
		mu      sync.Mutex
		failed  []string // failures while upstreams are added and removed
		killed  []string // POST failures once A is killed
		okN     atomic.Int64
		next    atomic.Int64
		killing atomic.Bool
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := next.Add(1)
				method, body := http.MethodGet, io.Reader(nil)
				if n%2 == 0 {
					method, body = http.MethodPost, strings.NewReader("payload")
				}
				req, _ := http.NewRequest(method, url+"/live", body)
				resp, err := client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					st := 0
					if resp != nil {
						st = resp.StatusCode
					}
					mu.Lock()
					f := fmt.Sprintf("%s %d %v", method, st, err)
					if killing.Load() && method == http.MethodPost {
						killed = append(killed, f)
					} else {
						failed = append(failed, f)
					}
					mu.Unlock()
					continue
				}
				okN.Add(1)
			}
		}()
	}
	waitFor(t, 10*time.Second, "load on A", func() bool { return hitsA.Load() > 50 })

	// Add B: it gets traffic within a moment of the command's return.
	mustRun(t, append([]string{"service", "set", "shop", "--add-upstream", upB}, g.admin()...)...)
	added := time.Now()
	waitFor(t, 5*time.Second, "B to take traffic", func() bool { return hitsB.Load() > 0 })
	t.Logf("a new upstream took traffic %v after `service set` returned", time.Since(added).Round(time.Millisecond))

	// Remove A: it stops getting requests (at most those in flight at the
	// change, one per worker, still reach it).
	mustRun(t, append([]string{"service", "set", "shop", "--remove-upstream", upA}, g.admin()...)...)
	a, b := hitsA.Load(), hitsB.Load()
	waitFor(t, 10*time.Second, "load on B alone", func() bool { return hitsB.Load() > b+200 })
	if extra := hitsA.Load() - a; extra > 4 {
		t.Errorf("a removed upstream got %d more requests, want at most the 4 in flight", extra)
	}

	// Put A back and kill it: requests keep succeeding on B.
	mustRun(t, append([]string{"service", "set", "shop", "--add-upstream", upA}, g.admin()...)...)
	a0 := hitsA.Load()
	waitFor(t, 5*time.Second, "A to take traffic again", func() bool { return hitsA.Load() > a0 })
	killing.Store(true)
	stopA() // closes its connections, requests in flight included
	b0 := hitsB.Load()
	waitFor(t, 10*time.Second, "load on B after A died", func() bool { return hitsB.Load() > b0+200 })
	close(stop)
	wg.Wait()
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed across upstream changes and a dead upstream, want 0: %v", len(failed), int(okN.Load())+len(failed), failed[:min(len(failed), 10)])
	}
	// A POST in flight on a connection the dying backend closed cannot be
	// replayed safely: at most one per worker.
	if len(killed) > 4 {
		t.Errorf("%d POSTs failed when A died, want at most the 4 in flight: %v", len(killed), killed)
	}
	t.Logf("%d requests ok; %d POSTs in flight failed when A was killed", okN.Load(), len(killed))

	// Every upstream down: 503 with Retry-After, at once.
	stopB()
	waitFor(t, 5*time.Second, "the service to answer 503", func() bool {
		start := time.Now()
		r := g.v4curl(t, url+"/down", "-D", "-")
		return strings.HasSuffix(r.stdout, "\n503") && strings.Contains(strings.ToLower(r.stdout), "retry-after:") && time.Since(start) < time.Second
	})
}

// TestDirectUpstreamPassthrough: a tls (passthrough) service whose upstream
// is a direct IPv6 address: the client, over IPv4, sees the backend's own
// certificate and answer.
func TestDirectUpstreamPassthrough(t *testing.T) {
	t.Parallel()
	cert, der := selfSigned(t, "ptd.localhost")
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "end-to-end TLS over IPv6\n")
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	certFile := filepath.Join(t.TempDir(), "backend.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	g := startGateway(t, "--upstream-allow", "::1")
	g.addTenant(t, "acme")
	url := strings.TrimSpace(mustRun(t, append([]string{"service", "add", "ptd", "--tenant", "acme", "--protocol", "tls",
		"--upstream", "tls://[::1]:" + portOf(ln.Addr().String()), "--health-type", "tcp"}, g.admin()...)...))
	r := curl(t, "--max-time", "10", "-4", "--resolve", "ptd.localhost:"+g.httpsPort()+":127.0.0.1", "--cacert", certFile, url+"/")
	if r.code != 0 || r.stdout != "end-to-end TLS over IPv6\n" {
		t.Errorf("curl trusting only the backend's certificate: exit %d %s %q", r.code, r.stderr, r.stdout)
	}
}
