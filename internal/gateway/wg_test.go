package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/wg4to6"
)

// fakeEngine stands in for the WireGuard engine: it records what it is told.
type fakeEngine struct {
	cfg wg4to6.Config

	mu      sync.Mutex
	sets    [][]wg4to6.Peer                 // every SetPeers call; guarded by mu
	stats   map[wg4to6.Key]wg4to6.PeerStats // guarded by mu
	failing int                             // SetPeers calls still to fail; guarded by mu
	closed  bool                            // guarded by mu
}

func (f *fakeEngine) SetPeers(p []wg4to6.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("engine closed")
	}
	if f.failing > 0 {
		f.failing--
		return errors.New("tun: device busy")
	}
	f.sets = append(f.sets, slices.Clone(p))
	return nil
}

func (f *fakeEngine) Stats() map[wg4to6.Key]wg4to6.PeerStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

func (f *fakeEngine) PublicKey() wg4to6.Key {
	return wg4to6.Key(model.WGKey(f.cfg.PrivateKey).Public())
}

func (f *fakeEngine) ListenPort() int {
	if f.cfg.ListenPort == 0 {
		return 40000 // as if picked
	}
	return f.cfg.ListenPort
}

func (f *fakeEngine) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

var _ wgEngine = (*fakeEngine)(nil)

// peers is the last set of peers; ok is false before the first SetPeers.
func (f *fakeEngine) peers() (p []wg4to6.Peer, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sets) == 0 {
		return nil, false
	}
	return f.sets[len(f.sets)-1], true
}

// useFakeEngines makes startWG hand out fake engines, recorded in the
// returned list, until the test ends.
func useFakeEngines(t *testing.T) func() []*fakeEngine {
	var mu sync.Mutex
	var engines []*fakeEngine
	old := startWG
	startWG = func(cfg wg4to6.Config, _ *slog.Logger) (wgEngine, error) {
		mu.Lock()
		defer mu.Unlock()
		e := &fakeEngine{cfg: cfg}
		engines = append(engines, e)
		return e, nil
	}
	t.Cleanup(func() { startWG = old })
	return func() []*fakeEngine {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(engines)
	}
}

func wgTestConfig(dir string) *Config {
	return &Config{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0",
		PublicIPs: []string{"2001:db8::10", "203.0.113.10"},
		WGPrefix:  "2001:db8:100::/56", WGListen: ":0", WGDNS: []string{"2001:db8::53"},
	}
}

