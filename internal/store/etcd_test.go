package store_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/store/storetest"
)

// testEtcd is one embedded etcd server shared by every test in the binary,
// started by the first test that needs it and stopped by TestMain.
var testEtcd struct {
	once      sync.Once
	srv       *embed.Etcd
	dir       string
	endpoints []string
	err       error
}

// prefixSeq makes each store's key prefix unique, also across -count runs.
var prefixSeq atomic.Int64

func TestMain(m *testing.M) {
	code := m.Run()
	if testEtcd.srv != nil {
		testEtcd.srv.Close()
	}
	if testEtcd.dir != "" {
		os.RemoveAll(testEtcd.dir)
	}
	os.Exit(code)
}

// etcdEndpoints returns the client endpoints of the shared embedded etcd.
func etcdEndpoints(t *testing.T) []string {
	t.Helper()
	testEtcd.once.Do(startEtcd)
	if testEtcd.err != nil {
		t.Fatalf("embedded etcd: %v", testEtcd.err)
	}
	return testEtcd.endpoints
}

func startEtcd() {
	dir, err := os.MkdirTemp("", "webgw-etcd-")
	if err != nil {
		testEtcd.err = err
		return
	}
	testEtcd.dir = dir
	testEtcd.srv, testEtcd.endpoints, testEtcd.err = startEmbedded(dir, nil)
}

// startEmbedded starts a one-member etcd in dir on free loopback ports and
// waits until it serves. With tlsInfo, clients must use TLS.
func startEmbedded(dir string, tlsInfo *transport.TLSInfo) (*embed.Etcd, []string, error) {
	client, peer := freeURL(), freeURL()
	if client == nil || peer == nil {
		return nil, nil, errors.New("no free loopback port")
	}
	return startEmbeddedAt(dir, tlsInfo, client, peer)
}

// restartEmbedded starts the member srv was again, on its data and ports.
func restartEmbedded(dir string, srv *embed.Etcd) (*embed.Etcd, error) {
	c, p := srv.Config().ListenClientUrls[0], srv.Config().ListenPeerUrls[0]
	s, _, err := startEmbeddedAt(dir, nil, &c, &p)
	return s, err
}

func startEmbeddedAt(dir string, tlsInfo *transport.TLSInfo, client, peer *url.URL) (*embed.Etcd, []string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "webgw-test"
	cfg.Dir = dir
	if tlsInfo != nil {
		client.Scheme = "https"
		cfg.ClientTLSInfo = *tlsInfo
	}
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true // test data; keeps the CAS tests fast
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, nil, err
	}
	select {
	case <-srv.Server.ReadyNotify():
		return srv, []string{client.Host}, nil
	case err := <-srv.Err():
		srv.Close()
		return nil, nil, fmt.Errorf("start: %w", err)
	case <-time.After(20 * time.Second):
		srv.Close()
		return nil, nil, errors.New("not ready after 20 s")
	}
}

// freeURL returns an http URL on a loopback port that was free a moment ago.
func freeURL() *url.URL {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil
	}
	defer ln.Close()
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

// uniquePrefix returns a fresh etcd key prefix, so tests never see each
// other's keys in the shared server.
func uniquePrefix(t *testing.T) string {
	return fmt.Sprintf("webgw-test/%d/%s/", prefixSeq.Add(1), t.Name())
}

func openEtcd(t *testing.T, prefix string) *store.Etcd {
	t.Helper()
	s, err := store.OpenEtcd(testContext(t), etcdEndpoints(t), store.EtcdOptions{Prefix: prefix})
	if err != nil {
		t.Fatalf("OpenEtcd: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestEtcdConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openEtcd(t, uniquePrefix(t)) })
}

// TestEtcdWatchSeesImmediateChanges writes right after Watch returns, through
// the same store and through another client, and expects every change.
func TestEtcdWatchSeesImmediateChanges(t *testing.T) {
	ctx := testContext(t)
	prefix := uniquePrefix(t)
	s := openEtcd(t, prefix)
	other := openEtcd(t, prefix)
	for i := range 20 {
		writer := store.Store(s)
		if i%2 == 1 {
			writer = other
		}
		wctx, cancel := context.WithCancel(ctx)
		ch, err := s.Watch(wctx, "imm/")
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		key := "imm/" + strconv.Itoa(i)
		rev, err := writer.Put(ctx, key, []byte("v"), 0)
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("round %d: watch closed, want an event", i)
			}
			if ev.Type != store.EventPut || ev.Entry.Key != key || ev.Entry.Rev != rev {
				t.Fatalf("round %d: event %+v, want put of %s at rev %d", i, ev, key, rev)
			}
		case <-ctx.Done():
			t.Fatalf("round %d: no event for a write right after Watch", i)
		}
		cancel()
	}
}

