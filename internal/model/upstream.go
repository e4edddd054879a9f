package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// LBPolicy is how a service's requests are spread over its upstreams.
type LBPolicy string

// Load-balancing policies.
const (
	// LBRoundRobin takes upstreams in turn, in proportion to their weights (the default).
	LBRoundRobin LBPolicy = "round_robin"
	// LBLeastRequest takes the upstream with the fewest outstanding requests per unit of weight.
	LBLeastRequest LBPolicy = "least_request"
	// LBIPHash takes the upstream a consistent hash of the client IP picks
	// (sticky: a client keeps its upstream while that one is healthy).
	LBIPHash LBPolicy = "ip_hash"
)

// Valid reports whether p is a known policy or empty (round robin).
func (p LBPolicy) Valid() bool {
	switch p {
	case "", LBRoundRobin, LBLeastRequest, LBIPHash:
		return true
	}
	return false
}

// Upstream is one direct upstream: a URL the gateway dials itself.
type Upstream struct {
	// URL is SCHEME://HOST:PORT with no path: http or https for an http
	// service (https: the gateway speaks TLS to the backend), h2c for an
	// h2c service, tls for a tls (passthrough) service. HOST is an IP
	// address (IPv6 in brackets) or a DNS name.
	URL string `json:"url"`
	// Weight is the share of traffic relative to the other upstreams, 1-1000; 0 means 1.
	Weight int `json:"weight,omitempty"`
	// TLSInsecure skips verifying an https upstream's certificate.
	TLSInsecure bool `json:"tls_insecure,omitempty"`
	// TLSServerName is the name verified (and sent as SNI) for an https
	// upstream; empty means the URL's host.
	TLSServerName string `json:"tls_server_name,omitempty"`
}

// HealthCheck configures active health checks of a service's upstreams.
type HealthCheck struct {
	// Type is "http" (a GET of Path) or "tcp" (a connect); empty means http.
	Type string `json:"type,omitempty"`
	// Path is the HTTP path checked; empty means "/".
	Path string `json:"path,omitempty"`
	// Status is the expected HTTP status; 0 means any of 200-399.
	Status int `json:"status,omitempty"`
	// Interval between checks of one upstream; 0 means 5 s.
	Interval Duration `json:"interval,omitempty"`
	// Timeout of one check; 0 means 2 s.
	Timeout Duration `json:"timeout,omitempty"`
	// HealthyThreshold is the consecutive passes that bring an unhealthy
	// upstream back; 0 means 2.
	HealthyThreshold int `json:"healthy_threshold,omitempty"`
	// UnhealthyThreshold is the consecutive failures that take a healthy
	// upstream out; 0 means 3.
	UnhealthyThreshold int `json:"unhealthy_threshold,omitempty"`
}

// PassiveHealth configures passive ejection: an upstream whose requests
// keep failing (connect errors, or 5xx answers) is taken out for a while.
type PassiveHealth struct {
	// MaxFailures is the consecutive failures that eject an upstream; 0
	// means 5, -1 turns passive ejection off.
	MaxFailures int `json:"max_failures,omitempty"`
	// Cooldown is how long an ejected upstream gets no traffic; 0 means 30 s.
	Cooldown Duration `json:"cooldown,omitempty"`
	// Ignore5xx counts only connect errors, not 5xx answers.
	Ignore5xx bool `json:"ignore_5xx,omitempty"`
}

// Limits on service settings.
const (
	MaxUpstreams = 64
	MaxWeight    = 1000
)

// Health check defaults, in one place.
const (
	DefaultHealthInterval     = 5 * time.Second
	DefaultHealthTimeout      = 2 * time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 3
	DefaultMaxFailures        = 5
	DefaultCooldown           = 30 * time.Second
)

// Duration is a time.Duration written in JSON as a Go duration string ("5s").
type Duration time.Duration

