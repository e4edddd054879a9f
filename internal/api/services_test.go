package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// allowAll is a CheckUpstream that accepts every upstream.
func allowAll(model.ParsedUpstream) error { return nil }

// newServiceEnv is newEnv with every direct upstream allowed and tenants
// acme and beta; it returns their tokens.
func newServiceEnv(t testing.TB) (e *env, acme, beta string) {
	t.Helper()
	e = newEnv(t)
	e.srv.CheckUpstream = allowAll
	e.h = e.srv.Handler()
	for i, name := range []string{"acme", "beta"} {
		tok := model.NewToken()
		ten := model.Tenant{Name: name, TokenHash: model.HashToken(tok), Created: time.Now().UTC()}
		if err := store.CreateTenant(context.Background(), e.st, ten); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			acme = tok
		} else {
			beta = tok
		}
	}
	return e, acme, beta
}

func (e *env) doJSON(t testing.TB, method, path, token, body string) (int, http.Header, []byte) {
	t.Helper()
	return e.do(t, method, path, token, strings.NewReader(body))
}

func detailOf(t *testing.T, body []byte) api.ServiceDetail {
	t.Helper()
	var d api.ServiceDetail
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return d
}

func storedService(t *testing.T, e *env, name string) (model.Service, int64) {
	t.Helper()
	sv, rev, err := store.GetService(context.Background(), e.st, name)
	if err != nil {
		t.Fatalf("stored service %s: %v", name, err)
	}
	return sv, rev
}

func TestCreateService(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	body := `{"name":"shop","tenant":"acme","protocol":"http",
		"upstreams":[{"url":"http://[2001:db8::10]:8080","weight":3},{"url":"https://app.example:8443","tls_insecure":true,"tls_server_name":"app.internal"}],
		"lb":"least_request","health":{"type":"http","path":"/healthz","status":204,"interval":"5s","timeout":"1500ms","healthy_threshold":2,"unhealthy_threshold":4},
		"passive":{"max_failures":3,"cooldown":"1m","ignore_5xx":true}}`
	code, hdr, resp := e.doJSON(t, "POST", "/v1/services", adminToken, body)
	if code != http.StatusCreated {
		t.Fatalf("admin create: %d %s", code, resp)
	}
	if hdr.Get("Location") != "/v1/services/shop" || hdr.Get("ETag") == "" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("create headers %v", hdr)
	}
	d := detailOf(t, resp)
	if d.Name != "shop" || d.Tenant != "acme" || d.URL != "https://shop.localhost:8443" || !d.Stored || d.Agents != 0 {
		t.Errorf("created %+v", d)
	}
	if !d.Created.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("created at %v, want the server clock", d.Created)
	}
	sv, rev := storedService(t, e, "shop")
	if hdr.Get("ETag") != fmt.Sprintf(`"%d"`, rev) {
		t.Errorf("ETag %s, want the revision %d", hdr.Get("ETag"), rev)
	}
	want := model.Service{
		Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP, Created: d.Created,
		Upstreams: []model.Upstream{{URL: "http://[2001:db8::10]:8080", Weight: 3}, {URL: "https://app.example:8443", TLSInsecure: true, TLSServerName: "app.internal"}},
		LB:        model.LBLeastRequest,
		Health: &model.HealthCheck{Type: "http", Path: "/healthz", Status: 204, Interval: model.Duration(5 * time.Second),
			Timeout: model.Duration(1500 * time.Millisecond), HealthyThreshold: 2, UnhealthyThreshold: 4},
		Passive: &model.PassiveHealth{MaxFailures: 3, Cooldown: model.Duration(time.Minute), Ignore5xx: true},
	}
	if !reflect.DeepEqual(sv, want) {
		t.Errorf("stored %+v\nwant   %+v", sv, want)
	}
	if !reflect.DeepEqual(d.Service, want) {
		t.Errorf("answered %+v\nwant     %+v", d.Service, want)
	}
	// Durations are strings on the wire.
	if !bytes.Contains(resp, []byte(`"interval": "5s"`)) || !bytes.Contains(resp, []byte(`"cooldown": "1m0s"`)) {
		t.Errorf("durations not written as strings: %s", resp)
	}

	// A tenant creates its own: with no tenant field, or naming itself.
	// The protocol defaults to http.
	code, _, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"blog"}`)
	if code != http.StatusCreated {
		t.Fatalf("tenant create: %d %s", code, resp)
	}
	if d := detailOf(t, resp); d.Tenant != "acme" || d.Protocol != model.ProtoHTTP || len(d.Upstreams) != 0 {
		t.Errorf("tenant created %+v", d)
	}
	code, _, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"grpc","tenant":"acme","protocol":"h2c","upstreams":[{"url":"h2c://10.1.2.3:50051"}]}`)
	if code != http.StatusCreated {
		t.Fatalf("tenant create naming itself: %d %s", code, resp)
	}
}

