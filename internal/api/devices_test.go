package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// gatewayKey is the gateway's WireGuard private key in these tests.
var gatewayKey = mustKey("6KAtyQ8Xq3G3LKEA1YWTMMh0V6m+hZTcz1h62kgQN18=")

func mustKey(s string) model.WGKey {
	k, err := model.ParseWGKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

// fakeStats is a Stats hook whose counters the test sets.
type fakeStats struct {
	mu sync.Mutex
	m  map[model.WGKey]api.DeviceStats // guarded by mu
}

func (f *fakeStats) set(k model.WGKey, st api.DeviceStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[model.WGKey]api.DeviceStats{}
	}
	f.m[k] = st
}

func (f *fakeStats) stats() map[model.WGKey]api.DeviceStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m
}

// newDeviceEnv is newServiceEnv with 4to6 on: /128 per device from
// 2001:db8:100::/56, at most quota devices per tenant.
func newDeviceEnv(t testing.TB, quota int) (e *env, fs *fakeStats, acme, beta string) {
	t.Helper()
	e, acme, beta = newServiceEnv(t)
	pl, err := model.ParseDevicePlan("2001:db8:100::/56", "")
	if err != nil {
		t.Fatal(err)
	}
	fs = &fakeStats{}
	e.srv.WG = &api.WG4to6{Plan: pl, PublicKey: gatewayKey.Public(), Endpoint: "203.0.113.10:51820",
		DNS: []netip.Addr{netip.MustParseAddr("2001:db8::53")}, MaxDevicesPerTenant: quota, Stats: fs.stats}
	e.h = e.srv.Handler()
	return e, fs, acme, beta
}

// doHeader is env.do with extra request headers.
func (e *env) doHeader(t testing.TB, method, path, token string, hdr http.Header, body io.Reader) (int, http.Header, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, path, body)
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec.Code, rec.Header(), rec.Body.Bytes()
}

