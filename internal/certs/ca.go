package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/store"
)

// Store keys.
const (
	keyCACert    = "ca/cert"            // PEM certificate of the local CA
	keyCAKey     = "ca/key"             // PEM PKCS#8 private key of the local CA
	keyTunnelKey = "gateway/tunnel-key" // PEM PKCS#8 private key of the gateway's tunnel identity
)

const (
	caValidity       = 10 * 365 * 24 * time.Hour
	leafValidity     = 90 * 24 * time.Hour
	identityValidity = 365 * 24 * time.Hour
	// backdate covers clocks of clients that run a little behind.
	backdate = time.Hour
	// defaultMaxCached is the leaf cache bound when MaxCached is 0.
	defaultMaxCached = 4096
	// caFileName is the CA certificate written into the data directory.
	caFileName = "ca.pem"
)

// LocalCA is a development certificate authority kept in the state store. It
// signs leaf certificates per server name on demand (ForName) and the
// gateway's tunnel identity (ServerIdentity). Create it with LoadOrCreateCA.
// Its methods are safe for concurrent use; set the configuration fields
// before the first ForName and do not change them afterwards.
type LocalCA struct {
	// MaxCached bounds the leaf certificates kept in memory; the least
	// recently used is dropped first. 0 (or less) means 4096.
	MaxCached int
	// Now is the clock used for validity periods and renewal; nil means time.Now.
	Now func() time.Time

	// Set by LoadOrCreateCA, read-only afterwards.
	st      store.Store
	log     *slog.Logger
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	pool    *x509.CertPool
	caFile  string // "" when no data directory was given

	// Test hooks, set only by tests before use. testHookIssue runs in the
	// goroutine that issues a leaf, before signing; testHookWait runs in a
	// goroutine about to wait for another's issuance of the same name.
	testHookIssue func(name string)
	testHookWait  func(name string)

	tick   atomic.Uint64 // LRU clock: advanced on every insert and cache hit
	issued atomic.Int64  // leaf certificates signed, for tests

	mu       sync.RWMutex
	leaves   map[string]*leaf      // guarded by mu; at most maxCached entries
	inflight map[string]*issueCall // guarded by mu; issuances under way, by name
}

// LoadOrCreateCA loads the local CA from st, or creates it there when st has
// none. Creation is create-only, so processes sharing a store agree on one
// CA. When dataDir is not empty, the CA certificate is then written to
// <dataDir>/ca.pem (mode 0644; the directory is created 0700), replacing the
// file atomically and only when its content differs. log may be nil.
func LoadOrCreateCA(ctx context.Context, st store.Store, dataDir string, log *slog.Logger) (*LocalCA, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, keyCreated, err := loadOrCreateKey(ctx, st, keyCAKey)
	if err != nil {
		return nil, fmt.Errorf("load local ca: %w", err)
	}
	certPEM, certCreated, err := getOrCreate(ctx, st, keyCACert, func() ([]byte, error) {
		return newCACert(key, time.Now())
	})
	if err != nil {
		return nil, fmt.Errorf("load local ca: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load local ca: %s: %w", keyCACert, err)
	}
	if err := checkCA(cert, key); err != nil {
		return nil, fmt.Errorf("load local ca: %w", err)
	}

	ca := &LocalCA{
		st:       st,
		log:      log,
		cert:     cert,
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:      key,
		pool:     x509.NewCertPool(),
		leaves:   make(map[string]*leaf),
		inflight: make(map[string]*issueCall),
	}
	ca.pool.AddCert(cert)
	if keyCreated || certCreated {
		log.Info("created local CA", "subject", cert.Subject.CommonName, "expires", cert.NotAfter)
	}
	if until := time.Until(cert.NotAfter); until < 0 {
		return nil, fmt.Errorf("load local ca: certificate %q expired at %s; delete store keys %s and %s to create a new CA",
			cert.Subject.CommonName, cert.NotAfter.Format(time.RFC3339), keyCACert, keyCAKey)
	} else if until < 365*24*time.Hour {
		log.Warn("local CA expires soon", "subject", cert.Subject.CommonName, "expires", cert.NotAfter)
	}

	if dataDir != "" {
		ca.caFile = filepath.Join(dataDir, caFileName)
		changed, err := writeFileIfChanged(ca.caFile, ca.certPEM, 0o644)
		if err != nil {
			return nil, fmt.Errorf("load local ca: write %s: %w", ca.caFile, err)
		}
		if changed {
			log.Info("wrote local CA certificate", "path", ca.caFile)
		}
	}
	return ca, nil
}

