package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

const adminToken = "admin-secret"

// fakeSession stands in for an agent's tunnel session.
type fakeSession struct{ closed atomic.Bool }

func (f *fakeSession) Open() (net.Conn, error) { return nil, errors.New("fake session") }
func (f *fakeSession) NumStreams() int         { return 0 }
func (f *fakeSession) Close() error            { f.closed.Store(true); return nil }

var _ route.Opener = (*fakeSession)(nil)

type env struct {
	srv   *api.Server
	st    store.Store
	bolt  *store.Bolt
	table *route.Table
	h     http.Handler
}

func newEnv(t testing.TB) *env {
	t.Helper()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	table := route.NewTable(nil)
	srv := &api.Server{
		Store: b, Table: table, AdminToken: adminToken,
		Info: api.GatewayInfo{ID: "gw1", Version: "test", Domain: "localhost", HTTPSAddr: "127.0.0.1:8443", Open: true},
		Now:  func() time.Time { return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) },
	}
	return &env{srv: srv, st: b, bolt: b, table: table, h: srv.Handler()}
}

// do sends a request to the handler and returns the status and body.
func (e *env) do(t testing.TB, method, path, token string, body io.Reader) (int, http.Header, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, path, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec.Code, rec.Header(), rec.Body.Bytes()
}

func (e *env) addTenant(t *testing.T, name string) string {
	t.Helper()
	code, _, body := e.do(t, "POST", "/v1/tenants", adminToken, strings.NewReader(`{"name":"`+name+`"}`))
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/tenants %s: %d %s", name, code, body)
	}
	var tc api.TenantCreated
	if err := json.Unmarshal(body, &tc); err != nil {
		t.Fatal(err)
	}
	return tc.Token
}

// attach puts a service owned by tenant in the table with one fake agent.
func (e *env) attach(t *testing.T, svc, tenant, agentID string, stored bool) *fakeSession {
	t.Helper()
	if stored {
		sv := model.Service{Name: svc, Tenant: tenant, Protocol: model.ProtoHTTP, Created: time.Now()}
		if _, err := store.PutJSON(context.Background(), e.st, store.ServiceKey(svc), &sv, store.AnyRev); err != nil {
			t.Fatal(err)
		}
	}
	e.table.Upsert(svc, tenant, model.ProtoHTTP, stored)
	fs := &fakeSession{}
	a := &route.Agent{ID: agentID, Tenant: tenant, Remote: "192.0.2.7:5555", Version: "v-test", Connected: time.Now(),
		Services: []string{svc}, Session: fs}
	if err := e.table.Attach(svc, a); err != nil {
		t.Fatal(err)
	}
	return fs
}

func wantError(t *testing.T, code int, hdr http.Header, body []byte, wantCode int, contains string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("status %d, want %d (body %s)", code, wantCode, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q, want application/json", ct)
	}
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not {\"error\": ...}: %v", body, err)
	}
	if !strings.Contains(e.Error, contains) {
		t.Errorf("error %q, want it to contain %q", e.Error, contains)
	}
}

