package model

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// DomainState is where a custom domain stands in its proof of control.
type DomainState string

// Domain states. Only a verified domain is served.
const (
	// DomainPending: added, never proven yet.
	DomainPending DomainState = "pending"
	// DomainVerified: proven; served. It stays verified while a failing
	// proof is within the grace period (FailingSince).
	DomainVerified DomainState = "verified"
	// DomainUnverified: was verified, then the proof stayed gone for the
	// whole grace period; not served until proven again.
	DomainUnverified DomainState = "unverified"
)

// ChallengeLabel is the label under a custom domain (or a tenant's DNS
// zone) whose TXT record must hold its token: _webgw-challenge.www.example.com.
const ChallengeLabel = "_webgw-challenge"

// MaxDomainName is the longest domain name accepted (RFC 1035, without the
// trailing dot).
const MaxDomainName = 253

// Domain is a custom domain a tenant attaches to one of its services. It is
// served like SERVICE.<gateway domain> once the tenant proved control of it
// with DNS records (ChallengeName holding Token, and a CNAME to the
// service's gateway name or A/AAAA records of the gateway's addresses).
type Domain struct {
	// Name is the custom domain, lower case, without a trailing dot.
	Name string `json:"name"`
	// Tenant owns the domain; one domain belongs to one tenant.
	Tenant string `json:"tenant"`
	// Service is the tenant's service the domain is served by.
	Service string `json:"service"`
	// Token is the value the TXT record must hold; public, not a secret.
	Token string      `json:"token"`
	State DomainState `json:"state"`
	// Reason says why the last check failed; empty after a good one.
	Reason  string    `json:"reason,omitempty"`
	Created time.Time `json:"created"`
	// CheckedAt is the time of the last check; zero before the first.
	CheckedAt time.Time `json:"checked_at,omitzero"`
	// VerifiedAt is the time of the last good check; zero if never.
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// FailingSince is when the proof of a verified domain was first found
	// gone; zero while it holds. The grace period runs from here.
	FailingSince time.Time `json:"failing_since,omitzero"`
}

// ChallengeName is the name of the TXT record proving control of domain.
func ChallengeName(domain string) string { return ChallengeLabel + "." + domain }

// NewDomainToken returns a fresh random proof token.
func NewDomainToken() string {
	b := make([]byte, 20)
	rand.Read(b)
	return "webgw-verify=" + hex.EncodeToString(b)
}

// ApplyCheck records the result of a check at now: reason is "" when the
// proof holds. A verified domain whose proof is gone stays verified for
// grace after it was first found gone, then becomes unverified.
func (d *Domain) ApplyCheck(reason string, now time.Time, grace time.Duration) {
	d.CheckedAt = now
	d.Reason = reason
	if reason == "" {
		d.State = DomainVerified
		d.VerifiedAt = now
		d.FailingSince = time.Time{}
		return
	}
	if d.State != DomainVerified {
		return
	}
	if d.FailingSince.IsZero() {
		d.FailingSince = now
	}
	if now.Sub(d.FailingSince) >= grace {
		d.State = DomainUnverified
		d.FailingSince = time.Time{}
	}
}

// ValidateDomainName checks a custom domain name: lower case, at most 253
// characters, at least two dot-separated labels of 1-63 characters of a-z,
// 0-9 and '-' (not starting or ending with '-'), the last not all digits.
// Internationalised names must be given in their ASCII (xn--) form.
func ValidateDomainName(name string) error {
	if name == "" {
		return fmt.Errorf("invalid domain name \"\": empty; give a name such as www.example.com")
	}
	if len(name) > MaxDomainName {
		return fmt.Errorf("invalid domain name %.40q...: %d characters long; at most %d are accepted", name, len(name), MaxDomainName)
	}
	if strings.HasSuffix(name, ".") {
		return fmt.Errorf("invalid domain name %q: drop the trailing dot", name)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return fmt.Errorf("invalid domain name %q: one label; give a full name such as www.example.com", name)
	}
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("invalid domain name %q: empty label", name)
		}
		if err := validateLabel(l); err != nil {
			return fmt.Errorf("invalid domain name %q: label %q: %w", name, l, err)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("invalid domain name %q: an address, not a name", name)
	}
	return nil
}

// IsUnder reports whether name is domain itself or a name below it.
func IsUnder(name, domain string) bool {
	return name == domain || strings.HasSuffix(name, "."+domain)
}
