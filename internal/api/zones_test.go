package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/resolve"
)

// newZoneEnv is newServiceEnv whose TXT look-ups answer from txt.
func newZoneEnv(t *testing.T, txt map[string][]string) (e *env, acme, beta string) {
	e, acme, beta = newServiceEnv(t)
	e.srv.ZoneTXT = func(_ context.Context, name string) ([]string, error) {
		if v, ok := txt[name]; ok {
			return v, nil
		}
		if name == "_webgw-challenge.broken.test" {
			return nil, errors.New("i/o timeout")
		}
		return nil, fmt.Errorf("%s TXT: %w", name, resolve.ErrNotFound)
	}
	e.h = e.srv.Handler()
	return e, acme, beta
}

func TestZonesAPI(t *testing.T) {
	txt := map[string][]string{}
	e, acme, beta := newZoneEnv(t, txt)

	code, _, body := e.doJSON(t, "POST", "/v1/dns/zones", acme, `{"name":"Example.Test."}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/dns/zones: %d %s", code, body)
	}
	var d api.ZoneDetail
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "example.test" || d.Tenant != "acme" || d.State != model.ZonePending || d.Token == "" ||
		d.Challenge != (api.ChallengeRecord{Name: "_webgw-challenge.example.test", Type: "TXT", Value: d.Token}) ||
		len(d.NameServers) != 2 || d.NameServers[0] != "ns1.localhost" {
		t.Errorf("created zone: %+v", d)
	}

	for _, tc := range []struct {
		method, path, token, body string
		code                      int
		contains                  string
	}{
		{"POST", "/v1/dns/zones", beta, `{"name":"example.test"}`, 409, "another tenant"},
		{"POST", "/v1/dns/zones", acme, `{"name":"example.test"}`, 409, "exists already"},
		{"POST", "/v1/dns/zones", beta, `{"name":"sub.example.test"}`, 409, "overlaps example.test"},
		{"POST", "/v1/dns/zones", beta, `{"name":"test"}`, 400, "name: "},
		{"POST", "/v1/dns/zones", beta, `{"name":"shop.localhost"}`, 400, "gateway's own domain"},
		{"POST", "/v1/dns/zones", beta, `{"name":"x.test","extra":1}`, 400, "unknown field"},
		{"POST", "/v1/dns/zones", adminToken, `{"name":"x.test"}`, 400, "tenant:"},
		{"POST", "/v1/dns/zones", beta, `{"name":"x.test","tenant":"acme"}`, 403, "tenant:"},
		{"GET", "/v1/dns/zones/example.test", beta, "", 403, "another tenant"},
		{"GET", "/v1/dns/zones/nosuch.test", beta, "", 404, "does not exist"},
		{"GET", "/v1/dns/zones/bad_zone", beta, "", 400, "zone:"},
		{"POST", "/v1/dns/zones/example.test/records", beta, `{"name":"www","type":"A","data":"192.0.2.1"}`, 403, "another tenant"},
		{"POST", "/v1/dns/zones/example.test/verify", acme, "", 422, "no TXT record at _webgw-challenge.example.test"},
		{"POST", "/v1/dns/zones/example.test/records", acme, `{"name":"www","type":"A","data":"nope"}`, 400, "data:"},
		{"POST", "/v1/dns/zones/example.test/records", acme, `{"name":"www","type":"NS","data":"ns.x.test."}`, 400, "type:"},
		{"POST", "/v1/dns/zones/example.test/records", acme, `{"name":"www","type":"A","data":"192.0.2.1","ttl":5}`, 400, "ttl:"},
		{"POST", "/v1/dns/zones/example.test/records", acme, `{"name":"app","service":"nosuch"}`, 400, "service:"},
		{"POST", "/v1/dns/zones/example.test/records", acme, `{"name":"@","type":"CNAME","data":"x.test."}`, 400, "apex"},
		{"DELETE", "/v1/dns/zones/example.test/records/nope", acme, "", 404, "no record"},
		{"DELETE", "/v1/dns/zones/example.test", beta, "", 403, "another tenant"},
	} {
		code, hdr, body := e.doJSON(t, tc.method, tc.path, tc.token, tc.body)
		t.Run(tc.method+" "+tc.path+" "+tc.body, func(t *testing.T) { wantError(t, code, hdr, body, tc.code, tc.contains) })
	}

	// A wrong token in the TXT: the reason shows what was found.
	txt["_webgw-challenge.example.test"] = []string{"something else"}
	code, hdr, body := e.doJSON(t, "POST", "/v1/dns/zones/example.test/verify", acme, "")
	wantError(t, code, hdr, body, 422, `holds "something else"`)
	txt["_webgw-challenge.example.test"] = []string{"other", d.Token}
	code, _, body = e.doJSON(t, "POST", "/v1/dns/zones/example.test/verify", acme, "")
	var v api.ZoneDetail
	if json.Unmarshal(body, &v); code != 200 || v.State != model.ZoneVerified || v.Verified.IsZero() {
		t.Fatalf("verify: %d %s", code, body)
	}

	// Records.
	if _, err := e.st.Put(context.Background(), "services/shop", []byte(`{"name":"shop","tenant":"acme"}`), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Put(context.Background(), "services/blog", []byte(`{"name":"blog","tenant":"beta"}`), 0); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range []string{
		`{"name":"www","type":"A","data":"192.0.2.1"}`,
		`{"name":"@","type":"MX","data":"10 mail","ttl":300}`,
		`{"name":"app","service":"shop"}`,
	} {
		code, _, body := e.doJSON(t, "POST", "/v1/dns/zones/example.test/records", acme, b)
		var r model.Record
		if json.Unmarshal(body, &r); code != 201 || r.ID == "" {
			t.Fatalf("POST record %s: %d %s", b, code, body)
		}
		ids = append(ids, r.ID)
	}
	code, hdr, body = e.doJSON(t, "POST", "/v1/dns/zones/example.test/records", acme, `{"name":"www","type":"CNAME","data":"x.test."}`)
	wantError(t, code, hdr, body, 400, "CNAME")
	code, hdr, body = e.doJSON(t, "POST", "/v1/dns/zones/example.test/records", acme, `{"name":"blog","service":"blog"}`)
	wantError(t, code, hdr, body, 400, "service:")

	code, _, body = e.doJSON(t, "GET", "/v1/dns/zones/example.test/records", acme, "")
	var recs []model.Record
	if json.Unmarshal(body, &recs); code != 200 || len(recs) != 3 || recs[1].Data != "10 mail.example.test." {
		t.Fatalf("GET records: %d %s", code, body)
	}
	if code, _, body := e.doJSON(t, "DELETE", "/v1/dns/zones/example.test/records/"+ids[0], acme, ""); code != 204 {
		t.Fatalf("DELETE record: %d %s", code, body)
	}
	code, _, body = e.doJSON(t, "GET", "/v1/dns/zones", acme, "")
	var zs []api.ZoneDetail
	if json.Unmarshal(body, &zs); code != 200 || len(zs) != 1 || zs[0].Records != 2 {
		t.Fatalf("GET zones: %d %s", code, body)
	}
	code, _, body = e.doJSON(t, "GET", "/v1/dns/zones", beta, "")
	if json.Unmarshal(body, &zs); code != 200 || len(zs) != 0 {
		t.Fatalf("GET zones of beta: %d %s", code, body)
	}

	// A resolver failure is not a refusal.
	e.doJSON(t, "POST", "/v1/dns/zones", beta, `{"name":"broken.test"}`)
	code, hdr, body = e.doJSON(t, "POST", "/v1/dns/zones/broken.test/verify", beta, "")
	wantError(t, code, hdr, body, 502, "i/o timeout")

	if code, _, body := e.doJSON(t, "DELETE", "/v1/dns/zones/example.test", acme, ""); code != 204 {
		t.Fatalf("DELETE zone: %d %s", code, body)
	}
	// Now beta may take it.
	if code, _, body := e.doJSON(t, "POST", "/v1/dns/zones", beta, `{"name":"example.test"}`); code != 201 {
		t.Fatalf("POST zone after its removal: %d %s", code, body)
	}
}