func TestHealthz(t *testing.T) {
	e := newEnv(t)
	code, _, body := e.do(t, "GET", "/healthz", "", nil)
	if code != 200 || string(body) != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	code, hdr, body := e.do(t, "GET", "/metrics", "", nil)
	wantError(t, code, hdr, body, 404, "no such endpoint")
	e.srv.Metrics = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "m 1\n") })
	e.h = e.srv.Handler()
	if code, _, body := e.do(t, "GET", "/metrics", "", nil); code != 200 || string(body) != "m 1\n" {
		t.Errorf("/metrics: %d %q", code, body)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	tok := e.addTenant(t, "acme")
	tests := []struct {
		method, path, auth string
		want               int
		contains           string
	}{
		{"GET", "/v1/status", "", 401, "missing bearer token"},
		{"GET", "/v1/status", "Bearer ", 401, "missing bearer token"},
		{"GET", "/v1/status", "Basic YTpi", 401, "missing bearer token"},
		{"GET", "/v1/status", "bearer " + adminToken, 401, "missing bearer token"},
		{"GET", "/v1/status", "Bearer wrong", 401, "token refused"},
		{"GET", "/v1/status", "Bearer " + adminToken + "x", 401, "token refused"},
		{"GET", "/v1/services", "Bearer wgw_nope", 401, "token refused"},
		{"GET", "/v1/status", "Bearer " + tok, 403, "admin token"},
		{"GET", "/v1/tenants", "Bearer " + tok, 403, "admin token"},
		{"POST", "/v1/tenants", "Bearer " + tok, 403, "admin token"},
		{"DELETE", "/v1/tenants/acme", "Bearer " + tok, 403, "admin token"},
		{"GET", "/v1/status", "Bearer " + adminToken, 200, ""},
		{"GET", "/v1/services", "Bearer " + adminToken, 200, ""},
		{"GET", "/v1/services", "Bearer " + tok, 200, ""},
		{"GET", "/v1/whoami", "Bearer " + tok, 200, ""},
	}
	for _, tt := range tests {
		req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(`{"name":"x"}`))
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, req)
		if tt.want == 200 {
			if rec.Code != 200 {
				t.Errorf("%s %s with %q: %d %s, want 200", tt.method, tt.path, tt.auth, rec.Code, rec.Body)
			}
			continue
		}
		wantError(t, rec.Code, rec.Header(), rec.Body.Bytes(), tt.want, tt.contains)
		if tt.want == 401 && rec.Header().Get("WWW-Authenticate") == "" && tt.contains == "missing bearer token" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", tt.method, tt.path)
		}
	}
	// The tenant was not touched by the refused calls.
	if _, err := store.TenantByToken(context.Background(), e.st, tok); err != nil {
		t.Errorf("tenant gone after refused calls: %v", err)
	}

	var who map[string]any
	_, _, body := e.do(t, "GET", "/v1/whoami", tok, nil)
	if err := json.Unmarshal(body, &who); err != nil || who["tenant"] != "acme" || who["admin"] != false {
		t.Errorf("whoami as tenant: %s", body)
	}
	_, _, body = e.do(t, "GET", "/v1/whoami", adminToken, nil)
	if err := json.Unmarshal(body, &who); err != nil || who["admin"] != true {
		t.Errorf("whoami as admin: %s", body)
	}
}

func TestEmptyAdminTokenNeverMatches(t *testing.T) {
	e := newEnv(t)
	e.srv.AdminToken = ""
	e.h = e.srv.Handler()
	req := httptest.NewRequest("GET", "/v1/status", nil)
	req.Header.Set("Authorization", "Bearer ")
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Errorf("empty token with an empty admin token: %d, want 401", rec.Code)
	}
}

func TestCreateTenant(t *testing.T) {
	e := newEnv(t)
	code, hdr, body := e.do(t, "POST", "/v1/tenants", adminToken, strings.NewReader(`{"name":"acme"}`))
	if code != http.StatusCreated || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("create: %d %s %s", code, hdr.Get("Content-Type"), body)
	}
	var tc api.TenantCreated
	if err := json.Unmarshal(body, &tc); err != nil {
		t.Fatal(err)
	}
	if tc.Name != "acme" || !strings.HasPrefix(tc.Token, model.TokenPrefix) || len(tc.Token) != len(model.TokenPrefix)+64 {
		t.Fatalf("created %+v, want acme with a wgw_ token", tc)
	}
	// Stored hashed: the raw token is nowhere in the store.
	ctx := context.Background()
	var ten model.Tenant
	if _, err := store.GetJSON(ctx, e.st, store.TenantKey("acme"), &ten); err != nil {
		t.Fatal(err)
	}
	if ten.TokenHash != model.HashToken(tc.Token) {
		t.Errorf("stored token hash %q, want HashToken of the token", ten.TokenHash)
	}
	if !ten.Created.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("created %v, want the server clock's time", ten.Created)
	}
	all, err := e.st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimPrefix(tc.Token, model.TokenPrefix)
	for _, en := range all {
		if strings.Contains(en.Key, secret) || bytes.Contains(en.Value, []byte(secret)) {
			t.Errorf("store entry %q holds the raw token", en.Key)
		}
	}
	if got, err := store.TenantByToken(ctx, e.st, tc.Token); err != nil || got.Name != "acme" {
		t.Errorf("TenantByToken: %v %v", got, err)
	}

	// Duplicate.
	code, hdr, body = e.do(t, "POST", "/v1/tenants", adminToken, strings.NewReader(`{"name":"acme"}`))
	wantError(t, code, hdr, body, http.StatusConflict, `tenant "acme" already exists`)

	// Two tenants get different tokens.
	if tok2 := e.addTenant(t, "other"); tok2 == tc.Token {
		t.Error("two tenants got the same token")
	}
}

