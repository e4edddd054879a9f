package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// portRange is the range of newPortEnv's server.
var portRange = model.PortRange{First: 20000, Last: 20009}

// fakePorts is an OpenPort hook that records the ports opened and fails
// for the ports ("tcp/20000") in fail.
type fakePorts struct {
	mu     sync.Mutex
	opened []model.Port    // guarded by mu
	fail   map[string]bool // "tcp/20000"; guarded by mu
}

func (f *fakePorts) open(p model.Port) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[p.String()] {
		return "", errors.New("bind: address already in use")
	}
	f.opened = append(f.opened, p)
	return "gw.example:" + strconv.Itoa(p.Number), nil
}

func (f *fakePorts) failOn(port string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		f.fail = map[string]bool{}
	}
	f.fail[port] = true
}

func (f *fakePorts) last() model.Port {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.opened) == 0 {
		return model.Port{}
	}
	return f.opened[len(f.opened)-1]
}

// newPortEnv is newServiceEnv with public ports 20000-20009, at most quota
// per tenant, opened by the returned fakePorts.
func newPortEnv(t testing.TB, quota int) (e *env, fp *fakePorts, acme, beta string) {
	t.Helper()
	e, acme, beta = newServiceEnv(t)
	fp = &fakePorts{}
	e.srv.PortRange = portRange
	e.srv.MaxPortsPerTenant = quota
	e.srv.OpenPort = fp.open
	e.srv.PortAddr = func(n int) string { return "gw.example:" + strconv.Itoa(n) }
	e.h = e.srv.Handler()
	return e, fp, acme, beta
}

func portOf(t *testing.T, body []byte) api.PortDetail {
	t.Helper()
	var d api.PortDetail
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return d
}

