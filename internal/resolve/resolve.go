// Package resolve looks up the DNS records that prove control of a name
// (TXT, CNAME, A/AAAA) through the resolvers the operator configured
// (--resolver), or the system's when none are, with miekg/dns.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// Resolver asks recursive resolvers. The zero value uses the system's
// (/etc/resolv.conf).
type Resolver struct {
	// Servers are HOST:PORT of the resolvers to ask, in order; empty means
	// the system's.
	Servers []string
	// Timeout bounds one exchange; 0 means 3 s.
	Timeout time.Duration
}

// ErrNotFound is returned when the name or the record type does not exist
// (NXDOMAIN, or no record of the type).
var ErrNotFound = errors.New("no such record")

// ParseServer checks a --resolver value: an IP address, with an optional
// port (53 by default). It returns HOST:PORT.
func ParseServer(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53).String(), nil
	}
	return "", fmt.Errorf("%q is not an IP address with an optional port (192.0.2.53, [2001:db8::53]:5353)", s)
}

func (r *Resolver) servers() ([]string, error) {
	if len(r.Servers) > 0 {
		return r.Servers, nil
	}
	cfg, err := mdns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errors.New("no resolver configured (--resolver) and no /etc/resolv.conf")
		}
		return nil, fmt.Errorf("read /etc/resolv.conf: %w", err)
	}
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	return out, nil
}

// Lookup asks for the records of type qtype at name and returns those of
// that type (following no CNAME unless qtype is CNAME: the answer's
// records of type qtype are returned as they come). A name or type that
// does not exist returns ErrNotFound.
func (r *Resolver) Lookup(ctx context.Context, name string, qtype uint16) ([]mdns.RR, error) {
	servers, err := r.servers()
	if err != nil {
		return nil, err
	}
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	var lastErr error
	for _, srv := range servers {
		c := &mdns.Client{Timeout: timeout, UDPSize: 1232}
		resp, _, err := c.ExchangeContext(ctx, m, srv)
		if err == nil && resp.Truncated {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, m, srv)
		}
		if err != nil {
			lastErr = fmt.Errorf("ask %s for %s %s: %w", srv, name, mdns.TypeToString[qtype], err)
			continue
		}
		switch resp.Rcode {
		case mdns.RcodeSuccess:
		case mdns.RcodeNameError:
			return nil, fmt.Errorf("%s %s: %w (NXDOMAIN)", name, mdns.TypeToString[qtype], ErrNotFound)
		default:
			lastErr = fmt.Errorf("ask %s for %s %s: %s", srv, name, mdns.TypeToString[qtype], mdns.RcodeToString[resp.Rcode])
			continue
		}
		var out []mdns.RR
		for _, rr := range resp.Answer {
			if rr.Header().Rrtype == qtype {
				out = append(out, rr)
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s %s: %w", name, mdns.TypeToString[qtype], ErrNotFound)
		}
		return out, nil
	}
	return nil, lastErr
}

// TXT returns the strings of the TXT records at name, each record's
// strings joined.
func (r *Resolver) TXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.Lookup(ctx, name, mdns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*mdns.TXT).Txt, ""))
	}
	return out, nil
}

// CNAME returns the target of the CNAME at name (lower case, no trailing
// dot).
func (r *Resolver) CNAME(ctx context.Context, name string) (string, error) {
	rrs, err := r.Lookup(ctx, name, mdns.TypeCNAME)
	if err != nil {
		return "", err
	}
	return strings.ToLower(strings.TrimSuffix(rrs[0].(*mdns.CNAME).Target, ".")), nil
}

// Addrs returns the A and AAAA addresses of name; ErrNotFound when it has
// neither.
func (r *Resolver) Addrs(ctx context.Context, name string) ([]netip.Addr, error) {
	var out []netip.Addr
	var firstErr error
	for _, t := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		rrs, err := r.Lookup(ctx, name, t)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, rr := range rrs {
			var ip net.IP
			switch v := rr.(type) {
			case *mdns.A:
				ip = v.A
			case *mdns.AAAA:
				ip = v.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	if len(out) == 0 {
		if firstErr != nil {
			return nil, firstErr
		}
		return nil, fmt.Errorf("%s A/AAAA: %w", name, ErrNotFound)
	}
	return out, nil
}
