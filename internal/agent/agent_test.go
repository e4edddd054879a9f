package agent_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/agent"
	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/gateway"
	"github.com/webgw/webgw/internal/tunnel"
)

const waitFor = 15 * time.Second

type gw struct {
	*gateway.Gateway
	dir  string
	pool *x509.CertPool
}

// startGateway runs a gateway in process on loopback ports; httpsAddr ""
// picks a free port.
func startGateway(t *testing.T, dir, httpsAddr string, open bool) *gw {
	t.Helper()
	if httpsAddr == "" {
		httpsAddr = "127.0.0.1:0"
	}
	cfg := &gateway.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", HTTPSAddr: httpsAddr, APIAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0", Open: &open}
	g, err := gateway.Start(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("gateway.Start: %v", err)
	}
	pem, err := os.ReadFile(g.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &gw{Gateway: g, dir: dir, pool: pool}
}

func (g *gw) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Stop(ctx); err != nil {
		t.Errorf("gateway Stop: %v", err)
	}
}

// client trusts the gateway's CA and dials its HTTPS port for every name, as
// curl --resolve would.
func (g *gw) client() *http.Client {
	addr := g.HTTPSAddr
	return &http.Client{
		Timeout: waitFor,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: g.pool},
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		},
	}
}

func (g *gw) adminClient(t *testing.T) *api.Client {
	t.Helper()
	tok, err := os.ReadFile(g.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	return &api.Client{Addr: g.APIAddr, Token: strings.TrimSpace(string(tok))}
}

func (g *gw) addTenant(t *testing.T, name string) string {
	t.Helper()
	var out api.TenantCreated
	if err := g.adminClient(t).Do(t.Context(), "POST", "/v1/tenants", api.TenantRequest{Name: name}, &out); err != nil {
		t.Fatal(err)
	}
	return out.Token
}

// backend is the private app behind the agent.
type backend struct {
	*httptest.Server
	slowEntered chan struct{}
	slowRelease chan struct{}
}

func newBackend(t *testing.T) *backend {
	b := &backend{slowEntered: make(chan struct{}, 1), slowRelease: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from backend host=%s proto=%s xff=%s", r.Host, r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-For"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		b.slowEntered <- struct{}{}
		<-b.slowRelease
		io.WriteString(w, "slow done")
	})
	b.Server = httptest.NewServer(mux)
	t.Cleanup(b.Close)
	return b
}

// running is an agent started with Run in a goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan error
	ready  chan []tunnel.ServiceGrant
}

func runAgent(t *testing.T, cfg *agent.Config) *running {
	t.Helper()
	r := &running{done: make(chan error, 1), ready: make(chan []tunnel.ServiceGrant, 16)}
	a, err := agent.New(cfg, agent.Options{Version: "test", OnReady: func(_ string, gs []tunnel.ServiceGrant) { r.ready <- gs }})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitFor):
			t.Error("agent Run did not return after cancel")
		}
	})
	return r
}

func (r *running) grants(t *testing.T) []tunnel.ServiceGrant {
	t.Helper()
	select {
	case gs := <-r.ready:
		return gs
	case err := <-r.done:
		t.Fatalf("agent stopped before it was ready: %v", err)
	case <-time.After(waitFor):
		t.Fatal("agent not ready")
	}
	return nil
}

func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(waitFor):
		t.Fatal("agent Run did not return")
	}
	return nil
}

func get(c *http.Client, u string) (int, string, http.Header, error) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// eventuallyGet polls u until it answers 200 with a body containing want.
func eventuallyGet(t *testing.T, c *http.Client, u, want string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		code, body, _, err := get(c, u)
		if err == nil && code == 200 && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %q %v; want 200 with %q", u, code, body, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var quickURL = regexp.MustCompile(`^https://[a-z]+-[a-z]+-[0-9]{2}\.localhost:[0-9]+$`)

func TestRunServesHTTPS(t *testing.T) {
	g := startGateway(t, t.TempDir(), "", true)
	defer g.stop(t)
	b := newBackend(t)
	r := runAgent(t, &agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, CA: g.CAFile}},
		Services: []agent.ServiceConfig{{Target: b.URL}},
	})
	gs := r.grants(t)
	if len(gs) != 1 || !quickURL.MatchString(gs[0].URL) {
		t.Fatalf("grants %+v, want one quick-tunnel URL on the gateway's port", gs)
	}
	u, _ := url.Parse(gs[0].URL)
	if u.Port() != portOf(g.HTTPSAddr) {
		t.Errorf("URL port %s, want the gateway's HTTPS port %s", u.Port(), portOf(g.HTTPSAddr))
	}
	code, body, _, err := get(g.client(), gs[0].URL+"/")
	if err != nil || code != 200 {
		t.Fatalf("GET %s: %d %q %v", gs[0].URL, code, body, err)
	}
	if !strings.Contains(body, "hello from backend") || !strings.Contains(body, "host="+u.Host) ||
		!strings.Contains(body, "proto=https") || !strings.Contains(body, "xff=127.0.0.1") {
		t.Errorf("backend saw %q; want the public host, proto https and the client address", body)
	}

	// The pinned key works instead of a CA.
	r2 := runAgent(t, &agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, Fingerprint: g.Fingerprint}},
		Services: []agent.ServiceConfig{{Target: b.URL}},
	})
	gs2 := r2.grants(t)
	if code, body, _, err := get(g.client(), gs2[0].URL+"/"); err != nil || code != 200 || !strings.Contains(body, "hello from backend") {
		t.Errorf("GET through the pinned agent: %d %q %v", code, body, err)
	}
}

