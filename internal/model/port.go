package model

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PortProto is the transport of a public port.
type PortProto string

// Port protocols.
const (
	PortTCP PortProto = "tcp"
	PortUDP PortProto = "udp"
)

// Valid reports whether p is tcp or udp.
func (p PortProto) Valid() bool { return p == PortTCP || p == PortUDP }

// MaxPort is the highest port number.
const MaxPort = 65535

// Port is a public port the gateway forwards to a service. It is a resource
// owned like a name: allocated from the operator's range, kept in the store
// across restarts and released when its owner deletes it.
type Port struct {
	Proto  PortProto `json:"proto"`
	Number int       `json:"number"`
	// Tenant owns the port; empty means an anonymous quick tunnel.
	Tenant string `json:"tenant"`
	// Service is the service the port forwards to; empty for an SNI port.
	Service string `json:"service,omitempty"`
	// SNI makes a tcp port shared by the tenant's tls (passthrough)
	// services: each connection goes to the service its TLS ClientHello
	// names (NAME.<domain>).
	SNI     bool      `json:"sni,omitempty"`
	Created time.Time `json:"created"`
}

// String is "tcp/20000".
func (p Port) String() string { return string(p.Proto) + "/" + strconv.Itoa(p.Number) }

// ValidatePort checks that n is a port number, 1-65535.
func ValidatePort(n int) error {
	if n < 1 || n > MaxPort {
		return fmt.Errorf("port %d not accepted; use 1-%d", n, MaxPort)
	}
	return nil
}

// PortRange is the inclusive range First-Last of ports the operator lets
// the gateway hand out. The zero value is empty: it contains no port.
type PortRange struct{ First, Last int }

// portRangeForm names the accepted syntax in errors.
const portRangeForm = "use FIRST-LAST such as 20000-29999, or one port such as 20000 (ports 1-65535)"

// ParsePortRange reads "FIRST-LAST" (such as "20000-29999") or a single
// port ("20000"). Ports are 1-65535 and FIRST must not exceed LAST.
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(s, "-")
	if !isRange {
		last = first
	}
	a, err := parsePortNumber(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %v; %s", s, err, portRangeForm)
	}
	b, err := parsePortNumber(last)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %v; %s", s, err, portRangeForm)
	}
	if a > b {
		return PortRange{}, fmt.Errorf("port range %q: first port %d is above last port %d; %s", s, a, b, portRangeForm)
	}
	return PortRange{First: a, Last: b}, nil
}

// parsePortNumber accepts 1-5 decimal digits (no sign, no spaces) giving 1-65535.
func parsePortNumber(s string) (int, error) {
	if s == "" {
		return 0, fmt.Errorf("a port number is missing")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not a port number", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxPort {
		return 0, fmt.Errorf("port %s is outside 1-%d", s, MaxPort)
	}
	return n, nil
}

// Valid reports whether r is a non-empty range of valid ports.
func (r PortRange) Valid() bool { return r.First >= 1 && r.Last <= MaxPort && r.First <= r.Last }

// Contains reports whether port n is in r.
func (r PortRange) Contains(n int) bool { return r.Valid() && n >= r.First && n <= r.Last }

// Size is the number of ports in r; 0 for an empty or invalid range.
func (r PortRange) Size() int {
	if !r.Valid() {
		return 0
	}
	return r.Last - r.First + 1
}

// String is "FIRST-LAST", or "FIRST" for a range of one port; ParsePortRange reads it back.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(r.First)
	}
	return strconv.Itoa(r.First) + "-" + strconv.Itoa(r.Last)
}
