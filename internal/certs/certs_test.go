package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/store"
)

// memStore is a minimal in-memory store.Store for these tests.
type memStore struct {
	mu  sync.Mutex
	rev int64                  // guarded by mu
	m   map[string]store.Entry // guarded by mu
}

var _ store.Store = (*memStore)(nil)

func newMemStore() *memStore { return &memStore{m: make(map[string]store.Entry)} }

func (s *memStore) Get(_ context.Context, key string) (store.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok {
		return store.Entry{}, store.ErrNotFound
	}
	e.Value = bytes.Clone(e.Value)
	return e, nil
}

func (s *memStore) List(_ context.Context, prefix string) ([]store.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []store.Entry{}
	for k, e := range s.m {
		if strings.HasPrefix(k, prefix) {
			e.Value = bytes.Clone(e.Value)
			out = append(out, e)
		}
	}
	return out, nil
}

func (s *memStore) Put(_ context.Context, key string, value []byte, expect int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.m[key]
	switch {
	case expect == store.AnyRev:
	case expect == 0 && ok, expect > 0 && (!ok || cur.Rev != expect):
		return 0, store.ErrConflict
	}
	s.rev++
	s.m[key] = store.Entry{Key: key, Value: bytes.Clone(value), Rev: s.rev}
	return s.rev, nil
}

func (s *memStore) Delete(_ context.Context, key string, expect int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.m[key]
	if !ok {
		return store.ErrNotFound
	}
	if expect != store.AnyRev && cur.Rev != expect {
		return store.ErrConflict
	}
	s.rev++
	delete(s.m, key)
	return nil
}

func (s *memStore) Watch(ctx context.Context, _ string) (<-chan store.Event, error) {
	ch := make(chan store.Event)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

func (s *memStore) Close() error { return nil }

// racingStore simulates another process that creates a key between our Get
// and our create-only Put: before the first such Put of key, it writes value.
type racingStore struct {
	store.Store
	key   string
	value []byte
	once  sync.Once
}

func (s *racingStore) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if key == s.key && expect == 0 {
		s.once.Do(func() {
			if _, err := s.Store.Put(ctx, key, s.value, 0); err != nil {
				panic(err)
			}
		})
	}
	return s.Store.Put(ctx, key, value, expect)
}

func newCA(t testing.TB, st store.Store) *LocalCA {
	t.Helper()
	ca, err := LoadOrCreateCA(context.Background(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func keyPEM(t *testing.T) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), k
}

func TestLoadOrCreateCA(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	ca := newCA(t, st)

	c := ca.cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA=%v MaxPathLen=%d MaxPathLenZero=%v", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if !strings.HasPrefix(c.Subject.CommonName, "webgw local CA ") || len(c.Subject.CommonName) <= len("webgw local CA ") {
		t.Errorf("CN = %q", c.Subject.CommonName)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d < 10*365*24*time.Hour || d > 10*366*24*time.Hour {
		t.Errorf("validity %v, want about 10 years", d)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}

	certEntry, err := st.Get(ctx, "ca/cert")
	if err != nil {
		t.Fatal(err)
	}
	keyEntry, err := st.Get(ctx, "ca/key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseKey(keyEntry.Value); err != nil {
		t.Errorf("ca/key: %v", err)
	}

	again := newCA(t, st)
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Error("reloaded CA certificate differs")
	}
	if !again.cert.Equal(ca.cert) {
		t.Error("reloaded CA certificate DER differs")
	}
	for _, e := range []store.Entry{certEntry, keyEntry} {
		now, err := st.Get(ctx, e.Key)
		if err != nil || now.Rev != e.Rev {
			t.Errorf("%s rewritten on reload: rev %d -> %d (%v)", e.Key, e.Rev, now.Rev, err)
		}
	}
}

// TestLoadOrCreateCALosesRace: another process creates ca/key between our Get
// and Put; we must use its key rather than ours.
func TestLoadOrCreateCALosesRace(t *testing.T) {
	theirs, theirKey := keyPEM(t)
	st := &racingStore{Store: newMemStore(), key: "ca/key", value: theirs}
	ca := newCA(t, st)
	if !theirKey.PublicKey.Equal(ca.cert.PublicKey) {
		t.Fatal("CA certificate is not for the key the other process stored")
	}
}