func pubKey(t testing.TB) string {
	t.Helper()
	k, err := model.GenerateWGKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

func deviceOf(t *testing.T, body []byte) api.DeviceDetail {
	t.Helper()
	var d api.DeviceDetail
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return d
}

func deviceBody(name, key string, extra string) string {
	return fmt.Sprintf(`{"name":%q,"public_key":%q%s}`, name, key, extra)
}

func TestDevicesOff(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	code, hdr, body := e.do(t, "GET", "/v1/4to6/devices", "", nil)
	wantError(t, code, hdr, body, http.StatusUnauthorized, "missing bearer token")
	for _, m := range []string{"GET /v1/4to6/devices", "POST /v1/4to6/devices", "GET /v1/4to6/devices/laptop",
		"PATCH /v1/4to6/devices/laptop", "DELETE /v1/4to6/devices/laptop"} {
		method, path, _ := strings.Cut(m, " ")
		code, hdr, body := e.doJSON(t, method, path, acme, `{}`)
		wantError(t, code, hdr, body, http.StatusServiceUnavailable, "--wg-prefix")
	}
}

func TestCreateDeviceAPI(t *testing.T) {
	e, _, acme, _ := newDeviceEnv(t, 0)
	key := pubKey(t)
	code, hdr, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", key, `,"open":["udp/60000","tcp/22","tcp/22"]`))
	if code != http.StatusCreated {
		t.Fatalf("POST: %d %s", code, body)
	}
	d := deviceOf(t, body)
	if d.Name != "laptop" || d.Tenant != "acme" || d.PublicKey != key || !slices.Equal(d.Open, []string{"tcp/22", "udp/60000"}) ||
		!e.srv.WG.Plan.Contains(d.Address) || e.srv.WG.Plan.Reserved(d.Address) || !d.Created.Equal(e.srv.Now()) {
		t.Fatalf("created %+v", d)
	}
	if hdr.Get("Location") != "/v1/4to6/devices/laptop" {
		t.Errorf("Location %q", hdr.Get("Location"))
	}
	want := "# webgw 4to6 device laptop of tenant acme\n" +
		"[Interface]\n" +
		"PrivateKey = <your private key>\n" +
		"Address = " + d.Address.String() + "\n" +
		"DNS = 2001:db8::53\n" +
		"\n[Peer]\n" +
		"PublicKey = " + gatewayKey.Public().String() + "\n" +
		"Endpoint = 203.0.113.10:51820\n" +
		"AllowedIPs = ::/0\n" +
		"PersistentKeepalive = 25\n"
	if d.Config != want {
		t.Errorf("config:\n%s\nwant:\n%s", d.Config, want)
	}
	stored, _, err := store.GetDevice(context.Background(), e.st, "acme", "laptop")
	if err != nil || stored.Address != d.Address || stored.PublicKey != key {
		t.Errorf("stored %+v, %v", stored, err)
	}

	// The admin names the tenant; the Location then carries it.
	code, _, body = e.doJSON(t, "POST", "/v1/4to6/devices", adminToken, deviceBody("phone", pubKey(t), ""))
	wantError(t, code, http.Header{"Content-Type": {"application/json"}}, body, http.StatusBadRequest, "tenant: the admin token must name the tenant")
	code, hdr, body = e.doJSON(t, "POST", "/v1/4to6/devices", adminToken, deviceBody("phone", pubKey(t), `,"tenant":"beta"`))
	if code != http.StatusCreated || hdr.Get("Location") != "/v1/4to6/devices/phone?tenant=beta" {
		t.Fatalf("admin POST: %d %s %s", code, hdr.Get("Location"), body)
	}
	if d := deviceOf(t, body); d.Tenant != "beta" || !slices.Equal(d.Open, []string{}) {
		t.Errorf("admin created %+v", d)
	}
}

func TestDeviceConfig(t *testing.T) {
	w := &api.WG4to6{PublicKey: gatewayKey.Public(), Endpoint: "gw.example.net:51820",
		DNS: []netip.Addr{netip.MustParseAddr("2001:4860:4860::8888"), netip.MustParseAddr("2606:4700:4700::1111")}}
	d := model.Device{Name: "router", Tenant: "acme", Address: netip.MustParsePrefix("2001:db8:100:7::/64")}
	cfg := w.DeviceConfig(d)
	for _, line := range []string{"Address = 2001:db8:100:7::1/64\n", "DNS = 2001:4860:4860::8888, 2606:4700:4700::1111\n", "Endpoint = gw.example.net:51820\n"} {
		if !strings.Contains(cfg, line) {
			t.Errorf("config lacks %q:\n%s", line, cfg)
		}
	}
	w.DNS = nil
	if cfg := w.DeviceConfig(d); strings.Contains(cfg, "DNS") {
		t.Errorf("config without resolvers has a DNS line:\n%s", cfg)
	}
	priv, _ := model.GenerateWGKey()
	full, err := api.FillPrivateKey(cfg, priv)
	if err != nil || !strings.Contains(full, "PrivateKey = "+priv.String()+"\n") || strings.Contains(full, api.PrivateKeyPlaceholder) {
		t.Errorf("FillPrivateKey = %q, %v", full, err)
	}
	if _, err := api.FillPrivateKey(full, priv); err == nil {
		t.Error("FillPrivateKey of a config without the placeholder succeeded")
	}
}

func TestDeviceBadRequests(t *testing.T) {
	e, _, acme, _ := newDeviceEnv(t, 0)
	k := pubKey(t)
	tests := []struct {
		token, body string
		code        int
		contains    string
	}{
		{acme, `{"public_key":"` + k + `"}`, 400, "name: required"},
		{acme, deviceBody("My_Laptop", k, ""), 400, `name: invalid device name "My_Laptop"`},
		{acme, `{"name":"laptop"}`, 400, "public_key: required"},
		{acme, deviceBody("laptop", "not-a-key", ""), 400, "public_key: wireguard key of 9 characters"},
		{acme, deviceBody("laptop", model.WGKey{}.String(), ""), 400, "public_key: the all-zero key"},
		{acme, deviceBody("laptop", gatewayKey.Public().String(), ""), 400, "public_key: that is the gateway's own key"},
		{acme, deviceBody("laptop", k, `,"open":["tcp/22","tcp/99999"]`), 400, `open: "tcp/99999"`},
		{acme, deviceBody("laptop", k, `,"open":"tcp/22"`), 400, `field "open" must be a []string`},
		{acme, deviceBody("laptop", k, `,"private_key":"x"`), 400, `unknown field "private_key"`},
		{acme, deviceBody("laptop", k, `,"tenant":"beta"`), 403, "tenant: a tenant token creates devices for its own tenant"},
		{adminToken, deviceBody("laptop", k, `,"tenant":"nobody"`), 400, `tenant: tenant "nobody" does not exist`},
		{acme, `[]`, 400, "body must be a JSON object"},
		{acme, ``, 400, "empty body"},
	}
	for _, tt := range tests {
		code, hdr, body := e.doJSON(t, "POST", "/v1/4to6/devices", tt.token, tt.body)
		wantError(t, code, hdr, body, tt.code, tt.contains)
	}
	if ds, _ := store.ListDevices(context.Background(), e.st); len(ds) != 0 {
		t.Errorf("refused requests stored %+v", ds)
	}
}

func TestDeviceOneKeyOneDevice(t *testing.T) {
	e, _, acme, beta := newDeviceEnv(t, 0)
	k := pubKey(t)
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", k, "")); code != 201 {
		t.Fatalf("POST: %d %s", code, body)
	}
	for _, tc := range []struct{ tok, name string }{{acme, "laptop2"}, {beta, "laptop"}} {
		code, hdr, body := e.doJSON(t, "POST", "/v1/4to6/devices", tc.tok, deviceBody(tc.name, k, ""))
		wantError(t, code, hdr, body, http.StatusConflict, "public_key: another device uses this key")
	}
	code, hdr, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", pubKey(t), ""))
	wantError(t, code, hdr, body, http.StatusConflict, `name: tenant "acme" has a device "laptop" already`)
}

