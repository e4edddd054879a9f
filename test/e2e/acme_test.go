package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// freeTCPUDP returns a loopback address whose port was free for both TCP
// and UDP a moment ago.
func freeTCPUDP(t *testing.T) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

// TestACME: a gateway with --acme-ca gets its domain's wildcard
// certificate from a real ACME server (Pebble, in the test process) by
// DNS-01 answered by its own DNS server, and serves it: a client that
// trusts only Pebble's root reaches a service. Names that are not the
// gateway's get no certificate; CAA names the CA.
func TestACME(t *testing.T) {
	t.Parallel()
	needTool(t, "dig")
	dnsAddr, httpAddr := freeTCPUDP(t), freeAddr(t)
	_, httpPortS, _ := net.SplitHostPort(httpAddr)
	var httpPort int
	for _, c := range httpPortS {
		httpPort = httpPort*10 + int(c-'0')
	}

	// Pebble: its validation authority asks the gateway's DNS server and
	// checks HTTP-01 on the gateway's HTTP port.
	os.Setenv("PEBBLE_VA_NOSLEEP", "1") // Pebble reads these when made; only Pebble in this process does
	os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	memDB := db.NewMemoryStore()
	pca := ca.New(logger, memDB, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	pva := va.New(logger, httpPort, 0, false, dnsAddr, memDB)
	pwfe := wfe.New(logger, memDB, pva, pca, nil, false, false, 3, 5)
	srv := httptest.NewTLSServer(pwfe.Handler())
	t.Cleanup(srv.Close)
	tlsRoot := filepath.Join(t.TempDir(), "pebble-tls.pem")
	if err := os.WriteFile(tlsRoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(pca.GetRootCert(0).Cert)

	res := startTXTServer(t) // the resolver that proves control of the tenant's zone
	start := time.Now()
	g := startGateway(t, "--domain", "gw.test", "--public-ip", "127.0.0.1", "--dns-addr", dnsAddr, "--http-addr", httpAddr,
		"--acme-ca", srv.URL+"/dir", "--acme-ca-root", tlsRoot, "--acme-email", "ops@gw.test", "--acme-caa", "pebble.test",
		"--resolver", res.addr)
	tok := g.addTenant(t, "acme-co")
	p := startProc(t, "expose", "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--token", tok, "--name", "shop", textBackend(t, "served over ACME\n"))
	p.waitLine(t, regexp.MustCompile(`^https://shop\.gw\.test:\d+$`), 15*time.Second)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.httpsAddr)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots}, // Pebble's root only
	}}
	url := "https://shop.gw.test:" + g.httpsPort() + "/"
	var body string
	waitFor(t, 90*time.Second, "a certificate from Pebble for shop.gw.test", func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == 200
	})
	if body != "served over ACME\n" {
		t.Errorf("body %q", body)
	}
	t.Logf("time to the first ACME certificate (wildcard by DNS-01), from the gateway's start: %v", time.Since(start).Round(10*time.Millisecond))

	// A name of the tenant's own (verified) zone pointed at the service: its
	// certificate is obtained on demand, by HTTP-01 on the gateway's port.
	as := []string{"--api-addr", g.apiAddr, "--token", tok}
	out := mustRun(t, append([]string{"dns", "zone", "add", "custom.test"}, as...)...)
	m := regexp.MustCompile(`TXT "(webgw-[0-9a-f]+)"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dns zone add printed no token:\n%s", out)
	}
	res.set("_webgw-challenge.custom.test", m[1])
	mustRun(t, append([]string{"dns", "zone", "verify", "custom.test"}, as...)...)
	mustRun(t, append([]string{"dns", "record", "add", "custom.test", "www", "--service", "shop"}, as...)...)
	start = time.Now()
	waitFor(t, 60*time.Second, "an on-demand certificate for www.custom.test", func() bool {
		resp, err := client.Get("https://www.custom.test:" + g.httpsPort() + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	t.Logf("time to an on-demand certificate (HTTP-01): %v", time.Since(start).Round(10*time.Millisecond))
	// A name that is not the gateway's: no certificate, no issuance.
	if c, err := tls.Dial("tcp", g.httpsAddr, &tls.Config{ServerName: "www.other.test", RootCAs: roots}); err == nil {
		c.Close()
		t.Error("a TLS handshake for a name that is not the gateway's succeeded")
	}
	// CAA names the CA.
	if caa := squash(g.dig(t, "gw.test", "CAA")); !strings.Contains(caa, `gw.test. 60 IN CAA 0 issue "pebble.test"`) {
		t.Errorf("dig gw.test CAA does not name the CA:\n%s", caa)
	}
}