func TestLoadOrCreateCAConcurrent(t *testing.T) {
	st := newMemStore()
	const n = 8
	pems := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ca, err := LoadOrCreateCA(context.Background(), st, "", nil)
			errs[i] = err
			if err == nil {
				pems[i] = ca.CertPEM()
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(pems[i], pems[0]) {
			t.Fatalf("process %d got another CA", i)
		}
	}
}

func TestLoadOrCreateCAMismatch(t *testing.T) {
	st := newMemStore()
	newCA(t, st)
	other, _ := keyPEM(t)
	if _, err := st.Put(context.Background(), "ca/key", other, store.AnyRev); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateCA(context.Background(), st, "", nil)
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("err = %v, want a key mismatch", err)
	}
}

func TestCAFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	st := newMemStore()
	ca, err := LoadOrCreateCA(context.Background(), st, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ca.pem")
	if ca.CAFile() != path {
		t.Fatalf("CAFile() = %q, want %q", ca.CAFile(), path)
	}
	checkFile := func() {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("ca.pem mode %v, want 0644", fi.Mode().Perm())
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ca.CertPEM()) {
			t.Error("ca.pem differs from CertPEM()")
		}
		if _, err := parseCert(got); err != nil {
			t.Error(err)
		}
	}
	checkFile()
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v, want 0700", di.Mode().Perm())
	}

	// Unchanged content: the file is left alone.
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(context.Background(), st, dir, nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("ca.pem rewritten although unchanged (%v)", err)
	}

	// Changed content: replaced.
	if err := os.WriteFile(path, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(context.Background(), st, dir, nil); err != nil {
		t.Fatal(err)
	}
	checkFile()

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("data dir holds %d files, want only ca.pem (temporary files left?)", len(entries))
	}
}

func TestForNameVerifies(t *testing.T) {
	ca := newCA(t, newMemStore())
	const name = "shop.example.test"
	cert, err := ca.ForName(name)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		t.Fatal("Leaf not set")
	}
	if len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[1], ca.cert.Raw) {
		t.Error("chain does not end with the CA certificate")
	}
	if !bytes.Equal(cert.Certificate[0], leaf.Raw) {
		t.Error("Leaf is not Certificate[0]")
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != name {
		t.Errorf("DNSNames = %q", leaf.DNSNames)
	}
	if k, ok := cert.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() || !k.PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("private key %T does not match the P-256 leaf", cert.PrivateKey)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.IsCA {
		t.Errorf("ExtKeyUsage = %v, IsCA = %v", leaf.ExtKeyUsage, leaf.IsCA)
	}
	now := time.Now()
	if d := now.Sub(leaf.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("NotBefore is %v ago, want 1h", d)
	}
	if d := leaf.NotAfter.Sub(now); d < 90*24*time.Hour-time.Minute || d > 90*24*time.Hour {
		t.Errorf("NotAfter is in %v, want 90 days", d)
	}

	opts := x509.VerifyOptions{DNSName: name, Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := leaf.Verify(opts); err != nil {
		t.Errorf("verify for %s: %v", name, err)
	}
	opts.DNSName = "other.example.test"
	if _, err := leaf.Verify(opts); err == nil {
		t.Error("verified for another name")
	}
	opts.DNSName = name
	opts.Roots = newCA(t, newMemStore()).Pool()
	if _, err := leaf.Verify(opts); err == nil {
		t.Error("verified against another CA")
	}

	for _, alias := range []string{"SHOP.example.TEST", name + "."} {
		got, err := ca.ForName(alias)
		if err != nil || got != cert {
			t.Errorf("ForName(%q) = another certificate (%v)", alias, err)
		}
	}
}

func TestForNameWildcard(t *testing.T) {
	ca := newCA(t, newMemStore())
	cert, err := ca.ForName("*.example.test")
	if err != nil {
		t.Fatal(err)
	}
	opts := x509.VerifyOptions{Roots: ca.Pool(), DNSName: "any.example.test"}
	if _, err := cert.Leaf.Verify(opts); err != nil {
		t.Errorf("wildcard does not cover any.example.test: %v", err)
	}
	opts.DNSName = "a.b.example.test"
	if _, err := cert.Leaf.Verify(opts); err == nil {
		t.Error("wildcard covers two labels")
	}
}

func TestForNameInvalid(t *testing.T) {
	ca := newCA(t, newMemStore())
	for _, name := range []string{
		"", ".", "a..b", "-a.test", "a-.test", "a b.test", "*.test", "*", "a.*.test", "**.example.test", "127.0.0.1", "::1",
		strings.Repeat("a", 64) + ".test", strings.Repeat("a.", 127) + "test",
	} {
		if c, err := ca.ForName(name); err == nil {
			t.Errorf("ForName(%q) = %v, want an error", name, c.Leaf.DNSNames)
		}
	}
	if n := ca.issued.Load(); n != 0 {
		t.Errorf("%d certificates issued for invalid names", n)
	}
}

// handshake runs a TLS handshake over an in-memory pipe and returns the
// client's and the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	deadline := time.Now().Add(10 * time.Second)
	cc.SetDeadline(deadline)
	sc.SetDeadline(deadline)
	var wg sync.WaitGroup
	wg.Go(func() {
		s := tls.Server(sc, server)
		serverErr = s.Handshake()
		if serverErr != nil {
			sc.Close() // unblock the client
		}
	})
	c := tls.Client(cc, client)
	clientErr = c.Handshake()
	if clientErr != nil {
		cc.Close()
	}
	wg.Wait()
	return clientErr, serverErr
}