func TestCreateServiceRefused(t *testing.T) {
	e, acme, beta := newServiceEnv(t)
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop"}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	e.attach(t, "quick-otter-42", "", "q", false)
	e.table.Upsert("idle-quick", "", model.ProtoHTTP, false) // a quick tunnel whose agent left

	tests := []struct {
		name, token, body string
		code              int
		contains          string
	}{
		{"taken by another tenant", beta, `{"name":"shop"}`, 409, `service "shop" already exists`},
		{"taken by the same tenant", acme, `{"name":"shop"}`, 409, `already exists`},
		{"taken, admin", adminToken, `{"name":"shop","tenant":"beta"}`, 409, `already exists`},
		{"live quick tunnel", beta, `{"name":"quick-otter-42"}`, 409, "quick tunnel"},
		{"reserved", acme, `{"name":"admin"}`, 400, `name: invalid name "admin": reserved`},
		{"invalid", acme, `{"name":"Shop_1"}`, 400, `name: invalid name "Shop_1"`},
		{"no name", acme, `{}`, 400, "name: invalid name"},
		{"admin without tenant", adminToken, `{"name":"x1"}`, 400, "tenant: the admin token must name the tenant"},
		{"admin, unknown tenant", adminToken, `{"name":"x1","tenant":"nobody"}`, 400, `tenant: tenant "nobody" does not exist`},
		{"admin, bad tenant", adminToken, `{"name":"x1","tenant":"No Body"}`, 400, `tenant: invalid tenant name`},
		{"tenant for another", acme, `{"name":"x1","tenant":"beta"}`, 403, `own tenant ("acme")`},
		{"no token", "", `{"name":"x1"}`, 401, "missing bearer token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, resp := e.doJSON(t, "POST", "/v1/services", tt.token, tt.body)
			wantError(t, code, hdr, resp, tt.code, tt.contains)
		})
	}
	if sv, _ := storedService(t, e, "shop"); sv.Tenant != "acme" {
		t.Errorf("shop now owned by %q", sv.Tenant)
	}
	// A quick tunnel without agents does not hold its name.
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", beta, `{"name":"idle-quick"}`); code != 201 {
		t.Errorf("name of an idle quick tunnel: %d %s, want 201", code, resp)
	}
}

