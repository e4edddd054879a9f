package netpolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// keepAlive is the TCP keep-alive period of upstream connections.
const keepAlive = 30 * time.Second

// Dialer returns a dialer whose every connection attempt is checked: its
// ControlContext runs Check on the address actually being connected, after
// DNS resolution, so a name that resolves (or is rebound) to a forbidden
// address is refused at connect time with an error wrapping ErrForbidden.
// When a name has several addresses the dialer goes on to the next one.
// timeout 0 means no timeout beyond the context's deadline.
func (p *Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout:        timeout,
		KeepAlive:      keepAlive,
		ControlContext: p.control,
	}
}

func (p *Policy) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &forbiddenError{msg: fmt.Sprintf("%s address %q is not an IP address and port", network, address)}
	}
	return p.Check(ap.Addr())
}

// CheckUpstream checks an upstream before it is dialled: an IP-literal
// host is checked with Check; a DNS name returns nil, since what it
// resolves to can change and is checked by the Dialer at connect time.
func (p *Policy) CheckUpstream(u model.ParsedUpstream) error {
	a := u.Addr
	if !a.IsValid() {
		var err error
		if a, err = netip.ParseAddr(u.Host); err != nil {
			return nil
		}
	}
	if err := p.Check(a); err != nil {
		return fmt.Errorf("upstream %s: %w", upstreamName(u), err)
	}
	return nil
}

// TLSOptions asks DialUpstream for a TLS client handshake (TLS 1.2 or
// later) on the upstream connection.
type TLSOptions struct {
	// Insecure skips verifying the upstream's certificate.
	Insecure bool
	// ServerName is the name sent as SNI and verified; empty means the
	// upstream's host.
	ServerName string
	// NextProtos is the ALPN protocols offered; nil offers none.
	NextProtos []string
	// RootCAs verifies the upstream's certificate; nil means the system roots.
	RootCAs *x509.CertPool
}

// DialUpstream connects to u over TCP (UDP for a udp:// upstream: a
// connected socket) through the checked Dialer; the timeout is the
// context's deadline. With t nil it returns the TCP
// connection; otherwise it does a TLS client handshake as t says and
// returns the *tls.Conn. Errors name the upstream; a refusal by the
// policy wraps ErrForbidden.
func (p *Policy) DialUpstream(ctx context.Context, u model.ParsedUpstream, t *TLSOptions) (net.Conn, error) {
	return p.DialUpstreamVia(ctx, u, t, nil)
}

// DialFunc connects to network and address, as net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// DialUpstreamVia is DialUpstream whose connection is made by dial instead
// of the host's network (an overlay's userspace stack); nil dial means the
// checked Dialer. dial is given the upstream's address only after Check
// allowed it, so it must be an IP literal: with a DNS name the address
// dial connects to could not be checked, and the dial is refused.
func (p *Policy) DialUpstreamVia(ctx context.Context, u model.ParsedUpstream, t *TLSOptions, dial DialFunc) (net.Conn, error) {
	name := upstreamName(u)
	if u.Host == "" || u.Port == 0 {
		return nil, fmt.Errorf("dial upstream %s: no host or port", name)
	}
	if err := p.CheckUpstream(u); err != nil {
		return nil, fmt.Errorf("dial %w", err)
	}
	network := "tcp"
	if u.Scheme == "udp" {
		network = "udp" // a connected UDP socket: one Write, one datagram
		t = nil
	}
	if dial == nil {
		dial = p.Dialer(0).DialContext
	} else if _, err := netip.ParseAddr(u.Host); err != nil && !u.Addr.IsValid() {
		return nil, fmt.Errorf("dial upstream %s: the host must be an IP address on this network", name)
	}
	c, err := dial(ctx, network, u.HostPort())
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", name, err)
	}
	if t == nil {
		return c, nil
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.Insecure,
		NextProtos:         t.NextProtos,
		RootCAs:            t.RootCAs,
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Host
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake with upstream %s: %w", name, err)
	}
	return tc, nil
}

// upstreamName is scheme://host:port, or host:port without a scheme.
func upstreamName(u model.ParsedUpstream) string {
	if u.Scheme == "" {
		return u.HostPort()
	}
	return u.Scheme + "://" + u.HostPort()
}