func TestTLSHandshake(t *testing.T) {
	ca := newCA(t, newMemStore())
	server := &tls.Config{GetCertificate: GetCertificate(ca)}

	cErr, sErr := handshake(t, server, &tls.Config{RootCAs: ca.Pool(), ServerName: "app.localhost"})
	if cErr != nil || sErr != nil {
		t.Fatalf("handshake: client %v, server %v", cErr, sErr)
	}

	// A client that trusts only another CA refuses.
	other := newCA(t, newMemStore())
	cErr, _ = handshake(t, server, &tls.Config{RootCAs: other.Pool(), ServerName: "app.localhost"})
	var unknown x509.UnknownAuthorityError
	if !errors.As(cErr, &unknown) {
		t.Errorf("client trusting another CA: err = %v, want x509.UnknownAuthorityError", cErr)
	}
}

func TestForNameCacheHit(t *testing.T) {
	ca := newCA(t, newMemStore())
	a, err := ca.ForName("a.test")
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.ForName("a.test")
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Error("cache hit returned another *tls.Certificate")
	}
	if n := ca.issued.Load(); n != 1 {
		t.Errorf("issued %d, want 1", n)
	}
}

func TestForNameCacheHitAllocs(t *testing.T) {
	ca := newCA(t, newMemStore())
	if _, err := ca.ForName("a.test"); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { ca.ForName("a.test") }); n != 0 {
		t.Errorf("cache hit allocates %v times", n)
	}
}

// TestForNameSingleflight holds the first issuance until every other caller
// is waiting for it, so all 32 callers overlap for certain.
func TestForNameSingleflight(t *testing.T) {
	ca := newCA(t, newMemStore())
	const n = 32
	var waiting sync.WaitGroup
	waiting.Add(n - 1)
	ca.testHookWait = func(string) { waiting.Done() }
	ca.testHookIssue = func(string) { waiting.Wait() }

	certs := make([]*tls.Certificate, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { certs[i], errs[i] = ca.ForName("busy.test") })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if certs[i] != certs[0] {
			t.Fatalf("caller %d got another certificate", i)
		}
	}
	if got := ca.issued.Load(); got != 1 {
		t.Errorf("issued %d certificates, want 1", got)
	}
	ca.mu.RLock()
	inflight := len(ca.inflight)
	ca.mu.RUnlock()
	if inflight != 0 {
		t.Errorf("%d issuances left in flight", inflight)
	}
}