func TestDeviceQuotaAPI(t *testing.T) {
	e, _, acme, beta := newDeviceEnv(t, 2)
	for _, name := range []string{"a", "b"} {
		if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody(name, pubKey(t), "")); code != 201 {
			t.Fatalf("POST %s: %d %s", name, code, body)
		}
	}
	code, hdr, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("c", pubKey(t), ""))
	wantError(t, code, hdr, body, http.StatusForbidden, `tenant "acme" holds its quota of 2 devices`)
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", beta, deviceBody("c", pubKey(t), "")); code != 201 {
		t.Fatalf("beta's device: %d %s", code, body)
	}
}

func TestDeviceTenantIsolation(t *testing.T) {
	e, _, acme, beta := newDeviceEnv(t, 0)
	for _, tc := range []struct{ tok, name string }{{acme, "laptop"}, {acme, "phone"}, {beta, "laptop"}} {
		if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", tc.tok, deviceBody(tc.name, pubKey(t), "")); code != 201 {
			t.Fatalf("POST: %d %s", code, body)
		}
	}
	names := func(tok, path string) []string {
		t.Helper()
		code, _, body := e.do(t, "GET", path, tok, nil)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		var ds []api.DeviceDetail
		if err := json.Unmarshal(body, &ds); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range ds {
			if d.Config != "" {
				t.Errorf("a list carries configs: %+v", d)
			}
			out = append(out, d.ID())
		}
		return out
	}
	if got := names(acme, "/v1/4to6/devices"); !slices.Equal(got, []string{"acme/laptop", "acme/phone"}) {
		t.Errorf("acme sees %v", got)
	}
	if got := names(beta, "/v1/4to6/devices"); !slices.Equal(got, []string{"beta/laptop"}) {
		t.Errorf("beta sees %v", got)
	}
	if got := names(adminToken, "/v1/4to6/devices"); len(got) != 3 {
		t.Errorf("the admin sees %v", got)
	}
	if got := names(adminToken, "/v1/4to6/devices?tenant=beta"); !slices.Equal(got, []string{"beta/laptop"}) {
		t.Errorf("the admin sees %v of beta", got)
	}
	// beta's names are its own: acme's phone does not exist for it.
	code, hdr, body := e.do(t, "GET", "/v1/4to6/devices/phone", beta, nil)
	wantError(t, code, hdr, body, http.StatusNotFound, `tenant "beta" has no device "phone"`)
	code, hdr, body = e.doJSON(t, "PATCH", "/v1/4to6/devices/phone", beta, `{"open":["all"]}`)
	wantError(t, code, hdr, body, http.StatusNotFound, "has no device")
	code, hdr, body = e.do(t, "DELETE", "/v1/4to6/devices/phone", beta, nil)
	wantError(t, code, hdr, body, http.StatusNotFound, "has no device")
	for _, m := range []string{"GET", "PATCH", "DELETE"} {
		code, hdr, body = e.doJSON(t, m, "/v1/4to6/devices/phone?tenant=acme", beta, `{"open":[]}`)
		wantError(t, code, hdr, body, http.StatusForbidden, "tenant: a tenant token reaches its own devices")
	}
	code, hdr, body = e.do(t, "GET", "/v1/4to6/devices?tenant=acme", beta, nil)
	wantError(t, code, hdr, body, http.StatusForbidden, "tenant:")
	if d, _, err := store.GetDevice(context.Background(), e.st, "acme", "phone"); err != nil || len(d.Open) != 0 {
		t.Errorf("acme's phone after beta's tries: %+v, %v", d, err)
	}
	// Beta's own laptop is reachable, acme's is not touched.
	if code, _, body := e.do(t, "DELETE", "/v1/4to6/devices/laptop", beta, nil); code != 204 {
		t.Fatalf("beta DELETE laptop: %d %s", code, body)
	}
	if _, _, err := store.GetDevice(context.Background(), e.st, "acme", "laptop"); err != nil {
		t.Errorf("acme's laptop: %v", err)
	}
	// The admin names the tenant of a device.
	code, hdr, body = e.do(t, "GET", "/v1/4to6/devices/phone", adminToken, nil)
	wantError(t, code, hdr, body, http.StatusBadRequest, "tenant: the admin token must name the device's tenant (?tenant=NAME)")
	code, hdr, body = e.do(t, "GET", "/v1/4to6/devices/phone?tenant=Bad_", adminToken, nil)
	wantError(t, code, hdr, body, http.StatusBadRequest, "tenant: invalid tenant name")
	if code, _, body := e.do(t, "GET", "/v1/4to6/devices/phone?tenant=acme", adminToken, nil); code != 200 || deviceOf(t, body).ID() != "acme/phone" {
		t.Errorf("admin GET: %d %s", code, body)
	}
	code, hdr, body = e.do(t, "GET", "/v1/4to6/devices/Phone", acme, nil)
	wantError(t, code, hdr, body, http.StatusBadRequest, "name: invalid device name")
}

