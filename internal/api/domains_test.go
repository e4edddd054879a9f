package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// newDomainEnv has tenants acme (service shop, tcp service db) and beta
// (service blog), a gateway domain gw.test with one public address, and a
// verifier that marks every domain verified.
func newDomainEnv(t testing.TB) (e *env, acme, beta string) {
	t.Helper()
	e, acme, beta = newServiceEnv(t)
	e.srv.Info.Domain = "gw.test"
	e.srv.PublicAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}
	e.srv.VerifyDomain = func(ctx context.Context, name string) (model.Domain, error) {
		d, _, err := store.UpdateDomain(ctx, e.st, name, func(d *model.Domain) error {
			d.ApplyCheck("", e.srv.Now(), 0)
			return nil
		})
		return d, err
	}
	e.h = e.srv.Handler()
	for tok, b := range map[string]string{acme: `{"name":"shop"}`, beta: `{"name":"blog"}`} {
		if code, _, resp := e.doJSON(t, "POST", "/v1/services", tok, b); code != 201 {
			t.Fatalf("create %s: %d %s", b, code, resp)
		}
	}
	if _, err := store.CreateService(context.Background(), e.st, model.Service{Name: "db", Tenant: "acme", Protocol: model.ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	return e, acme, beta
}

func domainOf(t *testing.T, body []byte) api.DomainDetail {
	t.Helper()
	var d api.DomainDetail
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return d
}

func TestDomainLifecycle(t *testing.T) {
	e, acme, beta := newDomainEnv(t)
	code, hdr, resp := e.doJSON(t, "POST", "/v1/domains", acme, `{"name":"www.example.test","service":"shop"}`)
	if code != 201 || hdr.Get("Location") != "/v1/domains/www.example.test" {
		t.Fatalf("add: %d %v %s", code, hdr, resp)
	}
	d := domainOf(t, resp)
	if d.State != model.DomainPending || d.Tenant != "acme" || d.Target != "shop.gw.test" || !strings.HasPrefix(d.Token, "webgw-verify=") {
		t.Fatalf("added %+v", d)
	}
	want := []api.DNSRecord{
		{Type: "TXT", Name: "_webgw-challenge.www.example.test", Value: d.Token},
		{Type: "CNAME", Name: "www.example.test", Value: "shop.gw.test"},
	}
	if len(d.Records) != 2 || d.Records[0] != want[0] || d.Records[1] != want[1] {
		t.Fatalf("records %+v, want %+v", d.Records, want)
	}
	if len(d.Alternatives) != 2 || d.Alternatives[0].Type != "A" || d.Alternatives[1].Type != "AAAA" {
		t.Fatalf("alternatives %+v", d.Alternatives)
	}
	// The same owner adding it again gets the same record.
	if code, _, resp := e.doJSON(t, "POST", "/v1/domains", acme, `{"name":"www.example.test","service":"shop"}`); code != 200 || domainOf(t, resp).Token != d.Token {
		t.Fatalf("add again: %d %s", code, resp)
	}
	// Another tenant is refused, pending or verified.
	for _, step := range []string{"pending", "verified"} {
		if code, _, resp := e.doJSON(t, "POST", "/v1/domains", beta, `{"name":"www.example.test","service":"blog"}`); code != 409 || !strings.Contains(string(resp), "another tenant") {
			t.Fatalf("%s: beta adds it: %d %s", step, code, resp)
		}
		if step == "pending" {
			code, _, resp := e.doJSON(t, "POST", "/v1/domains/www.example.test/verify", acme, "")
			if code != 200 || domainOf(t, resp).State != model.DomainVerified {
				t.Fatalf("verify: %d %s", code, resp)
			}
		}
	}
	for _, c := range []struct {
		method, path, tok string
		code              int
	}{
		{"GET", "/v1/domains/www.example.test", acme, 200},
		{"GET", "/v1/domains/www.example.test", adminToken, 200},
		{"GET", "/v1/domains/www.example.test", beta, 403},
		{"POST", "/v1/domains/www.example.test/verify", beta, 403},
		{"DELETE", "/v1/domains/www.example.test", beta, 403},
		{"GET", "/v1/domains/nope.example.test", acme, 404},
		{"GET", "/v1/domains/Bad..name", acme, 400},
		{"GET", "/v1/domains/www.example.test", "", 401},
	} {
		if code, _, resp := e.doJSON(t, c.method, c.path, c.tok, ""); code != c.code {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, code, resp, c.code)
		}
	}
	var list []api.DomainDetail
	_, _, resp = e.doJSON(t, "GET", "/v1/domains", acme, "")
	if err := json.Unmarshal(resp, &list); err != nil || len(list) != 1 || list[0].State != model.DomainVerified {
		t.Fatalf("acme list %s", resp)
	}
	_, _, resp = e.doJSON(t, "GET", "/v1/domains", beta, "")
	if err := json.Unmarshal(resp, &list); err != nil || len(list) != 0 {
		t.Fatalf("beta list %s", resp)
	}
	if code, _, resp := e.doJSON(t, "DELETE", "/v1/domains/www.example.test", acme, ""); code != 204 {
		t.Fatalf("delete: %d %s", code, resp)
	}
	// Free again: beta may take it.
	if code, _, resp := e.doJSON(t, "POST", "/v1/domains", beta, `{"name":"www.example.test","service":"blog"}`); code != 201 {
		t.Fatalf("beta adds it after: %d %s", code, resp)
	}
}