// apiCall calls the gateway's API with token and decodes a JSON answer into out.
func apiCall(t *testing.T, g *Gateway, token, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+g.APIAddr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	if resp.StatusCode >= 300 {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

func stopGateway(t *testing.T, g *Gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// TestGateway4to6: the gateway starts the engine with its own key and the
// networks devices may not reach, serves the device API with configs
// naming its key and endpoint, and keeps the engine's peers in step with
// the devices: added, changed and removed at once; counters reach the API
// and /metrics; the key and the devices' addresses survive a restart.
func TestGateway4to6(t *testing.T) {
	engines := useFakeEngines(t)
	dir := filepath.Join(t.TempDir(), "data")
	g, err := Start(t.Context(), wgTestConfig(dir), nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	eng := engines()[0]

	// The key: <data-dir>/wg.key, 0600, the engine's, not the tunnel key.
	keyPath := filepath.Join(dir, "wg.key")
	fi, err := os.Stat(keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("wg.key: %v, mode %v", err, fi.Mode())
	}
	b, _ := os.ReadFile(keyPath)
	key, err := model.ParseWGKey(strings.TrimSpace(string(b)))
	if err != nil || wg4to6.Key(key) != eng.cfg.PrivateKey {
		t.Fatalf("wg.key holds %q (%v); the engine got another key", b, err)
	}
	if eng.cfg.Prefix.String() != "2001:db8:100::/56" || eng.cfg.ListenPort != 0 || eng.cfg.NAT66 {
		t.Errorf("engine config %+v", eng.cfg)
	}
	for _, a := range []string{"::1", "127.0.0.1", "fe80::1", "169.254.169.254", "fd00:ec2::254", "200::1", "10.1.2.3"} {
		if !slices.ContainsFunc(eng.cfg.Blocked, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) }) {
			t.Errorf("devices may reach %s: blocked %v", a, eng.cfg.Blocked)
		}
	}
	if p, ok := eng.peers(); !ok || len(p) != 0 {
		t.Errorf("peers at start: %v, %v; want an empty set", p, ok)
	}
	var banner bytes.Buffer
	g.Banner(&banner)
	if !strings.Contains(banner.String(), "  4to6          wireguard udp/40000, prefix 2001:db8:100::/56 (/128 per device, 0 devices), endpoint 203.0.113.10:40000\n") {
		t.Errorf("banner:\n%s", banner.String())
	}

	admin := strings.TrimSpace(readFile(t, g.AdminTokenFile))
	var ten api.TenantCreated
	if code := apiCall(t, g, admin, "POST", "/v1/tenants", `{"name":"acme"}`, &ten); code != 201 {
		t.Fatalf("add tenant: %d", code)
	}
	devKey, _ := model.GenerateWGKey()
	var d api.DeviceDetail
	body := fmt.Sprintf(`{"name":"laptop","public_key":%q,"open":["tcp/22"]}`, devKey.Public())
	if code := apiCall(t, g, ten.Token, "POST", "/v1/4to6/devices", body, &d); code != 201 {
		t.Fatalf("add device: %d", code)
	}
	for _, line := range []string{"PublicKey = " + key.Public().String() + "\n", "Endpoint = 203.0.113.10:40000\n", "DNS = 2001:db8::53\n", "Address = " + d.Address.String() + "\n"} {
		if !strings.Contains(d.Config, line) {
			t.Errorf("config lacks %q:\n%s", line, d.Config)
		}
	}
	wantPeers := func(what string, want ...wg4to6.Peer) {
		t.Helper()
		poll(t, what, func() bool {
			p, _ := eng.peers()
			return peersEqual(p, want)
		})
	}
	peer := wg4to6.Peer{PublicKey: wg4to6.Key(devKey.Public()), Addr: d.Address, Open: []string{"tcp/22"}}
	wantPeers("the new device as a peer", peer)

	if code := apiCall(t, g, ten.Token, "PATCH", "/v1/4to6/devices/laptop", `{"add":["udp/60000"]}`, nil); code != 200 {
		t.Fatalf("open a port: %d", code)
	}
	peer.Open = []string{"tcp/22", "udp/60000"}
	wantPeers("the peer's ports opened", peer)

	// Counters: the API and /metrics.
	hs := time.Unix(1900000000, 0)
	eng.mu.Lock()
	eng.stats = map[wg4to6.Key]wg4to6.PeerStats{peer.PublicKey: {RxBytes: 1234, TxBytes: 5678, LastHandshake: hs}}
	eng.mu.Unlock()
	var list []api.DeviceDetail
	if code := apiCall(t, g, ten.Token, "GET", "/v1/4to6/devices", "", &list); code != 200 || len(list) != 1 ||
		list[0].RxBytes != 1234 || list[0].TxBytes != 5678 || !list[0].LastHandshake.Equal(hs) {
		t.Errorf("device list: %d %+v", code, list)
	}
	metrics := readURL(t, "http://"+g.APIAddr+"/metrics")
	for _, m := range []string{`webgw_4to6_devices 1`, `webgw_4to6_device_rx_bytes_total{device="laptop",tenant="acme"} 1234`,
		`webgw_4to6_device_tx_bytes_total{device="laptop",tenant="acme"} 5678`, `webgw_4to6_device_last_handshake_seconds{device="laptop",tenant="acme"} 1.9e+09`} {
		if !strings.Contains(metrics, m+"\n") {
			t.Errorf("/metrics lacks %q", m)
		}
	}

	// Restart: the same key, the device served again at once, same address.
	stopGateway(t, g)
	if !eng.closedNow() {
		t.Error("Stop left the engine open")
	}
	g, err = Start(t.Context(), wgTestConfig(dir), nil)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer stopGateway(t, g)
	eng2 := engines()[1]
	if eng2.cfg.PrivateKey != eng.cfg.PrivateKey {
		t.Error("the WireGuard key changed across a restart")
	}
	if p, _ := eng2.peers(); !peersEqual(p, []wg4to6.Peer{peer}) {
		t.Errorf("peers right after the restart: %+v, want %+v", p, peer)
	}
	eng = eng2
	if code := apiCall(t, g, ten.Token, "DELETE", "/v1/4to6/devices/laptop", "", nil); code != 204 {
		t.Fatalf("remove device: %d", code)
	}
	wantPeers("the removed device gone")
}

func (f *fakeEngine) closedNow() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

func peersEqual(a, b []wg4to6.Peer) bool {
	return slices.EqualFunc(a, b, func(x, y wg4to6.Peer) bool {
		return x.PublicKey == y.PublicKey && x.Addr == y.Addr && slices.Equal(x.Open, y.Open)
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readURL(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestGateway4to6Off: without wg_prefix no engine starts and the device
// API answers 503.
func TestGateway4to6Off(t *testing.T) {
	engines := useFakeEngines(t)
	cfg := wgTestConfig(filepath.Join(t.TempDir(), "data"))
	cfg.WGPrefix, cfg.WGListen, cfg.WGDNS = "", "", nil
	g, err := Start(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stopGateway(t, g)
	if n := len(engines()); n != 0 {
		t.Errorf("%d engines started", n)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "wg.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("wg.key made with 4to6 off: %v", err)
	}
	admin := strings.TrimSpace(readFile(t, g.AdminTokenFile))
	if code := apiCall(t, g, admin, "GET", "/v1/4to6/devices", "", nil); code != http.StatusServiceUnavailable {
		t.Errorf("device API with 4to6 off: %d, want 503", code)
	}
	var banner bytes.Buffer
	g.Banner(&banner)
	if strings.Contains(banner.String(), "  4to6  ") {
		t.Errorf("banner names 4to6:\n%s", banner.String())
	}
}

// TestGateway4to6StartFails: an engine that cannot start fails the
// gateway's start with a message naming 4to6, and leaves nothing held (a
// second start works); a bad key file is named.
func TestGateway4to6StartFails(t *testing.T) {
	old := startWG
	t.Cleanup(func() { startWG = old })
	dir := filepath.Join(t.TempDir(), "data")
	startWG = func(wg4to6.Config, *slog.Logger) (wgEngine, error) {
		return nil, errors.New("open /dev/net/tun: operation not permitted")
	}
	if _, err := Start(t.Context(), wgTestConfig(dir), nil); err == nil || !strings.Contains(err.Error(), "4to6: start wireguard on udp/0: open /dev/net/tun") {
		t.Fatalf("Start with a failing engine = %v", err)
	}
	startWG = func(cfg wg4to6.Config, _ *slog.Logger) (wgEngine, error) { return &fakeEngine{cfg: cfg}, nil }
	if err := os.WriteFile(filepath.Join(dir, "wg.key"), []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(t.Context(), wgTestConfig(dir), nil); err == nil || !strings.Contains(err.Error(), "wg.key must hold the gateway's WireGuard private key") {
		t.Fatalf("Start with a bad wg.key = %v", err)
	}
	os.Remove(filepath.Join(dir, "wg.key"))
	g, err := Start(t.Context(), wgTestConfig(dir), nil)
	if err != nil {
		t.Fatalf("Start after failed starts: %v", err)
	}
	stopGateway(t, g)
}

// newRunner is a fourTo6 on st with a fake engine, running until the test ends.
func newRunner(t *testing.T, st store.Store, prefix string) (*fourTo6, *fakeEngine) {
	t.Helper()
	plan, err := model.ParseDevicePlan(prefix, "")
	if err != nil {
		t.Fatal(err)
	}
	eng := &fakeEngine{}
	f := &fourTo6{eng: eng, plan: plan, store: st, log: slog.New(slog.DiscardHandler), devices: map[string]model.Device{}, dirty: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f, eng
}

// TestFourTo6FollowsTheStore: two gateways' runners on one store both
// serve a device created through either, and both drop it at once when it
// is deleted through one; a device outside a gateway's prefix is not
// served there; a refused SetPeers is retried.
func TestFourTo6FollowsTheStore(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, engA := newRunner(t, st, "2001:db8:100::/56")
	_, engB := newRunner(t, st, "2001:db8:100::/56")
	_, engOther := newRunner(t, st, "2001:db8:200::/56")
	engB.mu.Lock()
	engB.failing = 2 // B's engine refuses twice
	engB.mu.Unlock()

	ctx := t.Context()
	plan, _ := model.ParseDevicePlan("2001:db8:100::/56", "")
	k, _ := model.GenerateWGKey()
	d, err := store.CreateDevice(ctx, st, model.Device{Tenant: "acme", Name: "laptop", PublicKey: k.Public().String(), Open: []string{"all"}}, plan, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []wg4to6.Peer{{PublicKey: wg4to6.Key(k.Public()), Addr: d.Address, Open: []string{"all"}}}
	for name, e := range map[string]*fakeEngine{"A": engA, "B": engB} {
		poll(t, "gateway "+name+" serving the device", func() bool { p, _ := e.peers(); return peersEqual(p, want) })
	}
	poll(t, "the other prefix's gateway setting its peers", func() bool { _, ok := engOther.peers(); return ok })
	if p, _ := engOther.peers(); len(p) != 0 {
		t.Errorf("a gateway of another prefix serves %+v", p)
	}
	if _, err := store.DeleteDevice(ctx, st, "acme", "laptop", 0); err != nil {
		t.Fatal(err)
	}
	for name, e := range map[string]*fakeEngine{"A": engA, "B": engB} {
		poll(t, "gateway "+name+" dropping the device", func() bool { p, _ := e.peers(); return len(p) == 0 })
	}
}

func TestExclude(t *testing.T) {
	p, q := netip.MustParsePrefix("fc00::/7"), netip.MustParsePrefix("fd00:1::/64")
	out := exclude(p, q)
	if len(out) != 57 {
		t.Fatalf("%d networks, want 57", len(out))
	}
	for _, a := range []string{"fc00::", "fd00:1::1", "fd00:1:0:1::", "fdff:ffff::", "fd00::"} {
		addr := netip.MustParseAddr(a)
		n := 0
		for _, o := range out {
			if o.Contains(addr) {
				n++
			}
			if o.Overlaps(q) || !p.Contains(o.Addr()) {
				t.Fatalf("%s overlaps %s or lies outside %s", o, q, p)
			}
		}
		if want := map[bool]int{true: 0, false: 1}[q.Contains(addr)]; n != want {
			t.Errorf("%s is in %d of the networks, want %d", a, n, want)
		}
	}
}

func TestWGBlocked(t *testing.T) {
	cfg := &Config{Store: "etcd://192.0.2.50:2379,[2001:db8:e::1]:2379",
		UpstreamAllow: []string{"::/0", "2001:db8:5::/48", "10.9.0.0/16", "0.0.0.0/0"}}
	ifaces := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/24"), netip.MustParsePrefix("2001:db8:1::7/64"), netip.MustParsePrefix("127.0.0.1/8")}
	has := func(list []netip.Prefix, a string) bool {
		return slices.ContainsFunc(list, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) })
	}
	b := wgBlocked(cfg, "192.0.2.7:8081", ifaces)
	for _, a := range []string{"192.0.2.99", "192.0.2.50", "2001:db8:e::1", "2001:db8:5::9", "10.9.1.1", "::1", "fe80::1", "fd12::1", "200:1::1"} {
		if !has(b, a) {
			t.Errorf("%s not blocked: %v", a, b)
		}
	}
	for _, a := range []string{"2001:db8:1::8", "2606:4700::1111", "2001:db8:6::1"} {
		if has(b, a) {
			t.Errorf("%s blocked: %v", a, b)
		}
	}
	for i := 1; i < len(b); i++ {
		if b[i-1].Overlaps(b[i]) {
			t.Errorf("%s and %s overlap", b[i-1], b[i])
		}
	}
	// A ULA prefix (with NAT66) is carved out of fc00::/7; the rest of
	// fc00::/7 stays blocked.
	b = wgBlocked(&Config{WGPrefix: "fd00:1::/64"}, "127.0.0.1:8081", ifaces)
	if has(b, "fd00:1::5") || !has(b, "fd00:1:0:1::5") || !has(b, "fd00::1") || !has(b, "fc00::1") || !has(b, "fdff::1") {
		t.Errorf("ULA prefix: %v", b)
	}
	if len(b) > 80 {
		t.Errorf("%d networks blocked", len(b))
	}
	// An API on every address: each of the host's own addresses.
	b = wgBlocked(&Config{}, "[::]:8081", ifaces)
	if !has(b, "2001:db8:1::7") || has(b, "2001:db8:1::8") || !has(b, "192.0.2.7") {
		t.Errorf("API on every address: %v", b)
	}
}