func TestServiceBodyValidation(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop"}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	tests := []struct{ name, routing, contains string }{
		{"bad protocol", `"protocol":"sctp"`, `protocol: "sctp" not accepted; use http, h2c, tls, tcp or udp`},
		{"bad proxy protocol", `"proxy_protocol":3`, `proxy_protocol: 3; use 1 or 2`},
		{"proxy protocol type", `"proxy_protocol":"v2"`, `field "proxy_protocol" must be`},
		{"port for http", `"port":20000`, `port: only tcp and udp services have a public port`},
		{"protocol type", `"protocol":1`, `field "protocol" must be`},
		{"scheme for http", `"upstreams":[{"url":"tcp://10.0.0.1:80"}]`, `upstreams[0].url: upstream URL "tcp://10.0.0.1:80": scheme "tcp" not accepted for a http service`},
		{"scheme for h2c", `"protocol":"h2c","upstreams":[{"url":"http://10.0.0.1:80"}]`, `upstreams[0].url:`},
		{"scheme for tls", `"protocol":"tls","upstreams":[{"url":"http://10.0.0.1:80"}]`, `upstreams[0].url:`},
		{"path in url", `"upstreams":[{"url":"http://10.0.0.1:80/app"}]`, `upstreams[0].url:`},
		{"second url", `"upstreams":[{"url":"http://10.0.0.1:80"},{"url":"http://:80"}]`, `upstreams[1].url:`},
		{"duplicate url", `"upstreams":[{"url":"http://10.0.0.1:80"},{"url":"http://10.0.0.1:80"}]`, `upstreams[1].url: "http://10.0.0.1:80" is listed twice`},
		{"weight too high", `"upstreams":[{"url":"http://10.0.0.1:80","weight":1001}]`, `upstreams[0].weight: 1001; use 1-1000`},
		{"weight negative", `"upstreams":[{"url":"http://10.0.0.1:80","weight":-1}]`, `upstreams[0].weight`},
		{"weight type", `"upstreams":[{"url":"http://10.0.0.1:80","weight":"x"}]`, `field "upstreams.weight" must be`},
		{"unknown upstream field", `"upstreams":[{"url":"http://10.0.0.1:80","wieght":2}]`, `unknown field "wieght"`},
		{"too many", `"upstreams":[` + manyUpstreams(model.MaxUpstreams+1) + `]`, "upstreams: 65 given"},
		{"bad lb", `"lb":"fastest"`, `lb: "fastest" not accepted; use round_robin, least_request or ip_hash`},
		{"bad health type", `"health":{"type":"icmp"}`, `health.type: "icmp" not accepted`},
		{"bad health path", `"health":{"path":"healthz"}`, `health.path`},
		{"bad health status", `"health":{"status":600}`, `health.status`},
		{"bad health interval", `"health":{"interval":"5 parsecs"}`, `health.interval: duration "5 parsecs"`},
		{"health interval number", `"health":{"interval":5}`, `health.interval: want a duration string`},
		{"health interval too short", `"health":{"interval":"1ns"}`, `health.interval: 1ns; use 100ms-1h`},
		{"bad health timeout", `"health":{"interval":"5s","timeout":"x"}`, `health.timeout`},
		{"bad threshold", `"health":{"healthy_threshold":101}`, `health.healthy_threshold`},
		{"bad max failures", `"passive":{"max_failures":-2}`, `passive.max_failures`},
		{"bad cooldown", `"passive":{"cooldown":"forever"}`, `passive.cooldown: duration "forever"`},
		{"cooldown too long", `"passive":{"cooldown":"2h"}`, `passive.cooldown: 2h0m0s`},
		{"unknown field", `"lbb":"ip_hash"`, `unknown field "lbb"`},
		{"unknown health field", `"health":{"intervall":"5s"}`, `unknown field "intervall"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"new1",`+tt.routing+`}`)
			wantError(t, code, hdr, resp, 400, tt.contains)
			code, hdr, resp = e.doJSON(t, "PUT", "/v1/services/shop", acme, `{`+tt.routing+`}`)
			wantError(t, code, hdr, resp, 400, tt.contains)
		})
	}
	if _, _, err := store.GetService(context.Background(), e.st, "new1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a bad body created a service: %v", err)
	}
	if sv, _ := storedService(t, e, "shop"); sv.Protocol != model.ProtoHTTP || len(sv.Upstreams) != 0 || sv.LB != "" || sv.Health != nil || sv.Passive != nil {
		t.Errorf("bad bodies changed shop: %+v", sv)
	}
	for _, tt := range []struct{ name, body, contains string }{
		{"empty", "", "empty body"},
		{"not json", "name=x", "not valid JSON"},
		{"array", "[]", "JSON object"},
		{"trailing", `{"name":"x1"} {}`, "data after the JSON object"},
		{"too large", `{"name":"` + strings.Repeat("a", 70<<10) + `"}`, "larger than"},
	} {
		code, hdr, resp := e.doJSON(t, "POST", "/v1/services", acme, tt.body)
		wantError(t, code, hdr, resp, 400, tt.contains)
	}
}

