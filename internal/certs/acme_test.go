package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/store"
)

// pebbleOpts changes the Pebble of pebbleCA.
type pebbleOpts struct {
	validity uint64            // certificate lifetime in seconds; 0: Pebble's default
	eab      map[string]string // external account keys by id; set: EAB required
}

// pebbleCA runs Pebble in the test process: its validation authority
// resolves names with resolver and checks HTTP-01 on httpPort. It returns
// the directory URL, a PEM file trusting Pebble's own TLS, and the root of
// the certificates it issues.
func pebbleCA(t *testing.T, resolver string, httpPort int, o pebbleOpts) (dir, tlsRoots string, root *x509.Certificate) {
	t.Helper()
	os.Setenv("PEBBLE_VA_NOSLEEP", "1") // read when Pebble is made; only Pebble reads them
	os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	memDB := db.NewMemoryStore()
	for kid, key := range o.eab {
		if err := memDB.AddExternalAccountKeyByID(kid, key); err != nil {
			t.Fatal(err)
		}
	}
	c := ca.New(logger, memDB, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default", ValidityPeriod: o.validity}})
	v := va.New(logger, httpPort, 0, false, resolver, memDB)
	w := wfe.New(logger, memDB, v, c, nil, false, len(o.eab) > 0, 1, 1)
	srv := httptest.NewTLSServer(w.Handler())
	t.Cleanup(srv.Close)
	tlsRoots = filepath.Join(t.TempDir(), "pebble-tls.pem")
	if err := os.WriteFile(tlsRoots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL + "/dir", tlsRoots, c.GetRootCert(0).Cert
}

// challengeDNS is the authoritative DNS a gateway would be, for the test:
// SOA of gw.test, A 127.0.0.1 for every name, and the TXT records of
// ChallengeRecords from the store.
func challengeDNS(t *testing.T, st store.Store) string {
	t.Helper()
	// Pebble asks over TCP, certmagic over UDP: both on one port.
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close() // that port is taken for TCP: another
	}
	if err != nil {
		t.Fatal(err)
	}
	handler := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
		hdr := mdns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: mdns.ClassINET, Ttl: 1}
		switch q.Qtype {
		case mdns.TypeSOA:
			if strings.Count(name, ".") == 1 { // a zone apex such as gw.test
				m.Answer = append(m.Answer, &mdns.SOA{Hdr: hdr, Ns: "ns1.gw.test.", Mbox: "h.gw.test.", Serial: 1, Minttl: 1})
			} else {
				apex := name[strings.LastIndex(name[:strings.LastIndex(name, ".")], ".")+1:] + "."
				m.Ns = append(m.Ns, &mdns.SOA{Hdr: mdns.RR_Header{Name: apex, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: 1},
					Ns: "ns1.gw.test.", Mbox: "h.gw.test.", Serial: 1, Minttl: 1})
			}
		case mdns.TypeA:
			m.Answer = append(m.Answer, &mdns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
		case mdns.TypeTXT:
			entries, _ := st.List(context.Background(), ChallengePrefix+name+"/")
			for _, e := range entries {
				m.Answer = append(m.Answer, &mdns.TXT{Hdr: hdr, Txt: []string{string(e.Value)}})
			}
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// TestACMEWithPebble: the gateway domain's wildcard by DNS-01 through the
// store's challenge records, a verified custom domain on demand by HTTP-01,
// and on-demand issuance refused for any other name; certificates verify
// against Pebble's root only.
func TestACMEWithPebble(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	resolver := challengeDNS(t, st)

	// The gateway's HTTP port, answering HTTP-01 challenges.
	var acmeSrc *ACME
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !acmeSrc.HandleHTTPChallenge(w, r) {
			http.NotFound(w, r)
		}
	})}
	go httpSrv.Serve(httpLn)
	defer httpSrv.Close()
	httpPort := httpLn.Addr().(*net.TCPAddr).Port

	dir, tlsRoots, root := pebbleCA(t, resolver, httpPort, pebbleOpts{})
	acmeSrc, err = NewACME(ACMEConfig{
		CA: dir, Email: "ops@gw.test", RootsFile: tlsRoots, Domain: "gw.test",
		DNS01: &ChallengeRecords{DB: st}, Resolvers: []string{resolver},
		Allowed:  func(name string) bool { return name == "www.custom.test" },
		HTTPPort: httpPort,
		Storage:  &Storage{DB: st},
		Log:      slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer acmeSrc.Stop()
	if err := acmeSrc.Manage(ctx); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	verify := func(cert *tls.Certificate, name string) error {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return err
		}
		inter := x509.NewCertPool()
		for _, der := range cert.Certificate[1:] {
			if c, err := x509.ParseCertificate(der); err == nil {
				inter.AddCert(c)
			}
		}
		_, err = leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
		return err
	}

	// The wildcard (DNS-01) covers every service name.
	deadline := time.Now().Add(60 * time.Second)
	var cert *tls.Certificate
	for {
		cert, err = acmeSrc.ForName("shop.gw.test")
		if err == nil && verify(cert, "shop.gw.test") == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for shop.gw.test from the wildcard within 60 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The apex has a certificate of its own.
	for {
		cert, err = acmeSrc.ForName("gw.test")
		if err == nil && verify(cert, "gw.test") == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for the apex gw.test within 60 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if left, _ := st.List(ctx, ChallengePrefix); len(left) != 0 {
		t.Errorf("%d DNS-01 challenge records left in the store after issuance", len(left))
	}

	// A verified custom domain: on demand, by HTTP-01.
	cert, err = acmeSrc.ForName("www.custom.test")
	if err != nil {
		t.Fatalf("on-demand certificate for a verified domain: %v", err)
	}
	if err := verify(cert, "www.custom.test"); err != nil {
		t.Errorf("on-demand certificate does not verify: %v", err)
	}
	// Anything else: refused, no issuance.
	if _, err := acmeSrc.ForName("evil.example.test"); err == nil {
		t.Error("a certificate was issued on demand for a name that is not a verified domain")
	}
	// Certificates and the account live in the store.
	if keys, _ := st.List(ctx, StoragePrefix+"certificates/"); len(keys) < 4 {
		t.Errorf("certificates in the store: %d keys, want the wildcard's and the custom domain's", len(keys))
	}
}

// testWriter logs through t.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestACMERenewal: a certificate is renewed before it expires, without a
// restart (Pebble issues 20-second certificates here).
func TestACMERenewal(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	resolver := challengeDNS(t, st)
	dir, tlsRoots, _ := pebbleCA(t, resolver, 1, pebbleOpts{validity: 20})

	src, err := NewACME(ACMEConfig{CA: dir, RootsFile: tlsRoots, Domain: "renew.test",
		DNS01: &ChallengeRecords{DB: st}, Resolvers: []string{resolver}, Storage: &Storage{DB: st}, RenewCheck: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer src.Stop()
	if err := src.Manage(ctx); err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		cert, err := src.ForName("shop.renew.test")
		if err != nil {
			return ""
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return ""
		}
		return leaf.SerialNumber.String()
	}
	deadline := time.Now().Add(60 * time.Second)
	first := ""
	for first == "" {
		if time.Now().After(deadline) {
			t.Fatal("no first certificate")
		}
		time.Sleep(100 * time.Millisecond)
		first = serial()
	}
	for {
		if s := serial(); s != "" && s != first {
			return // renewed, served without a restart
		}
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not renewed before it expired")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestACMEExternalAccount: a CA that requires external account binding
// issues to an account bound with the key it handed out.
func TestACMEExternalAccount(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	resolver := challengeDNS(t, st)
	const kid, hmac = "kid-1", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
	dir, tlsRoots, _ := pebbleCA(t, resolver, 1, pebbleOpts{eab: map[string]string{kid: hmac}})

	src, err := NewACME(ACMEConfig{CA: dir, RootsFile: tlsRoots, Domain: "eab.test", EABKeyID: kid, EABMACKey: hmac,
		DNS01: &ChallengeRecords{DB: st}, Resolvers: []string{resolver}, Storage: &Storage{DB: st}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer src.Stop()
	if err := src.Manage(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := src.ForName("shop.eab.test"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no certificate from a CA that requires external account binding")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
