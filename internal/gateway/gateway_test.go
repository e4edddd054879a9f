package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/gateway"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

func testConfig(dir string) *gateway.Config {
	return &gateway.Config{
		DataDir:   dir,
		HTTPAddr:  "127.0.0.1:0",
		HTTPSAddr: "127.0.0.1:0",
		APIAddr:   "127.0.0.1:0",
		DNSAddr:   "127.0.0.1:0",
	}
}

func start(t *testing.T, cfg *gateway.Config) *gateway.Gateway {
	t.Helper()
	g, err := gateway.Start(t.Context(), cfg, nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return g
}

func stop(t *testing.T, g *gateway.Gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Stop(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Stop did not return")
	}
}

func readSecret(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("%s has mode %o, want 600", path, m)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		t.Fatalf("%s is empty", path)
	}
	return s
}

func TestStartStop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	g := start(t, testConfig(dir))
	stopped := false
	defer func() {
		if !stopped {
			stop(t, g)
		}
	}()

	addrs := map[string]string{"http": g.HTTPAddr, "https": g.HTTPSAddr, "api": g.APIAddr}
	for name, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host != "127.0.0.1" || port == "0" || port == "" {
			t.Errorf("%s address %q: want 127.0.0.1 and the port picked for :0", name, a)
		}
	}

	// Secrets and the CA in the data dir.
	adminToken := readSecret(t, filepath.Join(dir, "admin.token"))
	if g.AdminTokenFile != filepath.Join(dir, "admin.token") {
		t.Errorf("AdminTokenFile %q", g.AdminTokenFile)
	}
	id := readSecret(t, filepath.Join(dir, "gateway.id"))
	if id != g.ID {
		t.Errorf("gateway.id holds %q, ID is %q", id, g.ID)
	}
	if g.CAFile != filepath.Join(dir, "ca.pem") {
		t.Errorf("CAFile %q, want <data-dir>/ca.pem", g.CAFile)
	}
	caPEM, err := os.ReadFile(g.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v (err %v), want 700", fi.Mode().Perm(), err)
	}
	if !strings.HasPrefix(g.Fingerprint, "sha256:") {
		t.Errorf("Fingerprint %q", g.Fingerprint)
	}

	// The banner.
	var buf bytes.Buffer
	g.Banner(&buf)
	banner := buf.String()
	for _, want := range []string{g.HTTPSAddr, g.HTTPAddr, g.APIAddr, g.CAFile, g.Fingerprint, g.AdminTokenFile, "localhost",
		"webgw expose --gateway " + g.HTTPSAddr + " --ca " + g.CAFile + " http://127.0.0.1:3000"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	if want := "https://shop.localhost:" + portOf(g.HTTPSAddr); g.PublicURL("shop") != want {
		t.Errorf("PublicURL(shop) = %q, want %q", g.PublicURL("shop"), want)
	}

	// The API answers with the admin token.
	resp, err := http.Get("http://" + g.APIAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz: %s", resp.Status)
	}
	cl := &api.Client{Addr: g.APIAddr, Token: adminToken}
	var st api.Status
	if err := cl.Do(t.Context(), "GET", "/v1/status", nil, &st); err != nil {
		t.Fatalf("status: %v", err)
	}
	if st.Gateway.ID != g.ID || st.Gateway.HTTPSAddr != g.HTTPSAddr || !st.Gateway.Open || st.Gateway.Domain != "localhost" {
		t.Errorf("status gateway %+v", st.Gateway)
	}
	resp, err = http.Get("http://" + g.APIAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("go_goroutines")) {
		t.Errorf("/metrics: %s", resp.Status)
	}

	// The HTTPS port terminates TLS with the local CA: unknown names get 404.
	hc := httpsClient(pool, g.HTTPSAddr)
	resp, err = hc.Get("https://nothing.localhost/")
	if err != nil {
		t.Fatalf("https: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown name: %s, want 404", resp.Status)
	}
	// Plain HTTP answers (no redirect for unknown names).
	resp, err = http.Get("http://" + g.HTTPAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// An agent's TLS handshake with the tunnel ALPN is served by the control plane.
	tc, err := tls.Dial("tcp", g.HTTPSAddr, &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{tunnel.ALPN}})
	if err != nil {
		t.Fatalf("agent handshake: %v", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != tunnel.ALPN {
		t.Errorf("negotiated %q, want %q", p, tunnel.ALPN)
	}
	sess, err := tunnel.Client(tc, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgHello, Hello: &tunnel.Hello{
		Version: tunnel.ProtocolVersion, AgentID: "t", Services: []tunnel.ServiceSpec{{Protocol: string(model.ProtoHTTP)}}}})
	m, err := tunnel.ReadMessage(ctrl)
	if err != nil {
		t.Fatal(err)
	}
	if m.Welcome == nil || m.Welcome.Error != "" || len(m.Welcome.Services) != 1 ||
		!strings.HasPrefix(m.Welcome.Services[0].URL, "https://") || !strings.HasSuffix(m.Welcome.Services[0].URL, ".localhost:"+portOf(g.HTTPSAddr)) {
		t.Fatalf("welcome %+v", m.Welcome)
	}

	// A second gateway on the same data dir fails cleanly: the store is locked.
	begin := time.Now()
	g2, err := gateway.Start(t.Context(), testConfig(dir), nil)
	if err == nil {
		stop(t, g2)
		t.Fatal("a second gateway started on the same data dir")
	}
	if !strings.Contains(err.Error(), "locked") {
		t.Errorf("second Start: %v, want a message that the state is locked", err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("second Start took %v to fail", d)
	}

	// Stop closes the agent's session and releases every port.
	stop(t, g)
	stopped = true
	select {
	case <-sess.CloseChan():
	case <-time.After(10 * time.Second):
		t.Error("Stop left an agent session open")
	}
	for name, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("%s address %s still bound after Stop: %v", name, a, err)
			continue
		}
		ln.Close()
	}
}

