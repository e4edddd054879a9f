package edge

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
)

func testNames() *Names {
	tab := route.NewTable(nil)
	tab.Upsert("shop", "acme", model.ProtoHTTP, true)
	tab.Upsert("pass", "", model.ProtoTLS, false)
	return &Names{Domain: "gw.test", Table: tab}
}

func TestNamesResolve(t *testing.T) {
	n := testNames()
	long := strings.Repeat("a", 63)
	tests := []struct {
		host      string
		wantLabel string
		wantOurs  bool
		wantSvc   string // "" for none
	}{
		{"gw.test", "", true, ""},
		{"GW.Test", "", true, ""},
		{"gw.test.", "", true, ""},
		{"shop.gw.test", "shop", true, "shop"},
		{"SHOP.GW.TEST", "shop", true, "shop"},
		{"shop.gw.test.", "shop", true, "shop"},
		{"pass.gw.test", "pass", true, "pass"},
		{"nope.gw.test", "nope", true, ""},
		{long + ".gw.test", long, true, ""},
		{long + "a.gw.test", "", false, ""}, // 64 characters: not a DNS label
		{"a.shop.gw.test", "", false, ""},   // two labels
		{"www.shop.gw.test", "", false, ""},
		{".gw.test", "", false, ""},
		{"shopgw.test", "", false, ""}, // suffix without a dot
		{"xgw.test", "", false, ""},
		{"gw.test.evil.example", "", false, ""},
		{"shop.other.test", "", false, ""},
		{"example.com", "", false, ""},
		{"test", "", false, ""},
		{"", "", false, ""},
		{".", "", false, ""},
	}
	for _, tt := range tests {
		label, ours, svc := n.Resolve(tt.host)
		gotSvc := ""
		if svc != nil {
			gotSvc = svc.Name
		}
		if label != tt.wantLabel || ours != tt.wantOurs || gotSvc != tt.wantSvc {
			t.Errorf("Resolve(%q) = %q, %v, %q; want %q, %v, %q", tt.host, label, ours, gotSvc, tt.wantLabel, tt.wantOurs, tt.wantSvc)
		}
		if got := n.Lookup(tt.host); got != svc {
			t.Errorf("Lookup(%q) = %v, want %v", tt.host, got, svc)
		}
	}
}

func TestRedirect(t *testing.T) {
	names := testNames()
	tests := []struct {
		name     string
		port     string
		method   string
		host     string
		target   string
		wantCode int
		wantLoc  string
	}{
		{"known name", "8443", "GET", "shop.gw.test", "/a/b?c=d", 308, "https://shop.gw.test:8443/a/b?c=d"},
		{"known name with port", "8443", "GET", "shop.gw.test:8080", "/", 308, "https://shop.gw.test:8443/"},
		{"upper case", "8443", "GET", "Shop.GW.test", "/", 308, "https://shop.gw.test:8443/"},
		{"POST keeps its method with 308", "8443", "POST", "shop.gw.test", "/form", 308, "https://shop.gw.test:8443/form"},
		{"port 443 left out", "443", "GET", "shop.gw.test:80", "/x", 308, "https://shop.gw.test/x"},
		{"no port configured", "", "GET", "shop.gw.test", "/x", 308, "https://shop.gw.test/x"},
		{"passthrough service", "8443", "GET", "pass.gw.test", "/", 308, "https://pass.gw.test:8443/"},
		{"apex", "8443", "GET", "gw.test", "/", 308, "https://gw.test:8443/"},
		{"apex on 443", "443", "GET", "gw.test", "/", 308, "https://gw.test/"},
		{"unknown label", "8443", "GET", "nope.gw.test", "/", 404, ""},
		{"two labels", "8443", "GET", "a.shop.gw.test", "/", 404, ""},
		{"other domain", "8443", "GET", "example.com", "/", 404, ""},
		{"IP address", "8443", "GET", "127.0.0.1:8080", "/", 404, ""},
		{"IPv6 address", "8443", "GET", "[::1]:8080", "/", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd := &Redirect{Names: names, HTTPSPort: tt.port}
			req := httptest.NewRequest(tt.method, "http://"+tt.host+tt.target, nil)
			req.Host = tt.host
			rec := httptest.NewRecorder()
			rd.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.wantCode, rec.Body)
			}
			if got := rec.Header().Get("Location"); got != tt.wantLoc {
				t.Errorf("Location %q, want %q", got, tt.wantLoc)
			}
			if tt.wantCode == http.StatusNotFound {
				if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
					t.Errorf("404 Content-Type %q", ct)
				}
			}
		})
	}
}

func TestNamesOnly(t *testing.T) {
	n := testNames()
	n.Only = func(svc *route.Service) bool { return svc.Name == "shop" }
	for _, tt := range []struct {
		host string
		ours bool
	}{
		{"shop.gw.test", true},
		{"pass.gw.test", false}, // a service, not accepted by Only
		{"nope.gw.test", false}, // unknown label
		{"gw.test", false},      // the domain itself
		{"example.com", false},
	} {
		label, ours, svc := n.Resolve(tt.host)
		if ours != tt.ours || (svc != nil) != tt.ours || (!tt.ours && label != "") {
			t.Errorf("Resolve(%q) = %q, %v, %v; want ours %v", tt.host, label, ours, svc, tt.ours)
		}
	}
}