func manyUpstreams(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"url":"http://10.0.%d.%d:80"}`, i/250, i%250+1)
	}
	return b.String()
}

func TestCheckUpstream(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	body := func(name string) string {
		return `{"name":"` + name + `","upstreams":[{"url":"http://[2001:db8::10]:8080"},{"url":"http://127.0.0.1:9000"}]}`
	}

	// nil: no direct upstream at all, but agent-only services are fine.
	e.srv.CheckUpstream = nil
	e.h = e.srv.Handler()
	code, hdr, resp := e.doJSON(t, "POST", "/v1/services", acme, body("s1"))
	wantError(t, code, hdr, resp, 400, "upstreams[0].url: direct upstreams are not allowed on this gateway; the operator lists allowed networks with --upstream-allow")
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"s1"}`); code != 201 {
		t.Fatalf("agent-only service with CheckUpstream nil: %d %s", code, resp)
	}
	code, hdr, resp = e.doJSON(t, "PUT", "/v1/services/s1", acme, `{"upstreams":[{"url":"http://10.0.0.1:80"}]}`)
	wantError(t, code, hdr, resp, 400, "upstreams[0].url: direct upstreams are not allowed")

	// Refusing loopback: the error names the field and carries the reason.
	var mu sync.Mutex
	var seen []model.ParsedUpstream
	e.srv.CheckUpstream = func(p model.ParsedUpstream) error {
		mu.Lock()
		seen = append(seen, p)
		mu.Unlock()
		if p.Addr.IsLoopback() {
			return fmt.Errorf("%s is not in the allowed networks (2001:db8::/32)", p.Addr)
		}
		return nil
	}
	e.h = e.srv.Handler()
	code, hdr, resp = e.doJSON(t, "POST", "/v1/services", acme, body("s2"))
	wantError(t, code, hdr, resp, 400, "upstreams[1].url: 127.0.0.1 is not in the allowed networks (2001:db8::/32)")
	if len(seen) != 2 || seen[0].Scheme != "http" || seen[0].Host != "2001:db8::10" || seen[0].Port != 8080 || !seen[0].Addr.Is6() || seen[1].Port != 9000 {
		t.Errorf("CheckUpstream saw %+v", seen)
	}
	if _, _, err := store.GetService(context.Background(), e.st, "s2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused upstream stored: %v", err)
	}

	// Accepting.
	code, _, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"s2","upstreams":[{"url":"http://[2001:db8::10]:8080"}]}`)
	if code != 201 {
		t.Fatalf("allowed upstream: %d %s", code, resp)
	}
	if sv, _ := storedService(t, e, "s2"); len(sv.Upstreams) != 1 {
		t.Errorf("stored %+v", sv)
	}
}

func TestServiceOwnership(t *testing.T) {
	e, acme, beta := newServiceEnv(t)
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop","upstreams":[{"url":"http://10.0.0.1:80"}]}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	before, rev := storedService(t, e, "shop")
	for _, tt := range []struct{ method, body string }{
		{"GET", ""},
		{"PUT", `{"upstreams":[{"url":"http://10.6.6.6:80"}]}`},
		{"DELETE", ""},
	} {
		code, hdr, resp := e.doJSON(t, tt.method, "/v1/services/shop", beta, tt.body)
		wantError(t, code, hdr, resp, 403, `service "shop" belongs to another tenant`)
	}
	after, arev := storedService(t, e, "shop")
	if arev != rev || !reflect.DeepEqual(before, after) {
		t.Errorf("another tenant changed shop: %+v at %d", after, arev)
	}
	// Nor does it see the service in its list.
	_, _, resp := e.doJSON(t, "GET", "/v1/services", beta, "")
	if strings.TrimSpace(string(resp)) != "[]" {
		t.Errorf("beta lists %s", resp)
	}
	// Missing services: 404 for everyone.
	for _, m := range []string{"GET", "DELETE"} {
		code, hdr, resp := e.doJSON(t, m, "/v1/services/none", beta, "")
		wantError(t, code, hdr, resp, 404, `service "none" does not exist`)
	}
	code, hdr, resp := e.doJSON(t, "PUT", "/v1/services/none", beta, `{}`)
	wantError(t, code, hdr, resp, 404, `service "none" does not exist`)
	code, hdr, resp = e.doJSON(t, "GET", "/v1/services/Bad_Name", beta, "")
	wantError(t, code, hdr, resp, 400, "invalid name")

	// The owner and the admin read it.
	for _, tok := range []string{acme, adminToken} {
		code, hdr, resp := e.doJSON(t, "GET", "/v1/services/shop", tok, "")
		if code != 200 || hdr.Get("ETag") != fmt.Sprintf(`"%d"`, rev) {
			t.Fatalf("GET: %d %v %s", code, hdr, resp)
		}
		if d := detailOf(t, resp); d.Tenant != "acme" || len(d.Upstreams) != 1 || !d.Stored {
			t.Errorf("GET: %+v", d)
		}
	}
	// A quick tunnel: the admin sees it, unstored; a tenant does not.
	e.attach(t, "quick-otter-42", "", "q", false)
	code, _, resp = e.doJSON(t, "GET", "/v1/services/quick-otter-42", adminToken, "")
	if d := detailOf(t, resp); code != 200 || d.Stored || d.Tenant != "" || d.Agents != 1 {
		t.Errorf("admin GET of a quick tunnel: %d %s", code, resp)
	}
	code, hdr, resp = e.doJSON(t, "GET", "/v1/services/quick-otter-42", acme, "")
	wantError(t, code, hdr, resp, 404, "does not exist")
	code, hdr, resp = e.doJSON(t, "DELETE", "/v1/services/quick-otter-42", adminToken, "")
	wantError(t, code, hdr, resp, 404, "quick tunnel")
}

func TestPutService(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop","upstreams":[{"url":"http://10.0.0.1:80"}],"lb":"ip_hash","health":{}}`)
	if code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	orig, rev := storedService(t, e, "shop")
	e.srv.Now = func() time.Time { return time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC) }
	e.h = e.srv.Handler()

	// Replaces every routing setting; name, tenant and created are kept.
	code, hdr, resp := e.doJSON(t, "PUT", "/v1/services/shop", acme, `{"protocol":"tls","upstreams":[{"url":"tls://[2001:db8::1]:443","weight":2}],"passive":{"max_failures":-1}}`)
	if code != 200 {
		t.Fatalf("PUT: %d %s", code, resp)
	}
	sv, nrev := storedService(t, e, "shop")
	want := model.Service{Name: "shop", Tenant: "acme", Created: orig.Created, Protocol: model.ProtoTLS,
		Upstreams: []model.Upstream{{URL: "tls://[2001:db8::1]:443", Weight: 2}}, Passive: &model.PassiveHealth{MaxFailures: -1}}
	if !reflect.DeepEqual(sv, want) {
		t.Errorf("after PUT %+v\nwant      %+v", sv, want)
	}
	if nrev <= rev || hdr.Get("ETag") != fmt.Sprintf(`"%d"`, nrev) {
		t.Errorf("revision %d -> %d, ETag %s", rev, nrev, hdr.Get("ETag"))
	}
	if d := detailOf(t, resp); !reflect.DeepEqual(d.Service, want) || d.URL == "" {
		t.Errorf("PUT answered %+v", d)
	}

	// The admin may change any service; name and tenant may be repeated, not changed.
	if code, _, resp := e.doJSON(t, "PUT", "/v1/services/shop", adminToken, `{"name":"shop","tenant":"acme"}`); code != 200 {
		t.Errorf("admin PUT: %d %s", code, resp)
	}
	code, hdr, resp = e.doJSON(t, "PUT", "/v1/services/shop", acme, `{"name":"shop2"}`)
	wantError(t, code, hdr, resp, 400, `name: "shop2" is not the name in the path ("shop")`)
	code, hdr, resp = e.doJSON(t, "PUT", "/v1/services/shop", adminToken, `{"tenant":"beta"}`)
	wantError(t, code, hdr, resp, 400, `tenant: "beta" is not the owner ("acme")`)
	if sv, _ := storedService(t, e, "shop"); sv.Tenant != "acme" || !sv.Created.Equal(orig.Created) {
		t.Errorf("owner or creation time changed: %+v", sv)
	}

	// If-Match: a stale revision is refused, the current one applies.
	_, hdr, _ = e.doJSON(t, "GET", "/v1/services/shop", acme, "")
	etag := hdr.Get("ETag")
	put := func(ifMatch, body string) (int, http.Header, []byte) {
		req := httptest.NewRequest("PUT", "/v1/services/shop", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+acme)
		req.Header.Set("If-Match", ifMatch)
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, req)
		return rec.Code, rec.Header(), rec.Body.Bytes()
	}
	code, hdr, resp = put(fmt.Sprintf(`"%d"`, rev), `{"lb":"round_robin"}`)
	wantError(t, code, hdr, resp, 412, "changed since revision")
	code, hdr, resp = put("soon", `{}`)
	wantError(t, code, hdr, resp, 400, "If-Match")
	if code, hdr, resp := put(etag, `{"lb":"round_robin"}`); code != 200 || hdr.Get("ETag") == etag {
		t.Errorf("PUT with the current ETag: %d %s", code, resp)
	}
	if code, _, resp := put("*", `{"lb":"least_request"}`); code != 200 {
		t.Errorf("PUT with If-Match *: %d %s", code, resp)
	}
}