// MarshalJSON writes d as a string such as "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string such as "5s" or "250ms".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration string such as "5s" or "250ms"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`duration %q: want a duration such as "5s" or "250ms"`, s)
	}
	*d = Duration(v)
	return nil
}

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// ParsedUpstream is an upstream URL taken apart.
type ParsedUpstream struct {
	Scheme string
	// Host is the host without brackets; Addr is set when it is an IP address.
	Host string
	Addr netip.Addr
	Port uint16
}

// HostPort is "host:port" for dialling.
func (p ParsedUpstream) HostPort() string {
	return net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port)))
}

// ParseUpstreamURL checks raw as an upstream URL for a service of protocol
// proto and takes it apart. The port defaults to 80 for http and h2c, 443
// for https and tls.
func ParseUpstreamURL(raw string, proto Protocol) (ParsedUpstream, error) {
	var p ParsedUpstream
	if len(raw) > 512 {
		return p, fmt.Errorf("upstream URL is %d bytes long; at most 512 are accepted", len(raw))
	}
	u, err := url.Parse(raw)
	if err != nil {
		return p, fmt.Errorf("upstream URL %q: %v", raw, err)
	}
	p.Scheme = u.Scheme
	var accepted []string
	switch proto {
	case ProtoHTTP, "":
		accepted = []string{"http", "https"}
	case ProtoH2C:
		accepted = []string{"h2c"}
	case ProtoTLS:
		accepted = []string{"tls", "https"}
	case ProtoTCP:
		accepted = []string{"tcp"}
	case ProtoUDP:
		accepted = []string{"udp"}
	default:
		return p, fmt.Errorf("protocol %q has no direct upstreams", proto)
	}
	ok := false
	for _, a := range accepted {
		ok = ok || u.Scheme == a
	}
	if !ok {
		return p, fmt.Errorf("upstream URL %q: scheme %q not accepted for a %s service; use %s://HOST:PORT",
			raw, u.Scheme, protoName(proto), strings.Join(accepted, ":// or "))
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return p, fmt.Errorf("upstream URL %q: only SCHEME://HOST:PORT is accepted (no user, path, query or fragment)", raw)
	}
	host := u.Hostname()
	if host == "" {
		return p, fmt.Errorf("upstream URL %q: no host", raw)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return p, fmt.Errorf("upstream URL %q: IPv6 zones are not accepted", raw)
		}
		p.Addr = a
	} else if strings.Contains(host, ":") || validHostname(host) != nil {
		return p, fmt.Errorf("upstream URL %q: host %q is neither an IP address nor a DNS name", raw, host)
	}
	p.Host = host
	switch port := u.Port(); {
	case port != "":
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return p, fmt.Errorf("upstream URL %q: port %q; use 1-65535", raw, port)
		}
		p.Port = uint16(n)
	case u.Scheme == "https" || u.Scheme == "tls":
		p.Port = 443
	case u.Scheme == "tcp" || u.Scheme == "udp":
		return p, fmt.Errorf("upstream URL %q: a %s upstream needs a port (%s://HOST:PORT)", raw, u.Scheme, u.Scheme)
	default:
		p.Port = 80
	}
	return p, nil
}

func protoName(p Protocol) string {
	if p == "" {
		return string(ProtoHTTP)
	}
	return string(p)
}

// validHostname checks a DNS name: dot-separated labels of letters, digits and '-'.
func validHostname(h string) error {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return errors.New("bad length")
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return errors.New("bad label")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return errors.New("bad character")
			}
		}
	}
	return nil
}

