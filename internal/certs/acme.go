package certs

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/webgw/webgw/internal/store"
)

// ACMEConfig configures an ACME certificate source.
type ACMEConfig struct {
	// CA is the ACME directory URL (Let's Encrypt, Pebble, ...).
	CA string
	// Email is the ACME account's contact; "" means none.
	Email string
	// EABKeyID and EABMACKey are the CA's external account binding, when
	// it asks for one; both or neither.
	EABKeyID, EABMACKey string
	// RootsFile is a PEM file of the CAs that sign the ACME server's own
	// TLS certificate (a test CA such as Pebble); "" means system roots.
	RootsFile string
	// Domain is the gateway domain: it gets a certificate for itself and
	// *.<domain> by DNS-01, answered by the gateway's DNS server.
	Domain string
	// DNS01 are the challenge records the gateway's DNS server answers.
	DNS01 *ChallengeRecords
	// Resolvers are the DNS servers (HOST:PORT) where DNS-01 records are
	// checked before the CA is asked to look: the gateway's own.
	Resolvers []string
	// Allowed decides on-demand issuance for a name the TLS handshake asks
	// for (a verified custom domain): nil refuses all of them.
	Allowed func(name string) bool
	// HTTPPort is the gateway's plain HTTP port, where it answers HTTP-01
	// challenges itself (HandleHTTPChallenge); 0 means 80.
	HTTPPort int
	// Storage keeps certificates, keys, the account and locks.
	Storage certmagic.Storage
	// RenewCheck is how often certificates are looked at for renewal
	// (renewed once a third of their lifetime is left); 0 means
	// certmagic's default (10 min).
	RenewCheck time.Duration
	// Log gets certmagic's messages; nil discards them.
	Log *slog.Logger
}

// ACME is a certificate Source that obtains and renews certificates from an
// ACME CA (certmagic): the gateway domain's wildcard by DNS-01, and
// verified custom domains on demand by HTTP-01.
type ACME struct {
	cache    *certmagic.Cache      // shared by both configs; Stop stops its maintenance
	managed  *certmagic.Config     // the gateway domain's certificate
	onDemand *certmagic.Config     // verified custom domains
	issuer   *certmagic.ACMEIssuer // onDemand's, which answers HTTP-01
	domain   string
	names    []string
}

var _ Source = (*ACME)(nil)

// NewACME makes the source; Manage starts obtaining certificates.
func NewACME(c ACMEConfig) (*ACME, error) {
	if c.CA == "" {
		return nil, errors.New("acme: no CA directory URL")
	}
	if (c.EABKeyID == "") != (c.EABMACKey == "") {
		return nil, errors.New("acme: external account binding needs both the key id and the MAC key")
	}
	var roots *x509.CertPool
	if c.RootsFile != "" {
		b, err := os.ReadFile(c.RootsFile)
		if err != nil {
			return nil, fmt.Errorf("acme: read CA roots: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("acme: %s holds no PEM certificate", c.RootsFile)
		}
	}
	// certmagic logs through zap; its events (obtained, renewed, failed)
	// are logged here instead.
	logger := zap.NewNop()
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	allowed := c.Allowed
	onEvent := func(_ context.Context, event string, data map[string]any) error {
		args := make([]any, 0, 2*len(data))
		for k, v := range data {
			args = append(args, k, fmt.Sprint(v))
		}
		log.Debug("acme "+event, args...)
		return nil
	}
	domain := strings.ToLower(c.Domain)
	// Two configs on one cache: the gateway domain's certificate is
	// managed (obtained at once, renewed ahead of expiry); custom domains
	// are obtained on demand, each only once Allowed says so. (certmagic
	// defers every name of a config with on-demand to the first handshake.)
	var managed, onDemand *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(cert certmagic.Certificate) (*certmagic.Config, error) {
			for _, n := range cert.Names {
				if n == domain || n == "*."+domain {
					return managed, nil
				}
			}
			return onDemand, nil
		},
		Logger:             logger,
		RenewCheckInterval: c.RenewCheck,
	})
	managed = certmagic.New(cache, certmagic.Config{Storage: c.Storage, Logger: logger, OnEvent: onEvent})
	onDemand = certmagic.New(cache, certmagic.Config{
		Storage: c.Storage,
		Logger:  logger,
		OnEvent: onEvent,
		OnDemand: &certmagic.OnDemandConfig{
			DecisionFunc: func(_ context.Context, name string) error {
				if allowed == nil || !allowed(strings.ToLower(name)) {
					return fmt.Errorf("%s is not a verified domain of this gateway", name)
				}
				return nil
			},
		},
	})
	httpPort := c.HTTPPort
	if httpPort == 0 {
		httpPort = 80
	}
	tmpl := certmagic.ACMEIssuer{
		CA:                      c.CA,
		Email:                   c.Email,
		Agreed:                  true,
		TrustedRoots:            roots,
		DisableTLSALPNChallenge: true,
		// The gateway holds this port and answers HTTP-01 itself
		// (HandleHTTPChallenge), so certmagic does not listen.
		AltHTTPPort: httpPort,
		Logger:      logger,
	}
	if c.EABKeyID != "" {
		tmpl.ExternalAccount = &acme.EAB{KeyID: c.EABKeyID, MACKey: c.EABMACKey}
	}
	if c.DNS01 != nil {
		tmpl.DNS01Solver = &certmagic.DNS01Solver{DNSManager: certmagic.DNSManager{
			DNSProvider: c.DNS01,
			Resolvers:   c.Resolvers,
			// The records are in the store every gateway answers from,
			// a watch away: in a cluster the CA may ask another gateway,
			// whose watch needs some milliseconds to see the record; a
			// second covers that (checking the name servers themselves
			// needs them on port 53, which tests and some set-ups lack).
			PropagationDelay:   time.Second,
			PropagationTimeout: -1,
			Logger:             logger,
		}}
	}
	managed.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(managed, tmpl)}
	odTmpl := tmpl
	odTmpl.DNS01Solver = nil // custom domains prove control over HTTP-01
	issuer := certmagic.NewACMEIssuer(onDemand, odTmpl)
	onDemand.Issuers = []certmagic.Issuer{issuer}
	a := &ACME{cache: cache, managed: managed, onDemand: onDemand, issuer: issuer, domain: domain}
	if domain != "" {
		a.names = []string{domain, "*." + domain}
	}
	return a, nil
}