func storedPorts(t *testing.T, e *env) []model.Port {
	t.Helper()
	ps, err := store.ListPorts(context.Background(), e.st)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func noService(t *testing.T, e *env, name string) {
	t.Helper()
	if _, _, err := store.GetService(context.Background(), e.st, name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("service %s is stored (%v), want it gone", name, err)
	}
}

// TestCreateForwardedService: creating a tcp or udp service allocates its
// public port and opens it before answering; the answer's URL is its
// HOST:PORT.
func TestCreateForwardedService(t *testing.T) {
	e, fp, acme, _ := newPortEnv(t, 0)
	code, hdr, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"db","protocol":"tcp","proxy_protocol":2}`)
	if code != http.StatusCreated {
		t.Fatalf("create tcp: %d %s", code, resp)
	}
	d := detailOf(t, resp)
	if len(d.Ports) != 1 || !portRange.Contains(d.Ports[0].Number) || d.Ports[0].Proto != model.PortTCP ||
		d.Ports[0].Service != "db" || d.Ports[0].Tenant != "acme" {
		t.Fatalf("ports %+v", d.Ports)
	}
	n := d.Ports[0].Number
	addr := "gw.example:" + strconv.Itoa(n)
	if d.URL != addr || d.Ports[0].Address != addr || d.ProxyProtocol != 2 || hdr.Get("Location") != "/v1/services/db" {
		t.Errorf("created %+v", d)
	}
	if got := fp.last(); got != d.Ports[0].Port {
		t.Errorf("opened %+v, want %+v", got, d.Ports[0].Port)
	}
	if ps := storedPorts(t, e); len(ps) != 1 || ps[0] != d.Ports[0].Port {
		t.Errorf("stored ports %+v", ps)
	}
	if sv, _ := storedService(t, e, "db"); sv.ProxyProtocol != 2 || sv.Protocol != model.ProtoTCP {
		t.Errorf("stored %+v", sv)
	}
	// GET shows the same.
	code, _, resp = e.doJSON(t, "GET", "/v1/services/db", acme, "")
	if g := detailOf(t, resp); code != 200 || g.URL != addr || len(g.Ports) != 1 || g.Ports[0] != d.Ports[0] {
		t.Errorf("GET: %d %s", code, resp)
	}

	// A udp service with the port it asks for.
	code, _, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"resolver","protocol":"udp","port":20007}`)
	if d := detailOf(t, resp); code != 201 || len(d.Ports) != 1 || d.Ports[0].Number != 20007 || d.Ports[0].Proto != model.PortUDP || d.URL != "gw.example:20007" {
		t.Fatalf("create udp: %d %s", code, resp)
	}
	// Other protocols get no port; their URL is still https.
	code, _, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"web","proxy_protocol":1}`)
	if d := detailOf(t, resp); code != 201 || len(d.Ports) != 0 || d.URL != "https://web.localhost:8443" || d.ProxyProtocol != 1 {
		t.Fatalf("create http: %d %s", code, resp)
	}

	// Deleting a service releases its port.
	if code, _, resp := e.doJSON(t, "DELETE", "/v1/services/db", acme, ""); code != 204 {
		t.Fatalf("delete: %d %s", code, resp)
	}
	if ps := storedPorts(t, e); len(ps) != 1 || ps[0].Number != 20007 {
		t.Errorf("after delete, ports %+v", ps)
	}
}

// TestCreateForwardedServiceRefused: when the port cannot be had, the
// service is not created either.
func TestCreateForwardedServiceRefused(t *testing.T) {
	e, fp, acme, beta := newPortEnv(t, 2)
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", beta, `{"name":"bdb","protocol":"tcp","port":20001}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	fp.failOn("tcp/20009")
	tests := []struct {
		name, body string
		code       int
		contains   string
	}{
		{"outside the range", `{"name":"db","protocol":"tcp","port":22}`, 400, "port: allocate port tcp/22: invalid port request: port 22 is outside the gateway's range 20000-20009"},
		{"not a port", `{"name":"db","protocol":"tcp","port":70000}`, 400, "port: 70000 not accepted"},
		{"taken", `{"name":"db","protocol":"tcp","port":20001}`, 409, "port taken"},
		{"cannot open", `{"name":"db","protocol":"tcp","port":20009}`, 503, "open tcp/20009: bind: address already in use"},
		{"udp with proxy protocol", `{"name":"db","protocol":"udp","proxy_protocol":1}`, 400, "proxy_protocol: not available for udp services"},
		{"tcp direct upstream scheme", `{"name":"db","protocol":"tcp","upstreams":[{"url":"udp://10.0.0.1:53"}]}`, 400, "upstreams[0].url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, resp := e.doJSON(t, "POST", "/v1/services", acme, tt.body)
			wantError(t, code, hdr, resp, tt.code, tt.contains)
			noService(t, e, "db")
		})
	}
	if ps := storedPorts(t, e); len(ps) != 1 || ps[0].Tenant != "beta" {
		t.Errorf("refused creations left ports %+v", ps)
	}

	// Quota: two ports per tenant.
	for _, n := range []string{"a1", "a2"} {
		if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"`+n+`","protocol":"udp"}`); code != 201 {
			t.Fatalf("create %s: %d %s", n, code, resp)
		}
	}
	code, hdr, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"a3","protocol":"tcp"}`)
	wantError(t, code, hdr, resp, 403, "quota is 2")
	noService(t, e, "a3")

	// Range full: every udp port held (quota off).
	e.srv.MaxPortsPerTenant = 0
	for i := 0; i < portRange.Size()-2; i++ {
		if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, fmt.Sprintf(`{"name":"u%d","protocol":"udp"}`, i)); code != 201 {
			t.Fatalf("create u%d: %d %s", i, code, resp)
		}
	}
	code, hdr, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"full","protocol":"udp"}`)
	wantError(t, code, hdr, resp, 409, "are held")
	noService(t, e, "full")

	// No OpenPort: no tcp or udp services at all.
	e.srv.OpenPort = nil
	code, hdr, resp = e.doJSON(t, "POST", "/v1/services", acme, `{"name":"db","protocol":"tcp"}`)
	wantError(t, code, hdr, resp, 400, `protocol: "tcp" not accepted: this gateway forwards no public ports`)
	noService(t, e, "db")
}

// TestPutForwardedService: a PUT keeps a service's ports consistent.
func TestPutForwardedService(t *testing.T) {
	e, _, acme, _ := newPortEnv(t, 0)
	for _, b := range []string{
		`{"name":"db","protocol":"tcp","port":20002}`, `{"name":"resolver","protocol":"udp"}`,
		`{"name":"web"}`, `{"name":"pass","protocol":"tls"}`,
	} {
		if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, b); code != 201 {
			t.Fatalf("create %s: %d %s", b, code, resp)
		}
	}
	if code, _, resp := e.doJSON(t, "POST", "/v1/ports", acme, `{"proto":"tcp","port":20005,"service":"pass"}`); code != 201 {
		t.Fatalf("port for tls: %d %s", code, resp)
	}
	for _, tt := range []struct{ name, path, body, contains string }{
		{"tcp to http", "db", `{"protocol":"http"}`, "protocol: a tcp service cannot become http, as its public port goes with its protocol; delete and create the service again"},
		{"tcp to tls", "db", `{"protocol":"tls"}`, "delete and create the service again"},
		{"tcp to udp", "db", `{"protocol":"udp"}`, "delete and create the service again"},
		{"udp to tcp", "resolver", `{"protocol":"tcp"}`, "delete and create the service again"},
		{"http to udp", "web", `{"protocol":"udp"}`, "protocol: a http service cannot become udp"},
		{"tls with a tcp port to http", "pass", `{"protocol":"http"}`, "protocol: the service holds tcp/20005, which cannot forward to a http service; remove the port first"},
		{"port not held", "db", `{"protocol":"tcp","port":20003}`, "port: the service does not hold tcp/20003"},
		{"port for http", "web", `{"port":20003}`, "port: only tcp and udp services"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, resp := e.doJSON(t, "PUT", "/v1/services/"+tt.path, acme, tt.body)
			wantError(t, code, hdr, resp, 400, tt.contains)
		})
	}
	// Allowed: same protocol, other settings; the port it holds; tls to
	// tcp is refused but http to tls is fine.
	code, _, resp := e.doJSON(t, "PUT", "/v1/services/db", acme, `{"protocol":"tcp","port":20002,"proxy_protocol":1}`)
	if d := detailOf(t, resp); code != 200 || d.ProxyProtocol != 1 || d.URL != "gw.example:20002" || len(d.Ports) != 1 {
		t.Errorf("PUT db: %d %s", code, resp)
	}
	if code, _, resp := e.doJSON(t, "PUT", "/v1/services/web", acme, `{"protocol":"tls"}`); code != 200 {
		t.Errorf("PUT web to tls: %d %s", code, resp)
	}
	if ps := storedPorts(t, e); len(ps) != 3 {
		t.Errorf("ports %+v", ps)
	}
}

// TestPorts covers /v1/ports: list, add and remove, scoped by tenant.
func TestPorts(t *testing.T) {
	e, fp, acme, beta := newPortEnv(t, 0)
	for _, c := range []struct{ tok, body string }{
		{acme, `{"name":"db","protocol":"tcp","port":20000}`},
		{acme, `{"name":"resolver","protocol":"udp","port":20000}`},
		{acme, `{"name":"pass","protocol":"tls"}`},
		{acme, `{"name":"web"}`},
		{beta, `{"name":"bdb","protocol":"tcp","port":20001}`},
	} {
		if code, _, resp := e.doJSON(t, "POST", "/v1/services", c.tok, c.body); code != 201 {
			t.Fatalf("create %s: %d %s", c.body, code, resp)
		}
	}

	// Add: a second port for a service, an SNI port, as tenant and admin.
	code, hdr, resp := e.doJSON(t, "POST", "/v1/ports", acme, `{"proto":"tcp","port":20005,"service":"db"}`)
	if p := portOf(t, resp); code != 201 || p.Number != 20005 || p.Service != "db" || p.Tenant != "acme" || p.Address != "gw.example:20005" ||
		hdr.Get("Location") != "/v1/ports/tcp/20005" || fp.last() != p.Port {
		t.Fatalf("add: %d %v %s", code, hdr, resp)
	}
	code, _, resp = e.doJSON(t, "POST", "/v1/ports", acme, `{"proto":"tcp","port":20006,"sni":true}`)
	if p := portOf(t, resp); code != 201 || !p.SNI || p.Service != "" || p.Tenant != "acme" {
		t.Fatalf("add sni: %d %s", code, resp)
	}
	code, _, resp = e.doJSON(t, "POST", "/v1/ports", adminToken, `{"proto":"tcp","port":20007,"service":"pass","tenant":"acme"}`)
	if p := portOf(t, resp); code != 201 || p.Number != 20007 || p.Service != "pass" {
		t.Fatalf("admin add: %d %s", code, resp)
	}
	// The same again by its owner: 200, nothing new.
	code, _, resp = e.doJSON(t, "POST", "/v1/ports", acme, `{"proto":"tcp","port":20005,"service":"db"}`)
	if p := portOf(t, resp); code != 200 || p.Number != 20005 {
		t.Errorf("add again: %d %s", code, resp)
	}
	// A service's detail lists its ports.
	_, _, resp = e.doJSON(t, "GET", "/v1/services/db", acme, "")
	if d := detailOf(t, resp); len(d.Ports) != 2 || d.URL != "gw.example:20000" || d.Ports[1].Number != 20005 {
		t.Errorf("db detail ports %+v url %s", d.Ports, d.URL)
	}

	fp.failOn("tcp/20008")
	for _, tt := range []struct {
		name, tok, body string
		code            int
		contains        string
	}{
		{"bad proto", acme, `{"proto":"sctp","service":"db"}`, 400, `proto: "sctp" not accepted; use tcp or udp`},
		{"no proto", acme, `{"service":"db"}`, 400, `proto: "" not accepted`},
		{"bad number", acme, `{"proto":"tcp","port":70000,"service":"db"}`, 400, "port: port 70000 not accepted; use 1-65535"},
		{"negative number", acme, `{"proto":"tcp","port":-1,"service":"db"}`, 400, "port: port -1"},
		{"outside the range", acme, `{"proto":"tcp","port":80,"service":"db"}`, 400, "outside the gateway's range 20000-20009"},
		{"sni udp", acme, `{"proto":"udp","sni":true}`, 400, "sni: only a tcp port"},
		{"sni with service", acme, `{"proto":"tcp","sni":true,"service":"pass"}`, 400, "service: an SNI port serves all"},
		{"no service", acme, `{"proto":"tcp"}`, 400, "service: name the service"},
		{"bad service", acme, `{"proto":"tcp","service":"Bad_Name"}`, 400, `service: invalid name "Bad_Name"`},
		{"unknown service", acme, `{"proto":"tcp","service":"nope"}`, 400, `service: service "nope" does not exist`},
		{"another tenant's service", acme, `{"proto":"tcp","service":"bdb"}`, 403, `service: service "bdb" belongs to another tenant`},
		{"admin, service of another tenant", adminToken, `{"proto":"tcp","service":"bdb","tenant":"acme"}`, 400, `belongs to tenant "beta", not "acme"`},
		{"udp port for tcp", acme, `{"proto":"udp","service":"db"}`, 400, `proto: a udp port cannot forward to service "db", a tcp service`},
		{"tcp port for udp", acme, `{"proto":"tcp","service":"resolver"}`, 400, "a udp service"},
		{"port for http", acme, `{"proto":"tcp","service":"web"}`, 400, "a http service"},
		{"taken", acme, `{"proto":"tcp","port":20001,"service":"db"}`, 409, "port taken"},
		{"cannot open", acme, `{"proto":"tcp","port":20008,"service":"db"}`, 503, "open tcp/20008: bind: address already in use"},
		{"admin without tenant", adminToken, `{"proto":"tcp","service":"db"}`, 400, "tenant: the admin token must name the tenant that will own the ports"},
		{"admin, unknown tenant", adminToken, `{"proto":"tcp","sni":true,"tenant":"nobody"}`, 400, `tenant: tenant "nobody" does not exist`},
		{"tenant for another", acme, `{"proto":"tcp","sni":true,"tenant":"beta"}`, 403, `own tenant ("acme") only`},
		{"unknown field", acme, `{"proto":"tcp","sni":true,"number":20003}`, 400, `unknown field "number"`},
		{"type", acme, `{"proto":"tcp","port":"20003","service":"db"}`, 400, `field "port" must be`},
		{"sni type", acme, `{"proto":"tcp","sni":"yes"}`, 400, `field "sni" must be`},
		{"empty", acme, ``, 400, "empty body"},
		{"no token", "", `{"proto":"tcp","sni":true}`, 401, "missing bearer token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, resp := e.doJSON(t, "POST", "/v1/ports", tt.tok, tt.body)
			wantError(t, code, hdr, resp, tt.code, tt.contains)
		})
	}

	// List: sorted, scoped.
	numbers := func(tok string) []string {
		t.Helper()
		code, _, resp := e.doJSON(t, "GET", "/v1/ports", tok, "")
		var ps []api.PortDetail
		if err := json.Unmarshal(resp, &ps); code != 200 || err != nil {
			t.Fatalf("list: %d %s", code, resp)
		}
		var out []string
		for _, p := range ps {
			if p.Address != "gw.example:"+strconv.Itoa(p.Number) {
				t.Errorf("address %q of %s", p.Address, p.Port)
			}
			out = append(out, p.String()+"@"+p.Tenant)
		}
		return out
	}
	all := numbers(adminToken)
	if len(all) != 6 || !slices.IsSortedFunc(all, func(a, b string) int { return strings.Compare(a[:3], b[:3]) }) ||
		all[0] != "tcp/20000@acme" || all[1] != "tcp/20001@beta" || all[len(all)-1] != "udp/20000@acme" {
		t.Errorf("admin list %v", all)
	}
	if got := numbers(beta); !slices.Equal(got, []string{"tcp/20001@beta"}) {
		t.Errorf("beta list %v", got)
	}
	if got := numbers(acme); len(got) != 5 || slices.Contains(got, "tcp/20001@beta") {
		t.Errorf("acme list %v", got)
	}

	// Remove.
	for _, tt := range []struct {
		name, tok, path string
		code            int
		contains        string
	}{
		{"another tenant's", acme, "/v1/ports/tcp/20001", 403, "port tcp/20001 belongs to another tenant"},
		{"unknown", acme, "/v1/ports/tcp/20009", 404, "port tcp/20009 is not allocated"},
		{"unknown, admin", adminToken, "/v1/ports/udp/20009", 404, "port udp/20009 is not allocated"},
		{"bad proto", acme, "/v1/ports/sctp/20000", 400, `proto: "sctp" not accepted`},
		{"bad number", acme, "/v1/ports/tcp/x", 400, `number: "x" is not a port number`},
		{"zero", acme, "/v1/ports/tcp/0", 400, "number: port 0 not accepted"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, resp := e.doJSON(t, "DELETE", tt.path, tt.tok, "")
			wantError(t, code, hdr, resp, tt.code, tt.contains)
		})
	}
	if code, _, resp := e.doJSON(t, "DELETE", "/v1/ports/tcp/20005", acme, ""); code != 204 {
		t.Errorf("tenant remove: %d %s", code, resp)
	}
	if code, _, resp := e.doJSON(t, "DELETE", "/v1/ports/tcp/20001", adminToken, ""); code != 204 {
		t.Errorf("admin remove: %d %s", code, resp)
	}
	if got := numbers(adminToken); len(got) != 4 || slices.Contains(got, "tcp/20005@acme") || slices.Contains(got, "tcp/20001@beta") {
		t.Errorf("after remove %v", got)
	}

	// No OpenPort: no ports can be added; listing and removing still work.
	e.srv.OpenPort = nil
	code, hdr, resp = e.doJSON(t, "POST", "/v1/ports", acme, `{"proto":"tcp","sni":true}`)
	wantError(t, code, hdr, resp, 503, "this gateway forwards no public ports")
	if code, _, resp := e.doJSON(t, "DELETE", "/v1/ports/tcp/20006", acme, ""); code != 204 {
		t.Errorf("remove without OpenPort: %d %s", code, resp)
	}
}

// TestPortAddrDefault: without PortAddr, addresses use the host of the
// HTTPS address.
func TestPortAddrDefault(t *testing.T) {
	e, _, acme, _ := newPortEnv(t, 0)
	e.srv.PortAddr = nil
	if code, _, resp := e.doJSON(t, "POST", "/v1/services", acme, `{"name":"db","protocol":"tcp","port":20003}`); code != 201 {
		t.Fatalf("create: %d %s", code, resp)
	}
	_, _, resp := e.doJSON(t, "GET", "/v1/ports", acme, "")
	var ps []api.PortDetail
	if err := json.Unmarshal(resp, &ps); err != nil || len(ps) != 1 || ps[0].Address != "127.0.0.1:20003" {
		t.Errorf("list %s", resp)
	}
}

func FuzzPortBody(f *testing.F) {
	for _, s := range []string{
		`{"proto":"tcp","service":"db"}`, `{"proto":"tcp","port":20003,"service":"db"}`, `{"proto":"udp","service":"resolver"}`,
		`{"proto":"tcp","sni":true}`, `{"proto":"tcp","port":20004,"sni":true,"tenant":"acme"}`, `{"proto":"udp","sni":true}`,
		`{"proto":"tcp","sni":true,"service":"db"}`, `{"proto":"tcp","port":-1}`, `{"proto":"tcp","port":1e9}`,
		`{"proto":"TCP","service":"db"}`, `{"proto":"tcp","service":"web"}`, `{"proto":"tcp","service":"resolver"}`,
		``, `{`, `[]`, `null`, `{"proto":1}`, `{"proto":"tcp","sni":null}`, `{"proto":"tcp"} x`, `{"port":20003.5}`,
	} {
		f.Add([]byte(s))
	}
	e, _, acme, _ := newPortEnv(f, 0)
	for _, b := range []string{`{"name":"db","protocol":"tcp"}`, `{"name":"resolver","protocol":"udp"}`, `{"name":"web"}`} {
		if code, _, resp := e.do(f, "POST", "/v1/services", acme, strings.NewReader(b)); code != 201 {
			f.Fatalf("create %s: %d %s", b, code, resp)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, tok := range []string{acme, adminToken} {
			code, hdr, resp := e.do(t, "POST", "/v1/ports", tok, bytes.NewReader(body))
			if hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
			}
			switch {
			case code == 200 || code == 201:
				var p api.PortDetail
				if err := json.Unmarshal(resp, &p); err != nil {
					t.Fatalf("%d with %q", code, resp)
				}
				if !p.Proto.Valid() || !portRange.Contains(p.Number) || p.Tenant != "acme" || p.SNI == (p.Service != "") ||
					(p.SNI && p.Proto != model.PortTCP) || p.Address != "gw.example:"+strconv.Itoa(p.Number) {
					t.Fatalf("%q accepted a bad port %+v", body, p)
				}
				if p.Service == "resolver" && p.Proto != model.PortUDP || p.Service == "db" && p.Proto != model.PortTCP || p.Service == "web" {
					t.Fatalf("%q gave service %s a %s port", body, p.Service, p.Proto)
				}
				// Release it, so the range never fills.
				if code, _, resp := e.do(t, "DELETE", "/v1/ports/"+string(p.Proto)+"/"+strconv.Itoa(p.Number), tok, nil); code != 204 && code != 404 {
					t.Fatalf("release: %d %s", code, resp)
				}
			case code >= 400 && code < 500:
				var ae api.Error
				if err := json.Unmarshal(resp, &ae); err != nil || ae.Error == "" {
					t.Fatalf("%d with %q", code, resp)
				}
			default:
				t.Fatalf("POST %q: status %d (%s), want 2xx or 4xx", body, code, resp)
			}
		}
	})
}