func TestCreateTenantBadBody(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, body, contains string
	}{
		{"empty body", "", "empty body"},
		{"white space", "  \n", "empty body"},
		{"not json", "name=acme", "not valid JSON"},
		{"truncated", `{"name":"ac`, "ends inside"},
		{"unknown field", `{"name":"acme","nme":"x"}`, `unknown field "nme"`},
		{"wrong type", `{"name":42}`, `field "name" must be a string`},
		{"null name", `{"name":null}`, `field "name"`},
		{"array", `["acme"]`, "JSON object"},
		{"string", `"acme"`, "JSON object"},
		{"trailing object", `{"name":"acme"} {"name":"b"}`, "data after the JSON object"},
		{"trailing brace", `{"name":"acme"}}`, "data after the JSON object"},
		{"trailing bracket", `{"name":"acme"}]`, "data after the JSON object"},
		{"trailing garbage", `{"name":"acme"}x`, "data after the JSON object"},
		{"missing name", `{}`, `field "name"`},
		{"bad name", `{"name":"Bad_Name"}`, `field "name": invalid tenant name "Bad_Name"`},
		{"long name", `{"name":"` + strings.Repeat("a", 64) + `"}`, `field "name"`},
		{"too large", `{"name":"` + strings.Repeat("a", 70<<10) + `"}`, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, body := e.do(t, "POST", "/v1/tenants", adminToken, strings.NewReader(tt.body))
			wantError(t, code, hdr, body, http.StatusBadRequest, tt.contains)
		})
	}
	if ts, _ := store.ListTenants(context.Background(), e.st); len(ts) != 0 {
		t.Errorf("bad bodies created tenants: %+v", ts)
	}
	// Trailing white space is fine.
	code, _, body := e.do(t, "POST", "/v1/tenants", adminToken, strings.NewReader("{\"name\":\"acme\"}\n\t "))
	if code != http.StatusCreated {
		t.Errorf("body with trailing white space: %d %s", code, body)
	}
}

func TestListTenants(t *testing.T) {
	e := newEnv(t)
	code, _, body := e.do(t, "GET", "/v1/tenants", adminToken, nil)
	if code != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("no tenants: %d %s, want []", code, body)
	}
	e.addTenant(t, "beta")
	e.addTenant(t, "acme")
	e.attach(t, "shop", "acme", "a1", true)
	e.attach(t, "blog", "acme", "a2", true)
	e.attach(t, "quick-otter-42", "", "q", false)
	_, _, body = e.do(t, "GET", "/v1/tenants", adminToken, nil)
	var ts []api.TenantInfo
	if err := json.Unmarshal(body, &ts); err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || ts[0].Name != "acme" || ts[0].Services != 2 || ts[1].Name != "beta" || ts[1].Services != 0 || ts[0].Created.IsZero() {
		t.Errorf("tenants %+v, want acme (2 services) then beta (0)", ts)
	}
	if bytes.Contains(body, []byte("token")) {
		t.Errorf("tenant list shows token data: %s", body)
	}
}

// syncTableStore removes a service from the table as soon as it is deleted
// from the store, as the gateway's watch may do before the API handler goes on.
type syncTableStore struct {
	store.Store
	table *route.Table
}

