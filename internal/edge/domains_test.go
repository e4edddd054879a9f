package edge

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

// customOf serves www.example.test for acme's shop and other.example.test
// for a tenant that does not own shop.
func customOf(host string) (service, tenant string, ok bool) {
	switch host {
	case "www.example.test":
		return "shop", "acme", true
	case "other.example.test":
		return "shop", "mallory", true
	case "gone.example.test":
		return "nope", "acme", true
	}
	return "", "", false
}

func TestNamesCustom(t *testing.T) {
	n := testNames()
	n.Custom = customOf
	for _, tt := range []struct {
		host, label string
		ours        bool
		svc         string
	}{
		{"www.example.test", "shop", true, "shop"},
		{"WWW.Example.Test.", "shop", true, "shop"},
		{"other.example.test", "shop", true, ""}, // the service has another owner
		{"gone.example.test", "nope", true, ""},
		{"unverified.example.test", "", false, ""},
		{"shop.gw.test", "shop", true, "shop"},
	} {
		label, ours, svc := n.Resolve(tt.host)
		got := ""
		if svc != nil {
			got = svc.Name
		}
		if label != tt.label || ours != tt.ours || got != tt.svc {
			t.Errorf("Resolve(%q) = %q, %v, %q; want %q, %v, %q", tt.host, label, ours, got, tt.label, tt.ours, tt.svc)
		}
	}
}

// TestHTTPSCustomDomain: a verified custom domain is served with a
// certificate of its own name; any other name outside the domain gets no
// certificate at all (the CA signs only names the edge resolves).
func TestHTTPSCustomDomain(t *testing.T) {
	env := newEdge(t, nil)
	env.https.Names.Custom = func(host string) (string, string, bool) {
		if host == "www.example.test" {
			return "shop", "", true
		}
		return "", "", false
	}
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s", r.Host)
	})))
	for _, h2 := range []bool{false, true} {
		resp, err := env.client(t, h2).Get("https://www.example.test/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "host=www.example.test" {
			t.Errorf("h2=%v: %d %q", h2, resp.StatusCode, body)
		}
		if names := resp.TLS.PeerCertificates[0].DNSNames; len(names) != 1 || names[0] != "www.example.test" {
			t.Errorf("certificate names %v", names)
		}
	}
	c, err := env.dialTLS(&tls.Config{ServerName: "pending.example.test", RootCAs: env.ca.Pool()})
	if err == nil {
		c.Close()
		t.Fatal("handshake for an unverified name succeeded")
	}
	if !strings.Contains(err.Error(), "unrecognized name") {
		t.Errorf("handshake error %q, want an unrecognized_name alert", err)
	}
}
