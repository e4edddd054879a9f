package e2e

import (
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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// TestACMECluster: two gateways on one etcd, both with --acme-ca, started
// together, get the domain's certificates once for the cluster (the
// issuance lock and the certificates are in etcd): Pebble sees one order
// per certificate, and both gateways serve the same one.
func TestACMECluster(t *testing.T) {
	t.Parallel()
	etcd := startEtcd(t)
	dnsAddr := freeTCPUDP(t)

	os.Setenv("PEBBLE_VA_NOSLEEP", "1") // Pebble reads these when made; only Pebble in this process does
	os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	memDB := db.NewMemoryStore()
	pca := ca.New(logger, memDB, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	pva := va.New(logger, 1, 0, false, dnsAddr, memDB) // DNS-01 only: no HTTP port
	pwfe := wfe.New(logger, memDB, pva, pca, nil, false, false, 3, 5)
	var orders, finals atomic.Int32 // new orders and finalisations (issuances) Pebble got
	wh := pwfe.Handler()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			orders.Add(1)
		}
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/finalize-order/") {
			finals.Add(1)
		}
		wh.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tlsRoot := filepath.Join(t.TempDir(), "pebble-tls.pem")
	if err := os.WriteFile(tlsRoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(pca.GetRootCert(0).Cert)

	acme := []string{"--store", "etcd://" + etcd, "--domain", "gw.test", "--public-ip", "127.0.0.1",
		"--acme-ca", srv.URL + "/dir", "--acme-ca-root", tlsRoot, "--acme-email", "ops@gw.test"}
	gws := make([]*gateway, 2)
	done := make(chan int, 2)
	for i := range gws {
		go func() {
			defer func() { done <- i }()
			dns := "127.0.0.1:0"
			if i == 0 {
				dns = dnsAddr // the one Pebble's validation authority asks
			}
			gws[i] = startGateway(t, append([]string{"--dns-addr", dns}, acme...)...)
		}()
	}
	<-done
	<-done
	if gws[0] == nil || gws[1] == nil {
		t.FailNow() // startGateway reported why
	}

	serial := func(g *gateway, name string) string {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err := tls.DialWithDialer(&d, "tcp", g.httpsAddr, &tls.Config{ServerName: name, RootCAs: roots})
		if err != nil {
			return ""
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	var s1, s2 string
	waitFor(t, 90*time.Second, "certificates from Pebble on both gateways", func() bool {
		s1, s2 = serial(gws[0], "shop.gw.test"), serial(gws[1], "shop.gw.test")
		return s1 != "" && s2 != "" && serial(gws[0], "gw.test") != "" && serial(gws[1], "gw.test") != ""
	})
	if s1 != s2 {
		t.Errorf("the gateways serve different wildcard certificates (serials %s and %s): issued twice", s1, s2)
	}
	if n, f := orders.Load(), finals.Load(); n != 2 || f != 2 {
		t.Errorf("Pebble saw %d orders and %d issuances, want 2 each (the apex and the wildcard, once for the cluster)", n, f)
	}
}