// TestEtcdPrefixes checks that keys live under the prefix in etcd, that the
// default prefix is "webgw/", and that stores with other prefixes do not
// see each other's keys.
func TestEtcdPrefixes(t *testing.T) {
	ctx := testContext(t)
	eps := etcdEndpoints(t)
	a := openEtcd(t, uniquePrefix(t))
	b := openEtcd(t, uniquePrefix(t))
	if _, err := a.Put(ctx, "k", []byte("a"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("other prefix: Get = %v, want ErrNotFound", err)
	}
	if list, err := b.List(ctx, ""); err != nil || len(list) != 0 {
		t.Fatalf("other prefix: List = %v, %v, want nothing", list, err)
	}

	def, err := store.OpenEtcd(ctx, eps, store.EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	key := "prefix-test/" + strconv.FormatInt(time.Now().UnixNano(), 10)
	rev, err := def.Put(ctx, key, []byte("d"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { def.Delete(context.Background(), key, store.AnyRev) })
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "webgw/"+key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "d" || resp.Kvs[0].ModRevision != rev {
		t.Fatalf("raw etcd key webgw/%s = %v, want value d at rev %d", key, resp.Kvs, rev)
	}
}

// TestEtcdCloseWhileBusy closes the store under concurrent use: every call
// must succeed or return ErrClosed, watches close, and nothing may hang.
func TestEtcdCloseWhileBusy(t *testing.T) {
	ctx := testContext(t)
	s := openEtcd(t, uniquePrefix(t))
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			key := "busy/" + strconv.Itoa(w)
			for i := 0; ; i++ {
				_, err := s.Put(ctx, key, []byte(strconv.Itoa(i)), store.AnyRev)
				if err == nil {
					_, err = s.List(ctx, "busy/")
				}
				if errors.Is(err, store.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
			}
		})
	}
	ch, err := s.Watch(ctx, "busy/")
	if err != nil {
		t.Fatal(err)
	}
	for seen := 0; seen < 10; seen++ {
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatal("watch closed before Close")
			}
		case <-ctx.Done():
			t.Fatal("no writes seen")
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed := time.Now()
	for open := true; open; {
		select {
		case _, open = <-ch:
		case <-ctx.Done():
			t.Fatal("watch not closed by Close")
		}
	}
	wg.Wait()
	// Close cancels calls in flight; without that they wait out the
	// client's retries (about 2.5 s).
	if d := time.Since(closed); d > time.Second {
		t.Errorf("calls in flight took %v to end after Close", d)
	}
	if _, err := s.Get(ctx, "busy/0"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Get after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Watch(ctx, "busy/"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Watch after Close = %v, want ErrClosed", err)
	}
}

func TestOpenEtcdErrors(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	notPEM := dir + "/ca.pem"
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	eps := []string{"127.0.0.1:1"}
	cases := []struct {
		name      string
		endpoints []string
		opts      store.EtcdOptions
		want      string
	}{
		{"no endpoints", nil, store.EtcdOptions{}, "no endpoints"},
		{"cert without key", eps, store.EtcdOptions{CertFile: "c.pem"}, "both the cert file and the key file"},
		{"missing CA", eps, store.EtcdOptions{CAFile: dir + "/missing.pem"}, "etcd CA file"},
		{"CA not PEM", eps, store.EtcdOptions{CAFile: notPEM}, "no PEM certificates"},
		{"bad prefix", eps, store.EtcdOptions{Prefix: "a\x00"}, "etcd prefix"},
		{"unreachable", eps, store.EtcdOptions{DialTimeout: 300 * time.Millisecond}, "connect to etcd 127.0.0.1:1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			s, err := store.OpenEtcd(ctx, c.endpoints, c.opts)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded, want an error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %q, want it to contain %q", err, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("OpenEtcd took %v to fail", d)
			}
		})
	}
}

