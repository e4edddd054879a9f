package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"

	mdns "github.com/miekg/dns"
)

// dnsRefMain is `bench dnsref -domain D -name N -ip IP`: the dns part's
// reference, a minimal authoritative server built on miekg/dns as the
// gateway's is. On one UDP port of -listen it answers A IP for N.D (and for
// D), NXDOMAIN with D's SOA for every other name under D, and REFUSED for
// the rest. It prints "udp ADDR" and serves until its stdin closes.
func dnsRefMain(args []string) int {
	fs := flag.NewFlagSet("dnsref", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1", "IP address to listen on")
	domain := fs.String("domain", dnsDomain, "zone")
	name := fs.String("name", dnsName, "the one name (a label under -domain) that has an A record")
	ip := fs.String("ip", dnsIP, "the A record's address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	addr, err := netip.ParseAddr(*ip)
	if err != nil || !addr.Is4() {
		fmt.Fprintf(os.Stderr, "dnsref: -ip %q is not an IPv4 address\n", *ip)
		return 2
	}
	pc, err := net.ListenPacket("udp", net.JoinHostPort(*listen, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsref:", err)
		return 1
	}
	if u, ok := pc.(*net.UDPConn); ok {
		u.SetReadBuffer(4 << 20)
		u.SetWriteBuffer(4 << 20)
	}
	z := newRefZone(*domain, *name, addr)
	srv := &mdns.Server{PacketConn: pc, Handler: z}
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	fmt.Printf("udp %s\n", pc.LocalAddr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		srv.Shutdown()
	}()
	if err := <-errc; err != nil && !strings.Contains(err.Error(), "closed") {
		fmt.Fprintln(os.Stderr, "dnsref:", err)
		return 1
	}
	return 0
}

// refZone is the reference's zone: one A record, everything else NXDOMAIN.
type refZone struct {
	apex, name string // fully qualified, lower case
	a          mdns.RR
	soa        mdns.RR
}

var _ mdns.Handler = (*refZone)(nil)

func newRefZone(domain, name string, ip netip.Addr) *refZone {
	apex := mdns.Fqdn(strings.ToLower(domain))
	fq := strings.ToLower(name) + "." + apex
	return &refZone{
		apex: apex,
		name: fq,
		a:    &mdns.A{Hdr: mdns.RR_Header{Name: fq, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: ip.AsSlice()},
		soa: &mdns.SOA{Hdr: mdns.RR_Header{Name: apex, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: 60},
			Ns: "ns1." + apex, Mbox: "hostmaster." + apex, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 60},
	}
}

// ServeDNS answers one query.
func (z *refZone) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	if r.Response || len(r.Question) != 1 {
		return
	}
	m := new(mdns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	switch {
	case name != z.apex && !strings.HasSuffix(name, "."+z.apex):
		m.Rcode = mdns.RcodeRefused
	case name == z.name || name == z.apex:
		m.Authoritative = true
		if q.Qtype == mdns.TypeA {
			a := mdns.Copy(z.a)
			a.Header().Name = q.Name
			m.Answer = []mdns.RR{a}
		} else {
			m.Ns = []mdns.RR{z.soa}
		}
	default:
		m.Authoritative = true
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{z.soa}
	}
	w.WriteMsg(m)
}
