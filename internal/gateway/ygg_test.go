package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/netpolicy"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
	"github.com/webgw/webgw/internal/ygg"
)

// fakeNode stands in for the Yggdrasil node: its overlay is a map from
// overlay addresses to loopback ones, and it listens on loopback.
type fakeNode struct {
	cfg ygg.Config

	mu      sync.Mutex
	routes  map[string]string // overlay HOST:PORT -> loopback HOST:PORT; guarded by mu
	dialled []string          // overlay addresses dialled; guarded by mu
	listens []string          // addresses asked of Listen; guarded by mu
	closed  bool              // guarded by mu
}

var _ yggNode = (*fakeNode)(nil)

func (n *fakeNode) Addr() netip.Addr     { return netip.MustParseAddr("200:1234::1") }
func (n *fakeNode) Subnet() netip.Prefix { return netip.MustParsePrefix("300:1234::/64") }
func (n *fakeNode) PublicKey() string    { return strings.Repeat("ab", 32) }

func (n *fakeNode) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	n.dialled = append(n.dialled, addr)
	to, ok := n.routes[addr]
	n.mu.Unlock()
	if !ok {
		return nil, errors.New("no route on the fake overlay")
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

func (n *fakeNode) Listen(network, addr string) (net.Listener, error) {
	n.mu.Lock()
	n.listens = append(n.listens, addr)
	n.mu.Unlock()
	return net.Listen(network, "127.0.0.1:0")
}

func (n *fakeNode) ListenPacket(network, addr string) (net.PacketConn, error) {
	n.mu.Lock()
	n.listens = append(n.listens, addr)
	n.mu.Unlock()
	return net.ListenPacket("udp", "127.0.0.1:0")
}

func (n *fakeNode) Status() ygg.Status {
	return ygg.Status{Addr: n.Addr(), Subnet: n.Subnet(), PublicKey: n.PublicKey(), Peers: []ygg.PeerStatus{
		{URI: "tls://192.0.2.1:9001", Up: true, PublicKey: strings.Repeat("cd", 32), Addr: netip.MustParseAddr("200:5678::1"),
			RxBytes: 2048, TxBytes: 1024, Uptime: 90 * time.Second},
		{URI: "tcp://[2001:db8::2]:9002", Inbound: true, LastError: "connection refused"},
	}}
}

func (n *fakeNode) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	return nil
}

func (n *fakeNode) route(overlay, loopback string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.routes == nil {
		n.routes = map[string]string{}
	}
	n.routes[overlay] = loopback
}