func TestParseEtcdURL(t *testing.T) {
	cases := []struct {
		in   string
		want []string // nil: an error
	}{
		{"etcd://h1:2379", []string{"h1:2379"}},
		{"etcd://h1:2379,h2:2379", []string{"h1:2379", "h2:2379"}},
		{"etcd://10.0.0.1:2379,[::1]:2379/", []string{"10.0.0.1:2379", "[::1]:2379"}},
		{"etcd://", nil},
		{"etcd://h1", nil},
		{"etcd://h1:2379,", nil},
		{"etcd://:2379", nil},
		{"etcd://h1:http", nil},
		{"etcd://h1:0", nil},
		{"http://h1:2379", nil},
		{"h1:2379", nil},
	}
	for _, c := range cases {
		got, err := store.ParseEtcdURL(c.in)
		if c.want == nil {
			if err == nil {
				t.Errorf("ParseEtcdURL(%q) = %q, want an error", c.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseEtcdURL(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

// TestEtcdTLSAuth runs a second etcd that demands client certificates and
// has auth enabled, and checks the EtcdOptions that reach it and those that
// must not.
func TestEtcdTLSAuth(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	files := writeTestPKI(t, dir)
	srv, eps, err := startEmbedded(filepath.Join(dir, "data"), &transport.TLSInfo{
		CertFile:       files["server.pem"],
		KeyFile:        files["server-key.pem"],
		TrustedCAFile:  files["ca.pem"],
		ClientCertAuth: true,
	})
	if err != nil {
		t.Fatalf("embedded etcd with TLS: %v", err)
	}
	t.Cleanup(srv.Close)

	good := store.EtcdOptions{
		CAFile:      files["ca.pem"],
		CertFile:    files["client.pem"],
		KeyFile:     files["client-key.pem"],
		Prefix:      uniquePrefix(t),
		DialTimeout: time.Second,
	}
	// Before auth is enabled, the certificate alone is enough.
	s, err := store.OpenEtcd(ctx, eps, good)
	if err != nil {
		t.Fatalf("OpenEtcd with TLS: %v", err)
	}
	if _, err := s.Put(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}
	s.Close()
	enableAuth(t, ctx, eps, good, "root", "rootpw")

	withAuth := good
	withAuth.Username, withAuth.Password = "root", "rootpw"
	s, err = store.OpenEtcd(ctx, eps, withAuth)
	if err != nil {
		t.Fatalf("OpenEtcd with TLS and password: %v", err)
	}
	defer s.Close()
	if e, err := s.Get(ctx, "k"); err != nil || string(e.Value) != "v" {
		t.Fatalf("Get over TLS with auth = %v, %v; want v", e, err)
	}

	noCert, noCA, wrongPW, noPW := withAuth, withAuth, withAuth, good
	noCert.CertFile, noCert.KeyFile = "", ""
	noCA.CAFile = ""
	wrongPW.Password = "wrong"
	for name, opts := range map[string]store.EtcdOptions{
		"no client certificate": noCert,
		"system roots only":     noCA,
		"wrong password":        wrongPW,
		"no password":           noPW, // the certificate's CN is no etcd user
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel() // each waits out its dial timeout
			s, err := store.OpenEtcd(ctx, eps, opts)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded, want an error")
			}
			if !strings.Contains(err.Error(), "connect to etcd") {
				t.Fatalf("error = %q, want it to say connect to etcd", err)
			}
			t.Log(err)
		})
	}
}

// enableAuth creates user with the root role and turns etcd auth on.
func enableAuth(t *testing.T, ctx context.Context, eps []string, opts store.EtcdOptions, user, password string) {
	t.Helper()
	tlsInfo := transport.TLSInfo{CertFile: opts.CertFile, KeyFile: opts.KeyFile, TrustedCAFile: opts.CAFile}
	tlsConf, err := tlsInfo.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tlsConf, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.UserAdd(ctx, user, password); err != nil {
		t.Fatalf("user add: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, user, "root"); err != nil {
		t.Fatalf("grant root: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("auth enable: %v", err)
	}
}

// writeTestPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate into dir, returning their paths by file name.
func writeTestPKI(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	write := func(name, typ string, der []byte) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		files[name] = path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "webgw test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	write("ca.pem", "CERTIFICATE", caDER)
	for i, leaf := range []struct {
		name  string
		usage x509.ExtKeyUsage
	}{{"server", x509.ExtKeyUsageServerAuth}, {"client", x509.ExtKeyUsageClientAuth}} {
		key := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)),
			Subject:      pkix.Name{CommonName: "webgw-test-" + leaf.name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{leaf.usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		write(leaf.name+".pem", "CERTIFICATE", der)
		write(leaf.name+"-key.pem", "PRIVATE KEY", keyDER)
	}
	return files
}

// TestEtcdUnavailable: with etcd gone, a write fails within the operation
// timeout with ErrUnavailable (not a hang), and a lease is lost once its
// TTL passes; with etcd back on the same data, writes work again.
func TestEtcdUnavailable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, eps, err := startEmbedded(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	stopSrv := sync.OnceFunc(srv.Close) // embed's Close panics when called twice
	defer stopSrv()
	ctx := t.Context()
	s, err := store.OpenEtcd(ctx, eps, store.EtcdOptions{OpTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := s.Grant(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Put(ctx, "gateways/a", []byte("a")); err != nil {
		t.Fatal(err)
	}
	stopSrv()
	<-srv.Server.StopNotify()

	start := time.Now()
	_, err = s.Put(ctx, "tenants/x", []byte("{}"), store.AnyRev)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("put with etcd down: err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("put with etcd down took %v, want about the 1 s operation timeout", d)
	}
	if !strings.Contains(err.Error(), "etcd at ") {
		t.Errorf("error does not name etcd: %v", err)
	}
	select {
	case <-l.Done():
		t.Logf("lease lost %v after etcd stopped", time.Since(start).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Error("lease not lost 15 s after etcd went away (TTL 2 s)")
	}

	// The same member again, on the same data and ports.
	restarted := time.Now()
	srv2, err := restartEmbedded(dir, srv)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	waitFor(t, 20*time.Second, "a write after etcd is back", func() bool {
		_, err := s.Put(ctx, "tenants/x", []byte("{}"), store.AnyRev)
		return err == nil
	})
	if d := time.Since(restarted); d > 5*time.Second {
		t.Errorf("the first write worked %v after etcd restarted, want within 5 s", d)
	} else {
		t.Logf("writes work again %v after the restart began", d.Round(time.Millisecond))
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