func TestDeviceStatsAndGet(t *testing.T) {
	e, fs, acme, _ := newDeviceEnv(t, 0)
	k := pubKey(t)
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", k, "")); code != 201 {
		t.Fatalf("POST: %d %s", code, body)
	}
	hs := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	fs.set(mustKey(k), api.DeviceStats{RxBytes: 1000, TxBytes: 5000, LastHandshake: hs})
	code, _, body := e.do(t, "GET", "/v1/4to6/devices", acme, nil)
	var ds []api.DeviceDetail
	if code != 200 || json.Unmarshal(body, &ds) != nil || len(ds) != 1 {
		t.Fatalf("GET list: %d %s", code, body)
	}
	if d := ds[0]; d.RxBytes != 1000 || d.TxBytes != 5000 || !d.LastHandshake.Equal(hs) {
		t.Errorf("listed %+v", d)
	}
	code, hdr, body := e.do(t, "GET", "/v1/4to6/devices/laptop", acme, nil)
	d := deviceOf(t, body)
	if code != 200 || d.RxBytes != 1000 || !strings.Contains(d.Config, "PrivateKey = <your private key>\n") || hdr.Get("ETag") == "" {
		t.Errorf("GET one: %d %s %v", code, body, hdr)
	}
	// Before any handshake the field is absent.
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("phone", pubKey(t), "")); code != 201 || bytes.Contains(body, []byte("last_handshake")) {
		t.Errorf("a new device: %d %s", code, body)
	}
}