func TestLocalTargetDown(t *testing.T) {
	g := startGateway(t, t.TempDir(), "", true)
	defer g.stop(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	r := runAgent(t, &agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, CA: g.CAFile}},
		Services: []agent.ServiceConfig{{Target: "http://" + dead}},
	})
	gs := r.grants(t)
	code, body, hdr, err := get(g.client(), gs[0].URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusBadGateway || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") ||
		!strings.Contains(body, "webgw agent: the local target http://"+dead+" is unreachable") {
		t.Errorf("target down: %d %s %q; want 502 text naming the target", code, hdr.Get("Content-Type"), body)
	}
	// The tunnel stays up: a second request gets the same answer.
	if code, _, _, err := get(g.client(), gs[0].URL+"/again"); err != nil || code != http.StatusBadGateway {
		t.Errorf("second request: %d %v", code, err)
	}
}

func TestDrainOnCancel(t *testing.T) {
	g := startGateway(t, t.TempDir(), "", true)
	defer g.stop(t)
	b := newBackend(t)
	r := runAgent(t, &agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, CA: g.CAFile}},
		Services: []agent.ServiceConfig{{Target: b.URL}},
	})
	gs := r.grants(t)
	c := g.client()

	type result struct {
		code int
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		code, body, _, err := get(c, gs[0].URL+"/slow")
		slow <- result{code, body, err}
	}()
	select {
	case <-b.slowEntered:
	case <-time.After(waitFor):
		t.Fatal("slow request did not reach the backend")
	}
	r.cancel()

	// New requests are turned away at once while the agent drains.
	deadline := time.Now().Add(waitFor)
	for {
		code, _, _, err := get(c, gs[0].URL+"/")
		if err == nil && code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("while draining: %d %v, want 503", code, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-r.done:
		t.Fatalf("Run returned (%v) with a request in flight", err)
	default:
	}
	close(b.slowRelease)
	res := <-slow
	if res.err != nil || res.code != 200 || res.body != "slow done" {
		t.Errorf("in-flight request: %d %q %v, want 200 slow done", res.code, res.body, res.err)
	}
	if err := r.wait(t); err != nil {
		t.Errorf("Run after drain: %v, want nil", err)
	}
	if code, _, _, err := get(c, gs[0].URL+"/"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("after the agent stopped: %d %v, want 503", code, err)
	}
}

func TestPermanentRefusal(t *testing.T) {
	closed := startGateway(t, t.TempDir(), "", false)
	defer closed.stop(t)
	open := startGateway(t, t.TempDir(), "", true)
	defer open.stop(t)
	tokA := open.addTenant(t, "alpha")
	tokB := open.addTenant(t, "beta")

	// alpha owns shop.
	ra := runAgent(t, &agent.Config{
		Token:    tokA,
		Gateways: []agent.GatewayConfig{{Addr: open.HTTPSAddr, CA: open.CAFile}},
		Services: []agent.ServiceConfig{{Name: "shop", Target: "http://127.0.0.1:1"}},
	})
	if gs := ra.grants(t); len(gs) != 1 || gs[0].Name != "shop" {
		t.Fatalf("alpha's grants %+v", gs)
	}

	tests := []struct {
		name     string
		g        *gw
		token    string
		svc      string
		contains string
	}{
		{"no token on a closed gateway", closed, "", "", "requires a tenant token"},
		{"bad token", open, "wgw_bad", "x", "token refused"},
		{"another tenant's name", open, tokB, "shop", "belongs to another tenant"},
		{"reserved name", open, tokB, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := agent.ServiceConfig{Name: tt.svc, Target: "http://127.0.0.1:1"}
			if tt.name == "reserved name" {
				// The agent refuses reserved names itself.
				_, err := agent.New(&agent.Config{Gateways: []agent.GatewayConfig{{Addr: tt.g.HTTPSAddr}},
					Services: []agent.ServiceConfig{{Name: "admin", Target: svc.Target}}}, agent.Options{})
				if !agent.IsConfigError(err) {
					t.Errorf("New with a reserved name: %v", err)
				}
				return
			}
			r := runAgent(t, &agent.Config{
				Token:    tt.token,
				Gateways: []agent.GatewayConfig{{Addr: tt.g.HTTPSAddr, CA: tt.g.CAFile}},
				Services: []agent.ServiceConfig{svc},
			})
			err := r.wait(t)
			var pe *agent.PermanentError
			if !errors.As(err, &pe) || !strings.Contains(pe.Msg, tt.contains) {
				t.Errorf("Run: %v, want a *PermanentError containing %q", err, tt.contains)
			}
		})
	}
}

