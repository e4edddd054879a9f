// Package proxyproto carries the real client address across a proxy hop with
// the HAProxy PROXY protocol (v1 text, v2 binary): it encodes the header the
// gateway sends to backends, and wraps public listeners so that connections
// from operator-trusted load balancers must announce their client address.
// Encoding and parsing are done by github.com/pires/go-proxyproto.
package proxyproto

import (
	"fmt"
	"io"
	"net"
	"net/netip"

	pp "github.com/pires/go-proxyproto"
)

// Version is a PROXY protocol version: 1 (text) or 2 (binary).
type Version int

// The protocol versions.
const (
	V1 Version = 1
	V2 Version = 2
)

func (v Version) valid() error {
	if v != V1 && v != V2 {
		return fmt.Errorf("proxy protocol version %d: want 1 or 2", int(v))
	}
	return nil
}

// Header returns the encoded PROXY header for a TCP connection from src (the
// client) to dst (the address the client connected to). Any net.Addr whose
// String is host:port with an IP host is accepted; *net.TCPAddr and
// *net.UDPAddr are read directly. IPv4-mapped IPv6 addresses count as IPv4
// and zones are dropped.
//
// When both addresses are IPv4 the header says TCP4 (v1) or TCP over IPv4
// (v2); otherwise it says TCP6 / TCP over IPv6, and an IPv4 address on one
// side is sent IPv4-mapped (::ffff:a.b.c.d), as go-proxyproto does. A header
// is never silently downgraded to UNKNOWN/LOCAL: an address that is missing
// or not an IP address is an error.
func Header(v Version, src, dst net.Addr) ([]byte, error) {
	if err := v.valid(); err != nil {
		return nil, err
	}
	s, d, err := addrPorts(src, dst)
	if err != nil {
		return nil, err
	}
	h := pp.HeaderProxyFromAddrs(byte(v), net.TCPAddrFromAddrPort(s), net.TCPAddrFromAddrPort(d))
	return format(h)
}

// HeaderUDP returns the encoded v2 PROXY header (DGRAM over IPv4 or IPv6) for
// a UDP flow from src to dst; version 1 has no datagram form. The addresses
// are read and the family chosen as in Header. Per the spec, a UDP sender
// puts the header at the start of every datagram.
func HeaderUDP(src, dst net.Addr) ([]byte, error) {
	s, d, err := addrPorts(src, dst)
	if err != nil {
		return nil, err
	}
	h := pp.HeaderProxyFromAddrs(byte(V2), net.UDPAddrFromAddrPort(s), net.UDPAddrFromAddrPort(d))
	return format(h)
}

// WriteHeader writes the PROXY header of Header(v, src, dst) to w in a single
// Write, so that on a fresh connection it leaves in the first segment ahead
// of any application data.
func WriteHeader(w io.Writer, v Version, src, dst net.Addr) error {
	b, err := Header(v, src, dst)
	if err != nil {
		return err
	}
	n, err := w.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write proxy protocol header: %w", err)
	}
	return nil
}

// LocalHeader returns the PROXY header of version v for a connection the
// proxy makes on its own behalf, such as a health check: v1 "PROXY
// UNKNOWN", v2 the LOCAL command. A receiver keeps the socket's addresses.
func LocalHeader(v Version) ([]byte, error) {
	if err := v.valid(); err != nil {
		return nil, err
	}
	if v == V1 {
		return []byte("PROXY UNKNOWN\r\n"), nil
	}
	return (&pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}).Format()
}

func format(h *pp.Header) ([]byte, error) {
	if h.Command != pp.PROXY {
		// HeaderProxyFromAddrs falls back to LOCAL only for address types
		// addrPorts never produces; refuse rather than hide the client.
		return nil, fmt.Errorf("encode proxy protocol header: no address family for %v -> %v", h.SourceAddr, h.DestinationAddr)
	}
	b, err := h.Format()
	if err != nil {
		return nil, fmt.Errorf("encode proxy protocol header: %w", err)
	}
	return b, nil
}

func addrPorts(src, dst net.Addr) (s, d netip.AddrPort, err error) {
	if s, err = addrPort(src); err != nil {
		return s, d, fmt.Errorf("proxy protocol source address: %w", err)
	}
	if d, err = addrPort(dst); err != nil {
		return s, d, fmt.Errorf("proxy protocol destination address: %w", err)
	}
	return s, d, nil
}

// addrPort returns a's IP and port, unmapped and without zone.
func addrPort(a net.Addr) (netip.AddrPort, error) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case nil:
		return ap, fmt.Errorf("missing")
	case *net.TCPAddr:
		if a != nil {
			ap = a.AddrPort()
		}
	case *net.UDPAddr:
		if a != nil {
			ap = a.AddrPort()
		}
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return ap, fmt.Errorf("%q is not ip:port", a.String())
		}
	}
	if !ap.Addr().IsValid() {
		return ap, fmt.Errorf("%v has no IP address", a)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), nil
}