func (s syncTableStore) Delete(ctx context.Context, key string, expect int64) error {
	err := s.Store.Delete(ctx, key, expect)
	if name, ok := strings.CutPrefix(key, store.ServicesPrefix); ok && err == nil {
		s.table.Remove(name)
	}
	return err
}

func TestDeleteTenant(t *testing.T) {
	for _, watch := range []bool{false, true} {
		name := "table updated later"
		if watch {
			name = "table updated at once"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			if watch {
				e.srv.Store = syncTableStore{Store: e.bolt, table: e.table}
				e.st = e.srv.Store
				e.h = e.srv.Handler()
			}
			tokA := e.addTenant(t, "acme")
			tokB := e.addTenant(t, "beta")
			sessA1 := e.attach(t, "shop", "acme", "a1", true)
			sessA2 := e.attach(t, "blog", "acme", "a2", true)
			sessB := e.attach(t, "news", "beta", "b1", true)
			sessQ := e.attach(t, "quick-otter-42", "", "q", false)

			code, _, body := e.do(t, "DELETE", "/v1/tenants/acme", adminToken, nil)
			if code != http.StatusNoContent || len(body) != 0 {
				t.Fatalf("delete: %d %s, want 204 and no body", code, body)
			}
			ctx := context.Background()
			if _, err := e.st.Get(ctx, store.TenantKey("acme")); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("tenant record: %v, want not found", err)
			}
			for _, svc := range []string{"shop", "blog"} {
				if _, err := e.st.Get(ctx, store.ServiceKey(svc)); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("service %s: %v, want deleted with its tenant", svc, err)
				}
			}
			if _, err := e.st.Get(ctx, store.ServiceKey("news")); err != nil {
				t.Errorf("another tenant's service: %v", err)
			}
			if !sessA1.closed.Load() || !sessA2.closed.Load() {
				t.Error("the tenant's agent sessions were not closed")
			}
			if sessB.closed.Load() || sessQ.closed.Load() {
				t.Error("other agents' sessions were closed")
			}
			code, hdr, body := e.do(t, "GET", "/v1/whoami", tokA, nil)
			wantError(t, code, hdr, body, 401, "token refused")
			if code, _, _ := e.do(t, "GET", "/v1/whoami", tokB, nil); code != 200 {
				t.Errorf("another tenant's token: %d", code)
			}

			code, hdr, body = e.do(t, "DELETE", "/v1/tenants/acme", adminToken, nil)
			wantError(t, code, hdr, body, 404, `tenant "acme" does not exist`)
			code, hdr, body = e.do(t, "DELETE", "/v1/tenants/Bad_Name", adminToken, nil)
			wantError(t, code, hdr, body, 400, "invalid tenant name")
		})
	}
}

func TestListServicesScoped(t *testing.T) {
	e := newEnv(t)
	tokA := e.addTenant(t, "acme")
	tokB := e.addTenant(t, "beta")
	e.attach(t, "shop", "acme", "a1", true)
	e.attach(t, "news", "beta", "b1", true)
	e.attach(t, "quick-otter-42", "", "q", false)
	e.table.Upsert("idle", "acme", model.ProtoTLS, true) // owned, no agent

	list := func(tok string) []api.ServiceInfo {
		code, _, body := e.do(t, "GET", "/v1/services", tok, nil)
		if code != 200 {
			t.Fatalf("services: %d %s", code, body)
		}
		var out []api.ServiceInfo
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	names := func(ss []api.ServiceInfo) string {
		var n []string
		for _, s := range ss {
			n = append(n, s.Name+"/"+s.Tenant)
		}
		return strings.Join(n, ",")
	}
	if got := names(list(adminToken)); got != "idle/acme,news/beta,quick-otter-42/,shop/acme" {
		t.Errorf("admin sees %s", got)
	}
	a := list(tokA)
	if got := names(a); got != "idle/acme,shop/acme" {
		t.Errorf("acme sees %s", got)
	}
	if a[0].Agents != 0 || a[0].Protocol != "tls" || a[1].Agents != 1 || a[1].Protocol != "http" {
		t.Errorf("acme's services %+v", a)
	}
	if got := names(list(tokB)); got != "news/beta" {
		t.Errorf("beta sees %s", got)
	}
	tokC := e.addTenant(t, "gamma")
	code, _, body := e.do(t, "GET", "/v1/services", tokC, nil)
	if code != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("tenant without services: %d %s, want []", code, body)
	}
}