func TestReconnectAfterGatewayRestart(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir, "", true)
	b := newBackend(t)
	tok := g.addTenant(t, "alpha")
	r := runAgent(t, &agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, CA: g.CAFile}},
		Services: []agent.ServiceConfig{{Target: b.URL}},
	})
	rt := runAgent(t, &agent.Config{
		Token:    tok,
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, CA: g.CAFile}},
		Services: []agent.ServiceConfig{{Name: "shop", Target: b.URL}},
	})
	quick := r.grants(t)[0].URL
	shop := rt.grants(t)[0].URL
	eventuallyGet(t, g.client(), quick+"/", "hello from backend")
	eventuallyGet(t, g.client(), shop+"/", "hello from backend")

	addr := g.HTTPSAddr
	g.stop(t)
	g = startGateway(t, dir, addr, true)
	defer g.stop(t)

	// Both come back by themselves; the quick tunnel keeps its name.
	eventuallyGet(t, g.client(), quick+"/", "hello from backend")
	eventuallyGet(t, g.client(), shop+"/", "hello from backend")
	if gs := r.grants(t); gs[0].URL != quick {
		t.Errorf("quick tunnel URL after reconnect %q, want %q", gs[0].URL, quick)
	}
	// shop still belongs to alpha: another tenant cannot take it.
	tokB := g.addTenant(t, "beta")
	rb := runAgent(t, &agent.Config{
		Token:    tokB,
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr, CA: g.CAFile}},
		Services: []agent.ServiceConfig{{Name: "shop", Target: b.URL}},
	})
	var pe *agent.PermanentError
	if err := rb.wait(t); !errors.As(err, &pe) {
		t.Errorf("hijack after restart: %v, want refused", err)
	}
}

func TestTwoEntriesForOneGateway(t *testing.T) {
	// Two gateway entries that reach the same gateway are two replicas, not
	// one agent whose reconnects keep replacing each other.
	g := startGateway(t, t.TempDir(), "", true)
	defer g.stop(t)
	b := newBackend(t)
	tok := g.addTenant(t, "alpha")
	r := runAgent(t, &agent.Config{
		Token:    tok,
		CA:       g.CAFile,
		Gateways: []agent.GatewayConfig{{Addr: g.HTTPSAddr}, {Addr: g.HTTPSAddr}},
		Services: []agent.ServiceConfig{{Name: "shop", Target: b.URL}},
	})
	r.grants(t)
	r.grants(t)
	cl := g.adminClient(t)
	deadline := time.Now().Add(waitFor)
	for {
		var svcs []api.ServiceInfo
		if err := cl.Do(t.Context(), "GET", "/v1/services", nil, &svcs); err != nil {
			t.Fatal(err)
		}
		// Two entries of two connections each (the default).
		if len(svcs) == 1 && svcs[0].Agents == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("services %+v, want shop with 4 agent sessions", svcs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	eventuallyGet(t, g.client(), "https://shop.localhost:"+portOf(g.HTTPSAddr)+"/", "hello from backend")
}

func TestRunStartsBeforeGateway(t *testing.T) {
	// The agent never gives up because the gateway is down at boot.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	// The CA file must exist before the agent starts: create the gateway's
	// state once, then stop it.
	g := startGateway(t, dir, addr, true)
	ca := g.CAFile
	g.stop(t)

	b := newBackend(t)
	r := runAgent(t, &agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: addr, CA: ca}},
		Services: []agent.ServiceConfig{{Name: "early", Target: b.URL}},
	})
	select {
	case err := <-r.done:
		t.Fatalf("Run returned %v while the gateway was down", err)
	case <-time.After(300 * time.Millisecond):
	}
	g = startGateway(t, dir, addr, true)
	defer g.stop(t)
	gs := r.grants(t)
	eventuallyGet(t, g.client(), gs[0].URL+"/", "hello from backend")
}

func TestCancelBeforeConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts nothing: the dial hangs in the backlog or TLS
	a, err := agent.New(&agent.Config{
		Gateways: []agent.GatewayConfig{{Addr: ln.Addr().String()}},
		Services: []agent.ServiceConfig{{Target: "http://127.0.0.1:1"}},
	}, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: %v, want nil", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return after cancel")
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