// ValidateRouting checks the service's direct upstreams, policy and health
// settings. Errors name the field (upstreams[1].url, health.interval, ...).
func (s *Service) ValidateRouting() error {
	if len(s.Upstreams) > MaxUpstreams {
		return fmt.Errorf("upstreams: %d given; at most %d are accepted", len(s.Upstreams), MaxUpstreams)
	}
	seen := map[string]bool{}
	for i, u := range s.Upstreams {
		if _, err := ParseUpstreamURL(u.URL, s.Protocol); err != nil {
			return fmt.Errorf("upstreams[%d].url: %w", i, err)
		}
		if seen[u.URL] {
			return fmt.Errorf("upstreams[%d].url: %q is listed twice", i, u.URL)
		}
		seen[u.URL] = true
		if u.Weight < 0 || u.Weight > MaxWeight {
			return fmt.Errorf("upstreams[%d].weight: %d; use 1-%d (0 means 1)", i, u.Weight, MaxWeight)
		}
		if len(u.TLSServerName) > 253 {
			return fmt.Errorf("upstreams[%d].tls_server_name: too long", i)
		}
	}
	if !s.LB.Valid() {
		return fmt.Errorf("lb: %q not accepted; use round_robin, least_request or ip_hash", s.LB)
	}
	if h := s.Health; h != nil {
		switch h.Type {
		case "", "http", "tcp":
		default:
			return fmt.Errorf("health.type: %q not accepted; use http or tcp", h.Type)
		}
		if (s.Protocol == ProtoTLS || s.Protocol == ProtoTCP) && h.Type != "tcp" {
			return fmt.Errorf("health.type: a %s service is checked with tcp", s.Protocol)
		}
		if s.Protocol == ProtoUDP {
			return errors.New("health: udp services have no active checks (a silent backend is not a dead one); passive ejection still applies")
		}
		if h.Type == "tcp" && (h.Path != "" || h.Status != 0) {
			return errors.New("health.path and health.status apply to http checks only")
		}
		if h.Path != "" && (!strings.HasPrefix(h.Path, "/") || len(h.Path) > 1024 || strings.ContainsAny(h.Path, " \r\n\t")) {
			return fmt.Errorf("health.path: %q; use an absolute path such as /healthz", h.Path)
		}
		if h.Status != 0 && (h.Status < 100 || h.Status > 599) {
			return fmt.Errorf("health.status: %d; use 100-599 (0 means 200-399)", h.Status)
		}
		if h.Interval != 0 && (h.Interval.Std() < 100*time.Millisecond || h.Interval.Std() > time.Hour) {
			return fmt.Errorf("health.interval: %s; use 100ms-1h", h.Interval.Std())
		}
		if h.Timeout != 0 && (h.Timeout.Std() < 10*time.Millisecond || h.Timeout.Std() > time.Minute) {
			return fmt.Errorf("health.timeout: %s; use 10ms-1m", h.Timeout.Std())
		}
		if h.HealthyThreshold < 0 || h.HealthyThreshold > 100 {
			return fmt.Errorf("health.healthy_threshold: %d; use 1-100", h.HealthyThreshold)
		}
		if h.UnhealthyThreshold < 0 || h.UnhealthyThreshold > 100 {
			return fmt.Errorf("health.unhealthy_threshold: %d; use 1-100", h.UnhealthyThreshold)
		}
	}
	switch {
	case s.ProxyProtocol < 0 || s.ProxyProtocol > 2:
		return fmt.Errorf("proxy_protocol: %d; use 1 or 2 (0 means none)", s.ProxyProtocol)
	case s.ProxyProtocol != 0 && s.Protocol == ProtoUDP:
		return errors.New("proxy_protocol: not available for udp services")
	}
	if s.ProxyProtocol != 0 && s.Protocol.Terminates() {
		for i, u := range s.Upstreams {
			if strings.HasPrefix(u.URL, "https://") {
				return fmt.Errorf("upstreams[%d].url: an https upstream cannot be sent a PROXY header (it goes before the TLS handshake the gateway makes); use http:// or turn proxy_protocol off", i)
			}
		}
	}
	if p := s.Passive; p != nil {
		if p.MaxFailures < -1 || p.MaxFailures > 1000 {
			return fmt.Errorf("passive.max_failures: %d; use 1-1000, or -1 to turn passive ejection off", p.MaxFailures)
		}
		if p.Cooldown != 0 && (p.Cooldown.Std() < 100*time.Millisecond || p.Cooldown.Std() > time.Hour) {
			return fmt.Errorf("passive.cooldown: %s; use 100ms-1h", p.Cooldown.Std())
		}
	}
	return nil
}