// Manage starts obtaining (and renewing, until ctx ends) the gateway
// domain's certificates; it does not wait for them.
func (a *ACME) Manage(ctx context.Context) error {
	if len(a.names) == 0 {
		return nil
	}
	if err := a.managed.ManageAsync(ctx, a.names); err != nil {
		return fmt.Errorf("acme: manage %v: %w", a.names, err)
	}
	return nil
}

// ForName implements Source: the managed certificate that covers name
// (the wildcard for service names), or one obtained on demand for an
// allowed name.
func (a *ACME) ForName(name string) (*tls.Certificate, error) {
	name = canonicalName(name)
	hello := &tls.ClientHelloInfo{ServerName: name, Conn: noConn{}}
	if a.covered(name) {
		return a.managed.GetCertificate(hello)
	}
	return a.onDemand.GetCertificate(hello)
}

// Stop ends the renewal and maintenance of the certificates.
func (a *ACME) Stop() { a.cache.Stop() }

// covered reports whether name is the gateway domain or one label under it:
// what its managed certificates (apex and wildcard) cover.
func (a *ACME) covered(name string) bool {
	if a.domain == "" {
		return false
	}
	label, ok := strings.CutSuffix(name, "."+a.domain)
	return name == a.domain || ok && label != "" && !strings.Contains(label, ".")
}

// HandleHTTPChallenge answers an ACME HTTP-01 challenge request of this
// gateway's own issuance and reports whether it did.
func (a *ACME) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	return a.issuer.HandleHTTPChallenge(w, r)
}

// ChallengeRecords keeps the TXT records of DNS-01 challenges in the store
// (so every gateway of a cluster answers them) under ChallengePrefix +
// name + "/" + a hash of the value. It is the libdns provider certmagic
// writes them through; the DNS server answers them from a view of the
// prefix.
type ChallengeRecords struct {
	DB store.Store
}

// ChallengePrefix is the key prefix of DNS-01 challenge records.
const ChallengePrefix = "acme-dns01/"

// ChallengeKey is the key of TXT value text at name (a fully qualified
// name, without the trailing dot, lower case).
func ChallengeKey(name, text string) string {
	h := sha256.Sum256([]byte(text))
	return ChallengePrefix + name + "/" + hex.EncodeToString(h[:8])
}

// ChallengeName returns the name of a challenge record's key, or "".
func ChallengeName(key string) string {
	rest, ok := strings.CutPrefix(key, ChallengePrefix)
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	return name
}

func (c *ChallengeRecords) fqdn(zone, rel string) string {
	return strings.ToLower(strings.TrimSuffix(libdns.AbsoluteName(rel, zone), "."))
}

// AppendRecords implements libdns.RecordAppender for TXT records.
func (c *ChallengeRecords) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	for _, rec := range recs {
		rr := rec.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("acme dns-01: %s record not supported", rr.Type)
		}
		if _, err := c.DB.Put(ctx, ChallengeKey(c.fqdn(zone, rr.Name), rr.Data), []byte(rr.Data), store.AnyRev); err != nil {
			return nil, fmt.Errorf("acme dns-01: store %s: %w", rr.Name, err)
		}
	}
	return recs, nil
}

// DeleteRecords implements libdns.RecordDeleter.
func (c *ChallengeRecords) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	var deleted []libdns.Record
	for _, rec := range recs {
		rr := rec.RR()
		err := c.DB.Delete(ctx, ChallengeKey(c.fqdn(zone, rr.Name), rr.Data), store.AnyRev)
		if err == nil {
			deleted = append(deleted, rec)
		} else if !errors.Is(err, store.ErrNotFound) {
			return deleted, fmt.Errorf("acme dns-01: delete %s: %w", rr.Name, err)
		}
	}
	return deleted, nil
}

// noConn stands for the client's connection in the ClientHelloInfo
// certmagic is given (it logs its addresses); ForName has none.
type noConn struct{ net.Conn }

var unknownAddr = &net.TCPAddr{IP: net.IPv4zero}

func (noConn) RemoteAddr() net.Addr { return unknownAddr }
func (noConn) LocalAddr() net.Addr  { return unknownAddr }
