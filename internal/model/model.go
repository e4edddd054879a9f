// Package model holds webgw's domain objects (tenants, services) and their
// validation. It imports nothing of webgw's own, so every other package may use it.
package model

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// Protocol says how the gateway serves a service.
type Protocol string

// Service protocols.
const (
	// ProtoHTTP terminates TLS at the edge and proxies HTTP/1.1 to the backend.
	ProtoHTTP Protocol = "http"
	// ProtoH2C terminates TLS at the edge and speaks cleartext HTTP/2 to the backend (gRPC).
	ProtoH2C Protocol = "h2c"
	// ProtoTLS passes the client's TLS bytes through to a backend that holds its own certificate.
	ProtoTLS Protocol = "tls"
	// ProtoTCP forwards a public TCP port's bytes to the backend.
	ProtoTCP Protocol = "tcp"
	// ProtoUDP forwards a public UDP port's datagrams to the backend.
	ProtoUDP Protocol = "udp"
)

// Valid reports whether p is a protocol this version serves.
func (p Protocol) Valid() bool {
	switch p {
	case ProtoHTTP, ProtoH2C, ProtoTLS, ProtoTCP, ProtoUDP:
		return true
	}
	return false
}

// Forwarded reports whether p is served on a public port of its own (tcp,
// udp) rather than by name on the HTTPS port.
func (p Protocol) Forwarded() bool { return p == ProtoTCP || p == ProtoUDP }

// Terminates reports whether the edge terminates TLS for p (an HTTP service).
func (p Protocol) Terminates() bool { return p == ProtoHTTP || p == ProtoH2C }

// Tenant is who may own services. Its token is stored only as a hash.
type Tenant struct {
	Name      string    `json:"name"`
	TokenHash string    `json:"token_hash"`
	Created   time.Time `json:"created"`
}

// Service is what the public sees: a name under the gateway domain, owned by a
// tenant. Its upstreams are the agents connected for it (not stored: they come
// and go with their tunnels) plus the direct upstreams listed here.
type Service struct {
	Name     string    `json:"name"`
	Tenant   string    `json:"tenant"`
	Protocol Protocol  `json:"protocol"`
	Created  time.Time `json:"created"`
	// Upstreams are direct upstreams the gateway dials itself; empty means
	// the service is served by agents only.
	Upstreams []Upstream `json:"upstreams,omitempty"`
	// LB is the load-balancing policy; empty means round robin.
	LB LBPolicy `json:"lb,omitempty"`
	// Health configures active health checks; nil means none (passive
	// ejection still applies, and an agent's tunnel going away removes it).
	Health *HealthCheck `json:"health,omitempty"`
	// Passive configures passive ejection; nil means the defaults.
	Passive *PassiveHealth `json:"passive,omitempty"`
	// ProxyProtocol, when 1 or 2, makes the gateway send a PROXY protocol
	// header of that version (the client's address and port) as the first
	// bytes of every connection towards the backend; 0 sends none. For http
	// and h2c services an upstream connection then serves one client
	// connection only. Not for udp services.
	ProxyProtocol int `json:"proxy_protocol,omitempty"`
	// Ygg publishes the service on the gateway's Yggdrasil overlay address
	// too (HTTPS on port 443, HTTP redirects on 80), when the gateway runs
	// a node; false serves it on the public listeners only.
	Ygg bool `json:"ygg,omitempty"`
}

// reserved are labels no tenant may take: they name the gateway's own endpoints
// or are commonly used for phishing look-alikes of it.
var reserved = map[string]bool{
	"www": true, "api": true, "admin": true, "_acme-challenge": true, "acme": true,
	"ns": true, "ns1": true, "ns2": true, "ns3": true, "ns4": true, "dns": true,
	"mail": true, "smtp": true, "imap": true, "pop": true, "mx": true, "ftp": true,
	"gateway": true, "gw": true, "status": true, "metrics": true, "dashboard": true,
	"login": true, "auth": true, "root": true, "localhost": true, "webgw": true,
	"tunnel": true, "agent": true, "autoconfig": true, "autodiscover": true, "wpad": true,
}

// IsReserved reports whether name is reserved for the gateway itself.
func IsReserved(name string) bool { return reserved[strings.ToLower(name)] }

// ValidateName checks that name is a service name: one DNS label (RFC 1123:
// 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'),
// lowercase, and not reserved.
func ValidateName(name string) error {
	if err := validateLabel(name); err != nil {
		return fmt.Errorf("invalid name %q: %w", name, err)
	}
	if IsReserved(name) {
		return fmt.Errorf("invalid name %q: reserved for the gateway, choose another", name)
	}
	return nil
}

// ValidateTenantName checks a tenant name: the same syntax as a service name.
func ValidateTenantName(name string) error {
	if err := validateLabel(name); err != nil {
		return fmt.Errorf("invalid tenant name %q: %w", name, err)
	}
	return nil
}

func validateLabel(s string) error {
	if s == "" {
		return fmt.Errorf("empty; use 1-63 characters of a-z, 0-9 and '-'")
	}
	if len(s) > 63 {
		return fmt.Errorf("%d characters long; at most 63 are accepted", len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 {
				return fmt.Errorf("must not start or end with '-'")
			}
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("upper-case letter %q; use lower case a-z", c)
		default:
			return fmt.Errorf("character %q not accepted; use a-z, 0-9 and '-'", c)
		}
	}
	return nil
}

// TokenPrefix starts every tenant token, so leaked tokens are easy to recognise.
const TokenPrefix = "wgw_"

// NewToken returns a fresh random token (256 bits).
func NewToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never happens on Linux
	}
	return TokenPrefix + hex.EncodeToString(b[:])
}

// HashToken returns the hex SHA-256 of a token. Tokens carry 256 random bits,
// so a fast hash is enough: no dictionary exists to try against it.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}