// useFakeNodes makes startYgg hand out fake nodes until the test ends;
// the returned function is the latest.
func useFakeNodes(t *testing.T) func() *fakeNode {
	var mu sync.Mutex
	var last *fakeNode
	old := startYgg
	startYgg = func(cfg ygg.Config, _ *slog.Logger) (yggNode, error) {
		mu.Lock()
		defer mu.Unlock()
		last = &fakeNode{cfg: cfg}
		return last, nil
	}
	t.Cleanup(func() { startYgg = old })
	return func() *fakeNode {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

func yggTestConfig(dir string) *Config {
	return &Config{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0",
		YggListen: []string{"tls://0.0.0.0:9001"}, YggPeer: []string{"tcp://[2001:db8::1]:9001"},
		UpstreamAllow: []string{"200::/7", "127.0.0.1/32"},
	}
}

func TestYggValidate(t *testing.T) {
	key := strings.Repeat("0a", 32)
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string // "" for valid
	}{
		{"off", func(c *Config) {}, ""},
		{"listen and peers", func(c *Config) {
			c.YggListen = []string{"tls://0.0.0.0:9001", "quic://[::]:9002"}
			c.YggPeer = []string{"tcp://peer.example.net:9001"}
			c.YggAllowKey = []string{key}
			c.YggPassword = "s3cret"
		}, ""},
		{"tun only", func(c *Config) { c.YggTUN = "ygg0" }, ""},
		{"bad scheme", func(c *Config) { c.YggListen = []string{"udp://0.0.0.0:9001"} }, `ygg_listen (--ygg-listen): "udp://0.0.0.0:9001": scheme "udp" not accepted`},
		{"no port", func(c *Config) { c.YggPeer = []string{"tls://peer.example.net"} }, "ygg_peer (--ygg-peer):"},
		{"port 0", func(c *Config) { c.YggPeer = []string{"tls://192.0.2.1:0"} }, "port must be 1-65535"},
		{"no scheme", func(c *Config) { c.YggPeer = []string{"192.0.2.1:9001"} }, "ygg_peer (--ygg-peer):"},
		{"path", func(c *Config) { c.YggPeer = []string{"tls://192.0.2.1:9001/x"} }, "no path"},
		{"short key", func(c *Config) { c.YggListen = []string{"tls://0.0.0.0:9001"}; c.YggAllowKey = []string{"abcd"} }, "ygg_allow_key (--ygg-allow-key): \"abcd\" is not a public key"},
		{"bad tun", func(c *Config) { c.YggTUN = "a/b" }, "ygg_tun (--ygg-tun)"},
		{"tun with the API on every address", func(c *Config) { c.YggTUN, c.APIAddr = "ygg0", "0.0.0.0:8081" }, "admin API listens on every address"},
		{"tun with the API on [::]", func(c *Config) { c.YggTUN, c.APIAddr = "ygg0", "[::]:8081" }, "admin API listens on every address"},
		{"password without node", func(c *Config) { c.YggPassword = "x" }, "need ygg_listen, ygg_peer or ygg_tun"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{}
			c.Complete()
			tt.mod(c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !IsConfigError(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v; want a config error with %q", err, tt.want)
			}
		})
	}
}

// TestYggKeyPersists: the node gets the key from <data-dir>/ygg.key, made
// (0600) on the first start and the same after a restart; the banner
// names the node.
func TestYggKeyPersists(t *testing.T) {
	node := useFakeNodes(t)
	dir := filepath.Join(t.TempDir(), "data")
	g, err := Start(t.Context(), yggTestConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := node()
	var b strings.Builder
	g.Banner(&b)
	stopGateway(t, g)
	if !first.closed {
		t.Error("Stop did not close the node")
	}
	if want := "  yggdrasil     200:1234::1 (subnet 300:1234::/64), access point on tls://0.0.0.0:9001, 2 peers\n"; !strings.Contains(b.String(), want) {
		t.Errorf("banner:\n%s\nwant the line %q", b.String(), want)
	}
	path := filepath.Join(dir, "ygg.key")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("ygg.key mode %o, want 600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) != 64 || string(key) != string(first.cfg.PrivateKey) {
		t.Fatalf("ygg.key %q (%v) is not the node's 64-byte key", raw, err)
	}
	if got := first.cfg; got.Listen[0] != "tls://0.0.0.0:9001" || got.Peers[0] != "tcp://[2001:db8::1]:9001" {
		t.Errorf("node config %+v", got)
	}

	g, err = Start(t.Context(), yggTestConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	stopGateway(t, g)
	if string(node().cfg.PrivateKey) != string(key) {
		t.Error("the key changed across a restart")
	}

	// A damaged key file is an error naming it, not a new address.
	os.WriteFile(path, []byte("nothex\n"), 0o600)
	if _, err := Start(t.Context(), yggTestConfig(dir), nil); err == nil || !strings.Contains(err.Error(), "ygg.key") {
		t.Fatalf("Start with a bad key = %v; want an error naming ygg.key", err)
	}
}

// TestYggDialDirect: direct upstreams in 200::/7 are dialled through the
// node (plain and TLS), after the upstream policy; with the node off they
// fail saying so.
func TestYggDialDirect(t *testing.T) {
	node := useFakeNodes(t)
	backend := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "over the overlay")
	}))
	defer backend.Close()
	dir := filepath.Join(t.TempDir(), "data")
	g, err := Start(t.Context(), yggTestConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stopGateway(t, g)
	n := node()
	n.route("[200:abcd::5]:443", backend.Listener.Addr().String())

	u, err := model.ParseUpstreamURL("https://[200:abcd::5]:443", model.ProtoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	c, err := g.dialDirect(t.Context(), u, model.Upstream{TLSInsecure: true}, true)
	if err != nil {
		t.Fatalf("dialDirect: %v", err)
	}
	if _, ok := c.(*tls.Conn); !ok {
		t.Errorf("dialDirect returned %T, want a TLS connection over the overlay", c)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	body, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(body), "over the overlay") {
		t.Errorf("answer %q", body)
	}
	if len(n.dialled) != 1 || n.dialled[0] != "[200:abcd::5]:443" {
		t.Errorf("node dialled %q", n.dialled)
	}

	// Outside 200::/7: the host's network, not the node.
	lu, _ := model.ParseUpstreamURL("https://"+backend.Listener.Addr().String(), model.ProtoHTTP)
	c, err = g.dialDirect(t.Context(), lu, model.Upstream{TLSInsecure: true}, true)
	if err != nil {
		t.Fatalf("dialDirect loopback: %v", err)
	}
	c.Close()
	if len(n.dialled) != 1 {
		t.Errorf("a loopback upstream went through the node: %q", n.dialled)
	}

	// The policy applies first: 300::/8 is not allowed here.
	g.upstreams = netpolicy.New(mustPrefixes(t, "200::/8"), func() []netip.Addr { return nil })
	su, _ := model.ParseUpstreamURL("http://[300:abcd::5]:80", model.ProtoHTTP)
	if _, err := g.dialDirect(t.Context(), su, model.Upstream{}, false); !errors.Is(err, netpolicy.ErrForbidden) {
		t.Errorf("dial outside --upstream-allow = %v; want ErrForbidden", err)
	}

	// The node off: a clear error.
	g.ygg = nil
	if _, err := g.dialDirect(t.Context(), u, model.Upstream{}, false); !errors.Is(err, ErrYggOff) || !strings.Contains(err.Error(), "yggdrasil node is off") {
		t.Errorf("dial with the node off = %v; want ErrYggOff", err)
	}
	g.ygg = n
}

// TestYggOverlayServes: the overlay's HTTPS and HTTP listeners (on the
// node's address, ports 443 and 80) serve the services that opted in and
// refuse every other name and the cluster-peer ALPN; agents' tunnels are
// served.
func TestYggOverlayServes(t *testing.T) {
	node := useFakeNodes(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from "+r.Host)
	}))
	defer backend.Close()
	dir := filepath.Join(t.TempDir(), "data")
	g, err := Start(t.Context(), yggTestConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stopGateway(t, g)
	n := node()
	if want := []string{"[200:1234::1]:443", "[200:1234::1]:80"}; strings.Join(n.listens, " ") != strings.Join(want, " ") {
		t.Errorf("node listens on %q; want %q", n.listens, want)
	}
	for _, sv := range []model.Service{
		{Name: "shop", Tenant: "alpha", Protocol: model.ProtoHTTP, Ygg: true},
		{Name: "intra", Tenant: "alpha", Protocol: model.ProtoHTTP},
	} {
		sv.Created = time.Now()
		sv.Upstreams = []model.Upstream{{URL: backend.URL}}
		if _, err := store.CreateService(t.Context(), g.store, sv); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, "services in the table", func() bool { return g.table.Lookup("shop") != nil && g.table.Lookup("intra") != nil })
	pool := caPoolOf(t, g.CAFile)

	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.overlay.HTTPSAddr)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("https://shop.localhost/")
	if err != nil {
		t.Fatalf("GET shop over the overlay: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from shop.localhost" {
		t.Errorf("shop over the overlay: %d %q", resp.StatusCode, body)
	}
	// The public port serves both.
	if resp := getPublic(t, g, pool, "intra.localhost"); resp != 200 {
		t.Errorf("intra on the public port: %d", resp)
	}

	// Another service's SNI: refused in the handshake.
	for _, sni := range []string{"intra.localhost", "localhost", "nope.localhost"} {
		if _, err := client.Get("https://" + sni + "/"); err == nil {
			t.Errorf("GET %s over the overlay succeeded; want a refused handshake", sni)
		}
	}
	// An opted-in SNI with another service's Host: 404.
	req, _ := http.NewRequest("GET", "https://shop.localhost/", nil)
	req.Host = "intra.localhost"
	if resp, err := client.Do(req); err != nil || resp.StatusCode != 404 {
		t.Errorf("Host intra under SNI shop: %v %v; want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	// The cluster-peer ALPN: closed, whatever the SNI.
	for _, sni := range []string{"shop.localhost", "localhost"} {
		c, err := tls.Dial("tcp", g.overlay.HTTPSAddr, &tls.Config{RootCAs: pool, ServerName: sni, NextProtos: []string{tunnel.PeerALPN}})
		if err == nil {
			c.Close()
			t.Errorf("ALPN %s accepted on the overlay (SNI %s)", tunnel.PeerALPN, sni)
		}
	}
	// Agents' tunnels are served (an agent with no route out but the
	// overlay), with the gateway's tunnel certificate, which names the
	// node's address.
	c, err := tls.Dial("tcp", g.overlay.HTTPSAddr, &tls.Config{RootCAs: pool, ServerName: node().Addr().String(), NextProtos: []string{tunnel.ALPN}})
	if err != nil {
		t.Errorf("agent tunnel ALPN on the overlay: %v", err)
	} else {
		if p := c.ConnectionState().NegotiatedProtocol; p != tunnel.ALPN {
			t.Errorf("negotiated %q, want %s", p, tunnel.ALPN)
		}
		c.Close()
	}

	// Port 80: a redirect for the opted-in name only.
	for host, want := range map[string]int{"shop.localhost": 308, "intra.localhost": 404} {
		req, _ := http.NewRequest("GET", "http://"+g.overlay.HTTPAddr+"/x", nil)
		req.Host = host
		resp, err := (&http.Client{CheckRedirect: client.CheckRedirect}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("http %s: %d; want %d", host, resp.StatusCode, want)
		} else if want == 308 && resp.Header.Get("Location") != "https://shop.localhost/x" {
			t.Errorf("redirect to %q", resp.Header.Get("Location"))
		}
	}
}

func caPoolOf(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no CA certificate")
	}
	return pool
}

// getPublic fetches https://host/ from the public HTTPS port; the status.
func getPublic(t *testing.T, g *Gateway, pool *x509.CertPool, host string) int {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.HTTPSAddr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + host + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestYggAPI: GET /v1/ygg is the node's state for the admin, 403 for a
// tenant, 503 with the node off.
func TestYggAPI(t *testing.T) {
	useFakeNodes(t)
	dir := filepath.Join(t.TempDir(), "data")
	g, err := Start(t.Context(), yggTestConfig(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := os.ReadFile(g.AdminTokenFile)
	token := strings.TrimSpace(string(admin))
	var st api.YggStatus
	if code := apiCall(t, g, token, "GET", "/v1/ygg", "", &st); code != 200 {
		t.Fatalf("GET /v1/ygg: %d", code)
	}
	if st.Addr != "200:1234::1" || st.Subnet != "300:1234::/64" || st.PublicKey != strings.Repeat("ab", 32) || len(st.Peers) != 2 {
		t.Errorf("status %+v", st)
	}
	if p := st.Peers[0]; p.URI != "tls://192.0.2.1:9001" || !p.Up || p.Inbound || p.Addr != "200:5678::1" || p.RxBytes != 2048 || p.TxBytes != 1024 || p.Uptime != 90 {
		t.Errorf("peer 0 %+v", p)
	}
	if p := st.Peers[1]; !p.Inbound || p.Up || p.Addr != "" || p.LastError != "connection refused" {
		t.Errorf("peer 1 %+v", p)
	}
	var tenant struct {
		Token string `json:"token"`
	}
	if code := apiCall(t, g, token, "POST", "/v1/tenants", `{"name":"alpha"}`, &tenant); code != 201 && code != 200 {
		t.Fatalf("add tenant: %d", code)
	}
	if code := apiCall(t, g, tenant.Token, "GET", "/v1/ygg", "", nil); code != 403 {
		t.Errorf("GET /v1/ygg as a tenant: %d; want 403", code)
	}
	// The service option over the API.
	if code := apiCall(t, g, tenant.Token, "POST", "/v1/services", `{"name":"shop","ygg":true}`, nil); code != 201 {
		t.Errorf("create a ygg service: %d", code)
	}
	if sv, _, err := store.GetService(t.Context(), g.store, "shop"); err != nil || !sv.Ygg {
		t.Errorf("stored shop %+v, %v; want ygg", sv, err)
	}
	stopGateway(t, g)

	cfg := yggTestConfig(dir)
	cfg.YggListen, cfg.YggPeer = nil, nil
	if g, err = Start(t.Context(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	defer stopGateway(t, g)
	if code := apiCall(t, g, token, "GET", "/v1/ygg", "", nil); code != 503 {
		t.Errorf("GET /v1/ygg with the node off: %d; want 503", code)
	}
}
