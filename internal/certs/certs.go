// Package certs provides the gateway's certificates: a local development CA
// that signs per-name leaf certificates on demand, and the gateway's own TLS
// identity. ACME comes later behind the same Source interface.
package certs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Source gives the certificate to present for a TLS server name. The local CA
// implements it now; ACME will later.
type Source interface {
	// ForName returns a certificate valid for the DNS name, which the
	// implementation may cache. Names are matched case-insensitively and a
	// trailing dot is ignored.
	ForName(name string) (*tls.Certificate, error)
}

var _ Source = (*LocalCA)(nil)

// GetCertificate adapts src to tls.Config.GetCertificate, choosing the
// certificate by the client's SNI name. A ClientHello without SNI is refused;
// other names go to src unchecked, so use it behind a router that only hands
// over connections for names it serves.
func GetCertificate(src Source) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if hello.ServerName == "" {
			return nil, errors.New("get certificate: client sent no server name (SNI)")
		}
		return src.ForName(hello.ServerName)
	}
}

// canonicalName lower-cases name and drops one trailing dot. It does not
// allocate for names that are already canonical, which keeps cache hits cheap.
func canonicalName(name string) string {
	name = strings.TrimSuffix(name, ".")
	return strings.ToLower(name)
}

// checkDNSName reports whether name (already canonical) can be a certificate's
// DNS subject alternative name.
func checkDNSName(name string) error {
	const accepted = "want dot-separated labels of 1 to 63 letters, digits, '-' or '_', at most 253 characters"
	if name == "" {
		return errors.New("invalid DNS name \"\": empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("invalid DNS name %q: too long; %s", name, accepted)
	}
	if net.ParseIP(name) != nil {
		return fmt.Errorf("invalid DNS name %q: an IP address, not a name", name)
	}
	// One leading wildcard label, over at least two labels (as browsers and
	// OpenSSL require), for a name's unknown children.
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		if !strings.Contains(rest, ".") {
			return fmt.Errorf("invalid DNS name %q: a wildcard needs at least two labels after \"*.\"", name)
		}
		name = rest
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("invalid DNS name %q: label %q; %s", name, label, accepted)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("invalid DNS name %q: label %q starts or ends with '-'", name, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid DNS name %q: character %q; %s", name, c, accepted)
			}
		}
	}
	return nil
}