func TestStatus(t *testing.T) {
	e := newEnv(t)
	code, _, body := e.do(t, "GET", "/v1/status", adminToken, nil)
	if code != 200 {
		t.Fatalf("status: %d %s", code, body)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"gateway", "services", "agents"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status lacks %q: %s", k, body)
		}
	}
	if string(raw["services"]) != "[]" || string(raw["agents"]) != "[]" {
		t.Errorf("empty status: services %s agents %s, want [] and []", raw["services"], raw["agents"])
	}
	var gw map[string]any
	json.Unmarshal(raw["gateway"], &gw)
	for _, k := range []string{"id", "version", "domain", "http_addr", "https_addr", "api_addr", "open", "started"} {
		if _, ok := gw[k]; !ok {
			t.Errorf("status gateway lacks %q", k)
		}
	}

	e.addTenant(t, "acme")
	e.attach(t, "shop", "acme", "a1", true)
	e.table.Lookup("shop").Agents()[0].Drain()
	_, _, body = e.do(t, "GET", "/v1/status", adminToken, nil)
	var st api.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if st.Gateway.ID != "gw1" || st.Gateway.Domain != "localhost" || !st.Gateway.Open {
		t.Errorf("gateway %+v", st.Gateway)
	}
	if len(st.Services) != 1 || st.Services[0].Name != "shop" || st.Services[0].Agents != 1 {
		t.Errorf("services %+v", st.Services)
	}
	if len(st.Agents) != 1 {
		t.Fatalf("agents %+v", st.Agents)
	}
	ag := st.Agents[0]
	if ag.ID != "a1" || ag.Tenant != "acme" || ag.Remote != "192.0.2.7:5555" || ag.Version != "v-test" ||
		len(ag.Services) != 1 || ag.Services[0] != "shop" || !ag.Draining || ag.Connected.IsZero() {
		t.Errorf("agent %+v", ag)
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct{ method, path string }{
		{"GET", "/v1/nope"},
		{"GET", "/v2/status"},
		{"GET", "/"},
		{"GET", "/nope"},
		{"POST", "/v1/status"},
		{"PUT", "/v1/tenants"},
	} {
		code, hdr, body := e.do(t, tt.method, tt.path, adminToken, nil)
		if code != 404 && code != 405 {
			t.Errorf("%s %s: %d, want 404 or 405", tt.method, tt.path, code)
			continue
		}
		wantError(t, code, hdr, body, code, "")
	}
	code, hdr, body := e.do(t, "GET", "/v1/nope", "", nil)
	wantError(t, code, hdr, body, 404, "no such endpoint: GET /v1/nope")
}

func TestNilLog(t *testing.T) {
	// Log nil means discard: creating and removing tenants must not panic.
	e := newEnv(t)
	e.addTenant(t, "acme")
	if code, _, body := e.do(t, "DELETE", "/v1/tenants/acme", adminToken, nil); code != 204 {
		t.Errorf("delete: %d %s", code, body)
	}
}