// TestPutServiceConcurrent: concurrent PUTs all succeed (the store's
// compare-and-swap retries), and the record is one of them whole.
func TestPutServiceConcurrent(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop"}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	const n = 8
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = e.doJSON(t, "PUT", "/v1/services/shop", acme, fmt.Sprintf(`{"upstreams":[{"url":"http://10.0.0.%d:80","weight":%d}]}`, i+1, i+1))
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Errorf("PUT %d: %d", i, c)
		}
	}
	sv, _ := storedService(t, e, "shop")
	if len(sv.Upstreams) != 1 || sv.Upstreams[0].URL != fmt.Sprintf("http://10.0.0.%d:80", sv.Upstreams[0].Weight) {
		t.Errorf("after concurrent PUTs: %+v", sv.Upstreams)
	}
}

func TestDeleteService(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop"}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	_, rev := storedService(t, e, "shop")
	// An agent connected for it keeps its tunnel.
	e.table.Upsert("shop", "acme", model.ProtoHTTP, true)
	sess := &fakeSession{}
	if err := e.table.Attach("shop", &route.Agent{ID: "a1", Tenant: "acme", Services: []string{"shop"}, Session: sess, Connected: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if code, _, resp := e.doJSON(t, "PUT", "/v1/services/shop", acme, `{"lb":"ip_hash"}`); code != 200 {
		t.Fatalf("PUT: %d %s", code, resp)
	}
	req := httptest.NewRequest("DELETE", "/v1/services/shop", nil)
	req.Header.Set("Authorization", "Bearer "+acme)
	req.Header.Set("If-Match", fmt.Sprintf(`"%d"`, rev))
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	wantError(t, rec.Code, rec.Header(), rec.Body.Bytes(), 412, "changed since revision")

	code, _, resp := e.doJSON(t, "DELETE", "/v1/services/shop", acme, "")
	if code != http.StatusNoContent || len(resp) != 0 {
		t.Fatalf("DELETE: %d %s", code, resp)
	}
	if _, _, err := store.GetService(context.Background(), e.st, "shop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after DELETE: %v", err)
	}
	if sess.closed.Load() {
		t.Error("DELETE closed the agent's session")
	}
	code, hdr, resp := e.doJSON(t, "DELETE", "/v1/services/shop", acme, "")
	wantError(t, code, hdr, resp, 404, "does not exist")
	// The admin deletes any tenant's service.
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"blog"}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	if code, _, resp := e.doJSON(t, "DELETE", "/v1/services/blog", adminToken, ""); code != 204 {
		t.Errorf("admin DELETE: %d %s", code, resp)
	}
}