func TestForNameLRU(t *testing.T) {
	ca := newCA(t, newMemStore())
	ca.MaxCached = 3
	get := func(name string) *tls.Certificate {
		t.Helper()
		c, err := ca.ForName(name)
		if err != nil {
			t.Fatal(err)
		}
		ca.mu.RLock()
		size := len(ca.leaves)
		ca.mu.RUnlock()
		if size > ca.MaxCached {
			t.Fatalf("cache holds %d, bound %d", size, ca.MaxCached)
		}
		return c
	}
	a := get("a.test")
	get("b.test")
	c := get("c.test")
	get("a.test") // now b is the least recently used
	get("d.test") // evicts b
	if n := ca.issued.Load(); n != 4 {
		t.Fatalf("issued %d, want 4", n)
	}
	if get("a.test") != a || get("c.test") != c {
		t.Error("recently used entries were evicted")
	}
	if n := ca.issued.Load(); n != 4 {
		t.Fatalf("issued %d after hits, want 4", n)
	}
	get("b.test") // evicted, so issued again
	if n := ca.issued.Load(); n != 5 {
		t.Fatalf("issued %d, want 5: b was not evicted", n)
	}

	for i := range 20 {
		get(fmt.Sprintf("n%d.test", i))
	}
}

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestForNameRenews(t *testing.T) {
	ca := newCA(t, newMemStore())
	clock := &fakeClock{}
	clock.ns.Store(time.Now().UnixNano())
	ca.Now = clock.Now

	first, err := ca.ForName("r.test")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(59 * 24 * time.Hour) // 31 days of 90 left: more than a third
	if c, err := ca.ForName("r.test"); err != nil || c != first {
		t.Fatalf("re-issued with more than a third of validity left (%v)", err)
	}
	clock.Advance(2 * 24 * time.Hour) // 29 days left
	second, err := ca.ForName("r.test")
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("not re-issued with less than a third of validity left")
	}
	if !second.Leaf.NotBefore.After(first.Leaf.NotBefore) {
		t.Error("renewed certificate is not newer")
	}
	if c, _ := ca.ForName("r.test"); c != second {
		t.Error("renewed certificate not cached")
	}
}

func TestServerIdentity(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}

	ca1 := newCA(t, st)
	id1, err := ca1.ServerIdentity(ctx, []string{"gw.localhost"}, ips)
	if err != nil {
		t.Fatal(err)
	}
	ca2 := newCA(t, st) // a restart on the same store
	id2, err := ca2.ServerIdentity(ctx, []string{"gw.localhost"}, ips)
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(id1.Leaf) != Fingerprint(id2.Leaf) {
		t.Errorf("fingerprint changed across restarts: %s -> %s", Fingerprint(id1.Leaf), Fingerprint(id2.Leaf))
	}
	if id1.Leaf.SerialNumber.Cmp(id2.Leaf.SerialNumber) == 0 {
		t.Error("certificate not re-signed")
	}
	if Fingerprint(id1.Leaf) == Fingerprint(ca1.cert) {
		t.Error("tunnel identity uses the CA key")
	}
	if _, err := st.Get(ctx, "gateway/tunnel-key"); err != nil {
		t.Errorf("gateway/tunnel-key: %v", err)
	}

	leaf := id2.Leaf
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("IPAddresses = %v", leaf.IPAddresses)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 365*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("validity %v, want a year", d)
	}
	for _, host := range []string{"127.0.0.1", "::1", "gw.localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: ca2.Pool()}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "127.0.0.2", Roots: ca2.Pool()}); err == nil {
		t.Error("verified for 127.0.0.2")
	}
	if len(id2.Certificate) != 2 || !bytes.Equal(id2.Certificate[1], ca2.cert.Raw) {
		t.Error("chain does not end with the CA certificate")
	}

	if _, err := ca1.ServerIdentity(ctx, []string{"bad name"}, nil); err == nil {
		t.Error("accepted an invalid DNS name")
	}
	if _, err := ca1.ServerIdentity(ctx, nil, []net.IP{{1, 2, 3}}); err == nil {
		t.Error("accepted an invalid IP address")
	}
}