func httpsClient(pool *x509.CertPool, addr string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		},
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	g := start(t, testConfig(dir))
	id, ca, fp := g.ID, g.CAFile, g.Fingerprint
	token := readSecret(t, g.AdminTokenFile)
	cl := &api.Client{Addr: g.APIAddr, Token: token}
	var created api.TenantCreated
	if err := cl.Do(t.Context(), "POST", "/v1/tenants", api.TenantRequest{Name: "acme"}, &created); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(ca)
	stop(t, g)

	g = start(t, testConfig(dir))
	defer stop(t, g)
	if g.ID != id || g.Fingerprint != fp {
		t.Errorf("after restart: id %q fingerprint %q, want %q %q", g.ID, g.Fingerprint, id, fp)
	}
	if tok := readSecret(t, g.AdminTokenFile); tok != token {
		t.Error("admin token changed across a restart")
	}
	if b, _ := os.ReadFile(g.CAFile); !bytes.Equal(b, caPEM) {
		t.Error("CA changed across a restart")
	}
	cl = &api.Client{Addr: g.APIAddr, Token: token}
	var ts []api.TenantInfo
	if err := cl.Do(t.Context(), "GET", "/v1/tenants", nil, &ts); err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Name != "acme" {
		t.Errorf("tenants after restart %+v, want acme", ts)
	}
	// The tenant's token still works.
	tcl := &api.Client{Addr: g.APIAddr, Token: created.Token}
	var who map[string]any
	if err := tcl.Do(t.Context(), "GET", "/v1/whoami", nil, &who); err != nil || who["tenant"] != "acme" {
		t.Errorf("whoami with the tenant token: %v %v", who, err)
	}
}

func TestStartFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)

	tests := []struct {
		name      string
		mutate    func(*gateway.Config)
		configErr bool
		contains  string
	}{
		{"bad domain", func(c *gateway.Config) { c.Domain = "bad_domain" }, true, "domain:"},
		{"etcd url without a port", func(c *gateway.Config) { c.Store = "etcd://127.0.0.1" }, true, "store:"},
		{"https port taken", func(c *gateway.Config) { c.HTTPSAddr = busy.Addr().String() }, true, "https_addr"},
		{"http port taken", func(c *gateway.Config) { c.HTTPAddr = busy.Addr().String() }, true, "http_addr"},
		{"api port taken", func(c *gateway.Config) { c.APIAddr = busy.Addr().String() }, true, "api_addr"},
		{"data dir is a file", func(c *gateway.Config) { c.DataDir = file }, true, "data_dir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(dir)
			tt.mutate(cfg)
			g, err := gateway.Start(t.Context(), cfg, nil)
			if err == nil {
				stop(t, g)
				t.Fatal("Start succeeded")
			}
			if gateway.IsConfigError(err) != tt.configErr || !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("Start: %v (config error %v), want config error %v containing %q", err, gateway.IsConfigError(err), tt.configErr, tt.contains)
			}
			// A failed start releases the store and the ports it bound: a good start on the same dir works.
			if cfg.DataDir == dir {
				g := start(t, testConfig(dir))
				stop(t, g)
			}
		})
	}
}

func TestStopRightAfterStart(t *testing.T) {
	for range 3 {
		g := start(t, testConfig(t.TempDir()))
		stop(t, g)
	}
}

func TestStopWithDoneContext(t *testing.T) {
	// Stop with an expired context still returns promptly.
	g := start(t, testConfig(t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- g.Stop(ctx) }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stop with a done context hung")
	}
}