func TestDomainRefused(t *testing.T) {
	e, acme, _ := newDomainEnv(t)
	for _, c := range []struct {
		tok, body string
		code      int
		msg       string
	}{
		{acme, `{"name":"shop.gw.test","service":"shop"}`, 400, "gateway's own domain"},
		{acme, `{"name":"gw.test","service":"shop"}`, 400, "gateway's own domain"},
		{acme, `{"name":"WWW.example.test","service":"shop"}`, 400, "name: invalid domain name"},
		{acme, `{"name":"example","service":"shop"}`, 400, "one label"},
		{acme, `{"name":"www.example.test"}`, 400, "service: name the service"},
		{acme, `{"name":"www.example.test","service":"blog"}`, 403, "another tenant"},
		{acme, `{"name":"www.example.test","service":"nope"}`, 400, "does not exist"},
		{acme, `{"name":"www.example.test","service":"db"}`, 400, "tcp service"},
		{acme, `{"name":"www.example.test","service":"shop","tenant":"beta"}`, 403, "tenant:"},
		{adminToken, `{"name":"www.example.test","service":"shop"}`, 400, "tenant: the admin token"},
		{acme, `{"name":"www.example.test","service":"shop","token":"x"}`, 400, "token"},
		{acme, `{"name":1}`, 400, "name"},
	} {
		code, _, resp := e.doJSON(t, "POST", "/v1/domains", c.tok, c.body)
		if code != c.code || !strings.Contains(string(resp), c.msg) {
			t.Errorf("%s: %d %s, want %d with %q", c.body, code, resp, c.code, c.msg)
		}
	}
	if code, _, resp := e.doJSON(t, "POST", "/v1/domains", adminToken, `{"name":"www.example.test","service":"shop","tenant":"acme"}`); code != 201 {
		t.Fatalf("admin adds for acme: %d %s", code, resp)
	}
}

func FuzzDomainBody(f *testing.F) {
	for _, s := range []string{
		`{"name":"www.example.test","service":"shop"}`, `{"name":"a.b","service":"shop","tenant":"acme"}`,
		`{"name":"shop.gw.test","service":"shop"}`, `{"name":"www.example.test","service":"blog"}`, `{"name":"x.test","service":"db"}`,
		`{"name":"www.example.test.","service":"shop"}`, `{"name":"","service":""}`, `{"name":null}`, `{"name":"x.test","service":"shop"} x`,
		``, `{`, `[]`, `null`, `{"name":"` + strings.Repeat("a.", 130) + `test","service":"shop"}`, `{"Name":"x.test","Service":"shop"}`,
	} {
		f.Add([]byte(s))
	}
	e, acme, _ := newDomainEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, tok := range []string{acme, adminToken} {
			code, hdr, resp := e.do(t, "POST", "/v1/domains", tok, bytes.NewReader(body))
			if hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
			}
			switch {
			case code == 200 || code == 201:
				var d api.DomainDetail
				if err := json.Unmarshal(resp, &d); err != nil {
					t.Fatalf("%d with %q", code, resp)
				}
				if model.ValidateDomainName(d.Name) != nil || model.IsUnder(d.Name, "gw.test") || d.Tenant != "acme" || d.Service != "shop" || d.State != model.DomainPending {
					t.Fatalf("%q accepted a bad domain %+v", body, d)
				}
				if code, _, resp := e.do(t, "DELETE", "/v1/domains/"+d.Name, tok, nil); code != 204 && code != 404 {
					t.Fatalf("remove: %d %s", code, resp)
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