func TestServerIdentityLosesRace(t *testing.T) {
	theirs, theirKey := keyPEM(t)
	st := &racingStore{Store: newMemStore(), key: "gateway/tunnel-key", value: theirs}
	ca := newCA(t, st)
	id, err := ca.ServerIdentity(context.Background(), nil, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if !theirKey.PublicKey.Equal(id.Leaf.PublicKey) {
		t.Fatal("identity does not use the key the other process stored")
	}
}

func TestVerifyPin(t *testing.T) {
	ca := newCA(t, newMemStore())
	id, err := ca.ServerIdentity(context.Background(), nil, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fp := Fingerprint(id.Leaf)
	if len(fp) != len("sha256:")+64 || fp != strings.ToLower(fp) || !strings.HasPrefix(fp, "sha256:") {
		t.Fatalf("Fingerprint = %q", fp)
	}
	other, err := ca.ForName("other.test")
	if err != nil {
		t.Fatal(err)
	}
	wrong := Fingerprint(other.Leaf)
	hexPart := strings.TrimPrefix(fp, "sha256:")

	for _, pin := range []string{fp, hexPart, strings.ToUpper(hexPart), "SHA256:" + strings.ToUpper(hexPart)} {
		if err := VerifyPin(pin)(id.Certificate, nil); err != nil {
			t.Errorf("pin %q refused: %v", pin, err)
		}
	}

	err = VerifyPin(wrong)(id.Certificate, nil)
	var mismatch *PinMismatchError
	if !errors.As(err, &mismatch) || mismatch.Got != fp || mismatch.Want != wrong {
		t.Fatalf("wrong pin: err = %v", err)
	}
	if want := "gateway key fingerprint " + fp + " does not match pinned " + wrong; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if err := VerifyPin(fp)(nil, nil); err == nil {
		t.Error("accepted no certificate")
	}
	if err := VerifyPin(fp)([][]byte{[]byte("junk")}, nil); err == nil {
		t.Error("accepted a malformed certificate")
	}
	if err := VerifyPin("sha256:xyz")(id.Certificate, nil); err == nil {
		t.Error("accepted with an invalid pin")
	}

	// Over a real handshake, as the agent uses it.
	server := &tls.Config{Certificates: []tls.Certificate{*id}}
	pinned := func(pin string) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: VerifyPin(pin), ServerName: "gw"}
	}
	if cErr, sErr := handshake(t, server, pinned(fp)); cErr != nil || sErr != nil {
		t.Errorf("handshake with the right pin: client %v, server %v", cErr, sErr)
	}
	cErr, _ := handshake(t, server, pinned(wrong))
	if !errors.As(cErr, &mismatch) {
		t.Errorf("handshake with a wrong pin: client err = %v, want a PinMismatchError", cErr)
	}
}

func TestValidatePin(t *testing.T) {
	hex64 := strings.Repeat("0123456789abcdef", 4)
	for _, tt := range []struct {
		pin string
		ok  bool
	}{
		{"sha256:" + hex64, true},
		{hex64, true},
		{strings.ToUpper(hex64), true},
		{"SHA256:" + hex64, true},
		{" sha256:" + hex64 + "\n", true},
		{"", false},
		{"sha256:", false},
		{"sha256:" + hex64[:63], false},
		{hex64 + "0", false},
		{"sha256:" + hex64[:62] + "zz", false},
		{"sha1:" + hex64, false},
		{"sha256:sha256:" + hex64, false},
		{"md5:" + hex64[:32], false},
	} {
		err := ValidatePin(tt.pin)
		if (err == nil) != tt.ok {
			t.Errorf("ValidatePin(%q) = %v, want ok=%v", tt.pin, err, tt.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "64 hex digits") || !strings.Contains(err.Error(), `"sha256:"`)) {
			t.Errorf("error %q does not name the accepted form", err)
		}
	}
}

func BenchmarkForNameCached(b *testing.B) {
	ca := newCA(b, newMemStore())
	if _, err := ca.ForName("bench.test"); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ca.ForName("bench.test"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ca.ForName("bench.test"); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