func TestListServicesStored(t *testing.T) {
	e, acme, beta := newServiceEnv(t)
	// Stored through the API, not yet in the table (the gateway's watch
	// adds them): listed with their upstream count.
	for _, b := range []struct{ tok, body string }{
		{acme, `{"name":"shop","upstreams":[{"url":"http://10.0.0.1:80"},{"url":"http://10.0.0.2:80"}]}`},
		{beta, `{"name":"news","protocol":"tls"}`},
	} {
		if code, _, resp := e.doJSON(t, "POST", "/v1/services", b.tok, b.body); code != 201 {
			t.Fatalf("create: %d %s", code, resp)
		}
	}
	e.attach(t, "quick-otter-42", "", "q", false)
	list := func(tok string) []api.ServiceInfo {
		t.Helper()
		code, _, resp := e.doJSON(t, "GET", "/v1/services", tok, "")
		var out []api.ServiceInfo
		if err := json.Unmarshal(resp, &out); err != nil || code != 200 {
			t.Fatalf("list: %d %s", code, resp)
		}
		return out
	}
	all := list(adminToken)
	if len(all) != 3 || all[0].Name != "news" || all[0].Protocol != "tls" || all[1].Name != "quick-otter-42" || all[1].Agents != 1 ||
		all[2].Name != "shop" || all[2].Upstreams != 2 || all[2].Tenant != "acme" {
		t.Errorf("admin list %+v", all)
	}
	if a := list(acme); len(a) != 1 || a[0].Name != "shop" {
		t.Errorf("acme list %+v", a)
	}
	// In the table too: one entry, with both the agents and the upstream count.
	e.attach(t, "shop", "acme", "a1", false)
	e.table.Upsert("shop", "acme", model.ProtoHTTP, true)
	if a := list(acme); len(a) != 1 || a[0].Agents != 1 || a[0].Upstreams != 2 {
		t.Errorf("acme list with an agent %+v", a)
	}
}