func TestDevicePatch(t *testing.T) {
	e, _, acme, _ := newDeviceEnv(t, 0)
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", pubKey(t), `,"open":["tcp/22"]`)); code != 201 {
		t.Fatalf("POST: %d %s", code, body)
	}
	patch := func(body string, hdr http.Header) (int, http.Header, []byte) {
		t.Helper()
		req := bytes.NewBufferString(body)
		if hdr == nil {
			return e.do(t, "PATCH", "/v1/4to6/devices/laptop", acme, req)
		}
		return e.doHeader(t, "PATCH", "/v1/4to6/devices/laptop", acme, hdr, req)
	}
	steps := []struct {
		body string
		want []string
	}{
		{`{"add":["udp/60000","tcp/22"]}`, []string{"tcp/22", "udp/60000"}},
		{`{"remove":["tcp/22","tcp/80"]}`, []string{"udp/60000"}},
		{`{"open":["tcp/443","tcp/80"]}`, []string{"tcp/80", "tcp/443"}},
		{`{"add":["all"]}`, []string{"all"}},
		{`{"remove":["all"],"add":["tcp/22"]}`, []string{"tcp/22"}},
		{`{"open":[]}`, []string{}},
	}
	for _, st := range steps {
		code, hdr, body := patch(st.body, nil)
		if code != 200 {
			t.Fatalf("PATCH %s: %d %s", st.body, code, body)
		}
		if d := deviceOf(t, body); !slices.Equal(d.Open, st.want) || d.Config == "" || hdr.Get("ETag") == "" {
			t.Fatalf("PATCH %s: open %q, want %q", st.body, d.Open, st.want)
		}
		if d, _, _ := store.GetDevice(context.Background(), e.st, "acme", "laptop"); !slices.Equal(append([]string{}, d.Open...), st.want) {
			t.Fatalf("PATCH %s: stored %q", st.body, d.Open)
		}
	}
	patch(`{"open":["all"]}`, nil)
	bad := []struct {
		body     string
		code     int
		contains string
	}{
		{`{"remove":["tcp/22"]}`, 400, `remove: every port is open ("all")`},
		{`{"open":["tcp/22"],"add":["tcp/23"]}`, 400, "open: give either the whole list (open) or the changes"},
		{`{}`, 400, "open: nothing to change"},
		{`{"open":null}`, 400, "open: nothing to change"},
		{`{"add":["tcp/x"]}`, 400, `add: "tcp/x"`},
		{`{"remove":["icmp"]}`, 400, `remove: "icmp" not accepted`},
		{`{"open":["udp/0"]}`, 400, `open: "udp/0"`},
		{`{"name":"x"}`, 400, `unknown field "name"`},
	}
	for _, b := range bad {
		code, hdr, body := patch(b.body, nil)
		wantError(t, code, hdr, body, b.code, b.contains)
	}
	// If-Match: a stale revision is refused, the current one applies.
	_, hdr, _ := e.do(t, "GET", "/v1/4to6/devices/laptop", acme, nil)
	etag := hdr.Get("ETag")
	if code, _, body := patch(`{"open":["tcp/1"]}`, http.Header{"If-Match": {etag}}); code != 200 {
		t.Fatalf("PATCH with the current ETag: %d %s", code, body)
	}
	code, hdr, body := patch(`{"open":["tcp/2"]}`, http.Header{"If-Match": {etag}})
	wantError(t, code, hdr, body, http.StatusPreconditionFailed, "changed since revision")
	code, hdr, body = patch(`{"open":["tcp/2"]}`, http.Header{"If-Match": {"yesterday"}})
	wantError(t, code, hdr, body, http.StatusBadRequest, "If-Match")
}

func TestDeviceDelete(t *testing.T) {
	e, _, acme, beta := newDeviceEnv(t, 0)
	k := pubKey(t)
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", k, "")); code != 201 {
		t.Fatalf("POST: %d %s", code, body)
	}
	if code, _, body := e.do(t, "DELETE", "/v1/4to6/devices/laptop", acme, nil); code != 204 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	code, hdr, body := e.do(t, "DELETE", "/v1/4to6/devices/laptop", acme, nil)
	wantError(t, code, hdr, body, http.StatusNotFound, "has no device")
	if es, _ := e.st.List(context.Background(), store.FourTo6Prefix); len(es) != 0 {
		t.Errorf("records left: %v", es)
	}
	// Its key may serve another device now; the admin deletes with ?tenant=.
	if code, _, body := e.doJSON(t, "POST", "/v1/4to6/devices", beta, deviceBody("phone", k, "")); code != 201 {
		t.Fatalf("reusing the key: %d %s", code, body)
	}
	if code, _, body := e.do(t, "DELETE", "/v1/4to6/devices/phone?tenant=beta", adminToken, nil); code != 204 {
		t.Fatalf("admin DELETE: %d %s", code, body)
	}
}