// CertPEM returns the CA certificate, PEM encoded. The slice is the caller's.
func (ca *LocalCA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Pool returns a new certificate pool holding only the CA certificate.
func (ca *LocalCA) Pool() *x509.CertPool { return ca.pool.Clone() }

// CAFile returns the path of the ca.pem file written by LoadOrCreateCA, or ""
// when it was given no data directory.
func (ca *LocalCA) CAFile() string { return ca.caFile }

// ServerIdentity signs the gateway's own certificate for agent tunnel
// connections, valid for a year for the given DNS names and IP addresses.
// The key is kept in the store (created once, shared by processes on the same
// store), so its Fingerprint is stable across restarts and agents can pin it;
// the certificate is signed anew at each call, so call it once at start.
func (ca *LocalCA) ServerIdentity(ctx context.Context, dnsNames []string, ips []net.IP) (*tls.Certificate, error) {
	names := make([]string, 0, len(dnsNames))
	for _, n := range dnsNames {
		n = canonicalName(n)
		if err := checkDNSName(n); err != nil {
			return nil, fmt.Errorf("server identity: %w", err)
		}
		names = append(names, n)
	}
	addrs := make([]net.IP, 0, len(ips))
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, fmt.Errorf("server identity: invalid IP address %v", ip)
		}
		if ip4 := ip.To4(); ip4 != nil {
			ip = ip4
		}
		addrs = append(addrs, ip)
	}
	key, created, err := loadOrCreateKey(ctx, ca.st, keyTunnelKey)
	if err != nil {
		return nil, fmt.Errorf("server identity: %w", err)
	}
	if created {
		ca.log.Info("created gateway tunnel key", "key", keyTunnelKey)
	}
	cn := "webgw gateway"
	if len(names) > 0 {
		cn = names[0]
	}
	now := ca.now()
	cert, err := ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    names,
		IPAddresses: addrs,
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(identityValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("server identity: %w", err)
	}
	return cert, nil
}

func (ca *LocalCA) now() time.Time {
	if ca.Now != nil {
		return ca.Now()
	}
	return time.Now()
}

// sign completes tmpl (serial number, basic constraints, and a NotAfter no
// later than the CA's) and signs it for key's public key with the CA.
func (ca *LocalCA) sign(tmpl *x509.Certificate, key crypto.Signer) (*tls.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.BasicConstraintsValid = true
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, ca.cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// getOrCreate returns the value at key, creating it with create and a
// create-only Put when it is missing. When another process creates the key
// first, its value is read back and returned; created reports whether this
// call wrote the value.
func getOrCreate(ctx context.Context, st store.Store, key string, create func() ([]byte, error)) (value []byte, created bool, err error) {
	e, err := st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		v, cerr := create()
		if cerr != nil {
			return nil, false, fmt.Errorf("create %s: %w", key, cerr)
		}
		_, perr := st.Put(ctx, key, v, 0)
		if perr == nil {
			return v, true, nil
		}
		if !errors.Is(perr, store.ErrConflict) {
			return nil, false, fmt.Errorf("put %s: %w", key, perr)
		}
		e, err = st.Get(ctx, key) // another process created it first: use theirs
	}
	if err != nil {
		return nil, false, fmt.Errorf("get %s: %w", key, err)
	}
	return e.Value, false, nil
}

// loadOrCreateKey returns the private key at key, creating an ECDSA P-256 key
// there when it is missing.
func loadOrCreateKey(ctx context.Context, st store.Store, key string) (crypto.Signer, bool, error) {
	v, created, err := getOrCreate(ctx, st, key, func() ([]byte, error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("marshal key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	})
	if err != nil {
		return nil, false, err
	}
	signer, err := parseKey(v)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", key, err)
	}
	return signer, created, nil
}

func parseKey(pemBytes []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("parse key: want a PEM \"PRIVATE KEY\" block (PKCS#8)")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse key: %T cannot sign", k)
	}
	return signer, nil
}

func parseCert(pemBytes []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("parse certificate: want a PEM \"CERTIFICATE\" block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

// checkCA reports whether cert can act as a CA with key.
func checkCA(cert *x509.Certificate, key crypto.Signer) error {
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%s is not a CA certificate", keyCACert)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("%s does not match the key in %s", keyCACert, keyCAKey)
	}
	return nil
}

// newCACert self-signs a CA certificate for key, PEM encoded.
func newCACert(key crypto.Signer, now time.Time) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	id := make([]byte, 4)
	rand.Read(id)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "webgw local CA " + hex.EncodeToString(id), Organization: []string{"webgw"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign ca certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// newSerial returns a random positive 127-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// writeFileIfChanged writes data to path unless the file already holds it,
// through a temporary file in the same directory and a rename, so readers
// never see a partial file. It creates the directory (0700) when missing.
func writeFileIfChanged(path string, data []byte, perm os.FileMode) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return false, fmt.Errorf("write temporary file: %w", err)
	}
	if err := f.Chmod(perm); err != nil {
		return false, fmt.Errorf("chmod temporary file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("sync temporary file: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("close temporary file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("rename temporary file: %w", err)
	}
	return true, nil
}