// TestServiceClientRoundTrip: what GET answers, turned back into a request
// with RequestOf, is accepted by PUT unchanged (every stored field has a
// place in the request body).
func TestServiceClientRoundTrip(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	ts := httptest.NewServer(e.h)
	defer ts.Close()
	cl := &api.Client{Addr: ts.URL, Token: acme}
	ctx := t.Context()
	req := api.ServiceRequest{
		Name: "shop", Protocol: model.ProtoHTTP,
		Upstreams: []model.Upstream{{URL: "https://[2001:db8::5]:8443", Weight: 7, TLSInsecure: true, TLSServerName: "x.internal"}},
		LB:        model.LBIPHash,
		Health: &model.HealthCheck{Type: "http", Path: "/h", Status: 200, Interval: model.Duration(2 * time.Second),
			Timeout: model.Duration(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 9},
		Passive: &model.PassiveHealth{MaxFailures: 2, Cooldown: model.Duration(10 * time.Second), Ignore5xx: true},
	}
	var created api.ServiceDetail
	if err := cl.Do(ctx, "POST", "/v1/services", req, &created); err != nil {
		t.Fatal(err)
	}
	var got api.ServiceDetail
	hdr, err := cl.DoHeader(ctx, "GET", "/v1/services/shop", nil, nil, &got)
	if err != nil || hdr.Get("ETag") == "" {
		t.Fatalf("GET: %v, ETag %q", err, hdr.Get("ETag"))
	}
	var put api.ServiceDetail
	ifMatch := http.Header{"If-Match": {hdr.Get("ETag")}}
	if _, err := cl.DoHeader(ctx, "PUT", "/v1/services/shop", ifMatch, api.RequestOf(got.Service), &put); err != nil {
		t.Fatalf("PUT of RequestOf(GET): %v", err)
	}
	// The same If-Match again: the record has changed since.
	var ae *api.APIError
	if _, err := cl.DoHeader(ctx, "PUT", "/v1/services/shop", ifMatch, api.RequestOf(got.Service), nil); !errors.As(err, &ae) || ae.Status != 412 {
		t.Errorf("PUT with a stale If-Match: %v, want 412", err)
	}
	if !reflect.DeepEqual(put.Service, got.Service) || !reflect.DeepEqual(created.Service, got.Service) {
		t.Errorf("round trip changed the service:\n%+v\n%+v", got.Service, put.Service)
	}
	// Every field of model.Service but Created has a field in ServiceRequest.
	st := reflect.TypeOf(model.Service{})
	rt := reflect.TypeOf(api.ServiceRequest{})
	for i := 0; i < st.NumField(); i++ {
		if f := st.Field(i); f.Name != "Created" {
			if _, ok := rt.FieldByName(f.Name); !ok {
				t.Errorf("ServiceRequest lacks model.Service's field %s", f.Name)
			}
		}
	}
	if err := cl.Do(ctx, "DELETE", "/v1/services/shop", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func FuzzServiceBody(f *testing.F) {
	for _, s := range []string{
		`{"name":"shop"}`, `{"name":"shop","tenant":"acme"}`, ``, `{`, `[]`, `null`, `{"name":1}`,
		`{"name":"shop","protocol":"h2c","upstreams":[{"url":"h2c://[2001:db8::1]:50051","weight":3}]}`,
		`{"name":"s","upstreams":[{"url":"https://a.example","tls_insecure":true,"tls_server_name":"b"}],"lb":"ip_hash"}`,
		`{"name":"s","health":{"type":"tcp","interval":"1s","timeout":"100ms","healthy_threshold":1,"unhealthy_threshold":2}}`,
		`{"name":"s","health":{"interval":5}}`, `{"name":"s","health":{"interval":"x"}}`, `{"name":"s","health":null}`,
		`{"name":"s","passive":{"max_failures":-1,"cooldown":"30s","ignore_5xx":true}}`, `{"name":"s","passive":{"cooldown":null}}`,
		`{"name":"s","upstreams":[{"url":"http://[fe80::1%25eth0]:80"}]}`, `{"name":"s","upstreams":[null]}`,
		`{"name":"s","lb":"fastest"}`, `{"name":"s"} x`, `{"name":"s","health":"x"}`, `{"upstreams":{}}`,
	} {
		f.Add([]byte(s))
	}
	e, acme, _ := newServiceEnv(f)
	e.srv.CheckUpstream = func(p model.ParsedUpstream) error {
		if p.Addr.IsLoopback() {
			return errors.New("loopback refused")
		}
		return nil
	}
	e.h = e.srv.Handler()
	if code, _, resp := e.do(f, "POST", "/v1/services", acme, strings.NewReader(`{"name":"fixed"}`)); code != 201 {
		f.Fatalf("create: %d %s", code, resp)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, r := range []struct{ method, path, tok string }{
			{"POST", "/v1/services", acme},
			{"POST", "/v1/services", adminToken},
			{"PUT", "/v1/services/fixed", acme},
		} {
			code, hdr, resp := e.do(t, r.method, r.path, r.tok, bytes.NewReader(body))
			if hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
			}
			switch {
			case code == 200 || code == 201:
				var d api.ServiceDetail
				if err := json.Unmarshal(resp, &d); err != nil {
					t.Fatalf("%s %d with %q", r.method, code, resp)
				}
				if err := d.Service.ValidateRouting(); err != nil || model.ValidateName(d.Name) != nil || !d.Protocol.Valid() {
					t.Fatalf("%s %q accepted an invalid service %+v: %v", r.method, body, d.Service, err)
				}
				for _, u := range d.Upstreams {
					if p, _ := model.ParseUpstreamURL(u.URL, d.Protocol); p.Addr.IsLoopback() {
						t.Fatalf("%s %q accepted a refused upstream %s", r.method, body, u.URL)
					}
				}
			case code >= 400 && code < 500:
				var ae api.Error
				if err := json.Unmarshal(resp, &ae); err != nil || ae.Error == "" {
					t.Fatalf("%s %d with %q", r.method, code, resp)
				}
			default:
				t.Fatalf("%s %s %q: status %d (%s), want 2xx or 4xx", r.method, r.path, body, code, resp)
			}
		}
	})
}

// TestUpstreamHealthShown: a service's detail lists each upstream with its
// live state as the gateway's table sees it.
func TestUpstreamHealthShown(t *testing.T) {
	e, acme, _ := newServiceEnv(t)
	code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"shop","upstreams":[{"url":"http://[2001:db8::10]:8080","weight":2},{"url":"http://[2001:db8::11]:8080"}]}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, resp)
	}
	sv, _ := storedService(t, e, "shop")
	rs := e.table.Configure(sv)
	for range 5 {
		rs.Upstreams()[1].Report(false) // ejected after 5 failed requests
	}
	code, _, resp = e.doJSON(t, "GET", "/v1/services/shop", acme, "")
	if code != http.StatusOK {
		t.Fatalf("get: %d %s", code, resp)
	}
	got := detailOf(t, resp).UpstreamHealth
	want := []api.UpstreamState{
		{Upstream: "http://[2001:db8::10]:8080", Kind: "direct", Weight: 2, State: "healthy"},
		{Upstream: "http://[2001:db8::11]:8080", Kind: "direct", Weight: 1, State: "ejected"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("upstream_health %+v, want %+v", got, want)
	}
}