func TestClient(t *testing.T) {
	e := newEnv(t)
	ts := httptest.NewServer(e.h)
	defer ts.Close()
	ctx := t.Context()
	addr := strings.TrimPrefix(ts.URL, "http://")

	for _, a := range []string{addr, ts.URL, ts.URL + "/"} {
		cl := &api.Client{Addr: a, Token: adminToken}
		var who map[string]any
		if err := cl.Do(ctx, "GET", "/v1/whoami", nil, &who); err != nil || who["admin"] != true {
			t.Errorf("Addr %q: whoami %v %v", a, who, err)
		}
	}
	cl := &api.Client{Addr: addr, Token: adminToken}
	var created api.TenantCreated
	if err := cl.Do(ctx, "POST", "/v1/tenants", api.TenantRequest{Name: "acme"}, &created); err != nil {
		t.Fatal(err)
	}
	if created.Name != "acme" || created.Token == "" {
		t.Errorf("created %+v", created)
	}
	err := cl.Do(ctx, "POST", "/v1/tenants", api.TenantRequest{Name: "acme"}, nil)
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != 409 || !strings.Contains(ae.Msg, "already exists") {
		t.Errorf("duplicate: %v, want an APIError 409", err)
	}
	if !strings.Contains(err.Error(), "HTTP 409") {
		t.Errorf("APIError text %q, want the status", err)
	}
	// 204 without a body.
	if err := cl.Do(ctx, "DELETE", "/v1/tenants/acme", nil, nil); err != nil {
		t.Errorf("delete: %v", err)
	}
	// A tenant token.
	tok := e.addTenant(t, "beta")
	tcl := &api.Client{Addr: addr, Token: tok}
	var svcs []api.ServiceInfo
	if err := tcl.Do(ctx, "GET", "/v1/services", nil, &svcs); err != nil || len(svcs) != 0 {
		t.Errorf("tenant services: %v %v", svcs, err)
	}
	if err := tcl.Do(ctx, "GET", "/v1/status", nil, nil); !errors.As(err, &ae) || ae.Status != 403 {
		t.Errorf("tenant status: %v, want 403", err)
	}
	// A non-JSON error body is kept as the message.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream broke", http.StatusBadGateway)
	}))
	defer plain.Close()
	err = (&api.Client{Addr: plain.URL}).Do(ctx, "GET", "/v1/status", nil, nil)
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Msg != "upstream broke" {
		t.Errorf("plain error: %v", err)
	}
	// A bad JSON answer.
	junk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{") }))
	defer junk.Close()
	var out map[string]any
	if err := (&api.Client{Addr: junk.URL}).Do(ctx, "GET", "/x", nil, &out); err == nil || !strings.Contains(err.Error(), "decode API answer") {
		t.Errorf("junk answer: %v", err)
	}
	// Nobody listening: the message points at --api-addr.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	err = (&api.Client{Addr: dead, HTTP: &http.Client{Timeout: 5 * time.Second}}).Do(ctx, "GET", "/v1/status", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "--api-addr") {
		t.Errorf("unreachable API: %v, want a hint at --api-addr", err)
	}
}

func FuzzTenantRequestBody(f *testing.F) {
	for _, s := range []string{
		`{"name":"acme"}`, `{"name":"acme"}`, ``, `{`, `{"name":1}`, `{"nme":"x"}`, `[]`, `null`,
		`{"name":"acme"} x`, `{"name":"acme"}}`, `{"name":"-x"}`, `{"name":"` + strings.Repeat("a", 64) + `"}`,
		`{"name":"a","name":"b"}`, `{"NAME":"caps"}`, "{\"name\":\"\\u0000\"}", `{"name":"x"}` + strings.Repeat(" ", 100),
	} {
		f.Add([]byte(s))
	}
	e := newEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		code, hdr, resp := e.do(t, "POST", "/v1/tenants", adminToken, bytes.NewReader(body))
		switch code {
		case http.StatusCreated:
			var tc api.TenantCreated
			if err := json.Unmarshal(resp, &tc); err != nil || model.ValidateTenantName(tc.Name) != nil || tc.Token == "" {
				t.Fatalf("201 with %q", resp)
			}
		case http.StatusBadRequest, http.StatusConflict:
			var ae api.Error
			if err := json.Unmarshal(resp, &ae); err != nil || ae.Error == "" {
				t.Fatalf("%d with %q", code, resp)
			}
		default:
			t.Fatalf("POST /v1/tenants %q: status %d (%s), want 201, 400 or 409", body, code, resp)
		}
		if hdr.Get("Content-Type") != "application/json" {
			t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
		}
	})
}