func FuzzDeviceBody(f *testing.F) {
	k := "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
	for _, s := range []string{
		deviceBody("laptop", k, ""), deviceBody("laptop", k, `,"open":["tcp/22","udp/60000"]`), deviceBody("phone", k, `,"open":["all"],"tenant":"acme"`),
		deviceBody("laptop", k, `,"tenant":"beta"`), deviceBody("Laptop", k, ""), deviceBody("laptop", "", ""), deviceBody("laptop", k[:43], ""),
		deviceBody("laptop", k, `,"open":["tcp/0"]`), deviceBody("laptop", k, `,"open":[1]`), `{"name":null}`, ``, `{`, `[]`, `null`, `{"name":"a"} x`,
	} {
		f.Add([]byte(s))
	}
	e, _, acme, _ := newDeviceEnv(f, 3)
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, tok := range []string{acme, adminToken} {
			code, hdr, resp := e.do(t, "POST", "/v1/4to6/devices", tok, bytes.NewReader(body))
			if hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
			}
			switch {
			case code == 201:
				var d api.DeviceDetail
				if err := json.Unmarshal(resp, &d); err != nil {
					t.Fatalf("201 with %q", resp)
				}
				open, err := model.ParseOpen(d.Open)
				if (d.Tenant != "acme" && (tok == acme || d.Tenant != "beta")) || model.ValidateDeviceName(d.Name) != nil || !e.srv.WG.Plan.Contains(d.Address) || e.srv.WG.Plan.Reserved(d.Address) ||
					err != nil || !slices.Equal(open, d.Open) || !strings.Contains(d.Config, "PrivateKey = <your private key>\n") {
					t.Fatalf("%q accepted a bad device %+v", body, d)
				}
				if _, err := model.ParseWGKey(d.PublicKey); err != nil {
					t.Fatalf("%q accepted key %q", body, d.PublicKey)
				}
				// Remove it, so the quota and the key stay free.
				if code, _, resp := e.do(t, "DELETE", "/v1/4to6/devices/"+d.Name+"?tenant="+d.Tenant, adminToken, nil); code != 204 {
					t.Fatalf("remove: %d %s", code, resp)
				}
			case code >= 400 && code < 500:
				var ae api.Error
				if err := json.Unmarshal(resp, &ae); err != nil || ae.Error == "" {
					t.Fatalf("%d with %q", code, resp)
				}
			default:
				t.Fatalf("POST %q: status %d (%s), want 201 or 4xx", body, code, resp)
			}
		}
	})
}

func FuzzDevicePatchBody(f *testing.F) {
	for _, s := range []string{
		`{"open":["tcp/22"]}`, `{"open":[]}`, `{"add":["udp/1","all"]}`, `{"remove":["tcp/22"]}`, `{"add":["tcp/1"],"remove":["tcp/1"]}`,
		`{"open":["tcp/1"],"add":["tcp/2"]}`, `{"open":null}`, `{}`, `{"open":"all"}`, `{"add":["tcp/65536"]}`, ``, `[`, `null`,
	} {
		f.Add([]byte(s))
	}
	e, _, acme, _ := newDeviceEnv(f, 0)
	if code, _, body := e.doJSON(f, "POST", "/v1/4to6/devices", acme, deviceBody("laptop", pubKey(f), "")); code != 201 {
		f.Fatalf("POST: %d %s", code, body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		code, _, resp := e.do(t, "PATCH", "/v1/4to6/devices/laptop", acme, bytes.NewReader(body))
		switch {
		case code == 200:
			var d api.DeviceDetail
			if err := json.Unmarshal(resp, &d); err != nil {
				t.Fatalf("200 with %q", resp)
			}
			if open, err := model.ParseOpen(d.Open); err != nil || !slices.Equal(open, d.Open) || len(open) > model.MaxOpen {
				t.Fatalf("%q stored a bad open list %q", body, d.Open)
			}
		case code >= 400 && code < 500:
			var ae api.Error
			if err := json.Unmarshal(resp, &ae); err != nil || ae.Error == "" {
				t.Fatalf("%d with %q", code, resp)
			}
		default:
			t.Fatalf("PATCH %q: status %d (%s), want 200 or 4xx", body, code, resp)
		}
	})
}
