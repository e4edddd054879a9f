// Package dns is the gateway's authoritative DNS server (miekg/dns): for
// the gateway domain it answers SOA, NS with glue, A/AAAA for the apex and
// every existing service name, CAA, and NXDOMAIN with the SOA for the rest,
// from the live routing table, so a change is in the next answer; and for
// the tenants' verified zones (Zones) their records, SOA and NS.
package dns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Server answers for one zone, the gateway domain. Set the exported fields
// before Serve; they are not changed afterwards.
type Server struct {
	// Domain is the zone apex, such as "gw.example.org" (lower case, no
	// trailing dot).
	Domain string
	// Addrs are the gateway's public addresses: the A and AAAA answers for
	// the apex and for service names, and the glue of the name servers.
	Addrs []netip.Addr
	// Exists reports whether a service of that name (one label under
	// Domain) exists now; nil means none does.
	Exists func(label string) bool
	// TTL of the answers; 0 means 60 s. Negative answers use it too (the
	// SOA's minimum).
	TTL time.Duration
	// CAAIssuers are the CAs named in the apex's CAA records ("issue" and
	// "issuewild"), such as "letsencrypt.org"; empty means no CAA record.
	CAAIssuers []string
	// Challenges returns the TXT values of an ACME DNS-01 challenge at name
	// (a fully qualified name under Domain, lower case, no trailing dot);
	// nil means none are answered.
	Challenges func(name string) []string
	// Keys, when set, turns DNSSEC on: answers to queries with the DO bit
	// are signed with the zone's key (online signing, NSEC3 white lies for
	// denial). nil serves unsigned answers.
	Keys KeySource
	// Serial is the SOA serial; 0 means the Unix time when Serve started.
	Serial uint32
	// TenantZones are the tenants' verified zones answered besides
	// Domain (live); nil means none: other zones are refused.
	TenantZones *Zones
	// Cluster, when set, steers answers across the gateways of a cluster:
	// the apex NS lists every live gateway, the apex A/AAAA are all their
	// addresses, and a service name gets the addresses of the gateways that
	// can serve it now. nil answers Addrs everywhere (one gateway).
	Cluster ClusterView
	// ServiceTTL, when set, is the TTL of a service name's addresses under
	// Cluster (shorter than TTL, so a withdrawn gateway leaves caches soon).
	ServiceTTL time.Duration
	// Log gets debug messages; nil discards them.
	Log *slog.Logger

	mu     sync.Mutex
	pc     net.PacketConn // guarded by mu
	ln     net.Listener   // guarded by mu
	closed bool           // Shutdown was called; guarded by mu
	serial uint32         // set by Serve before it answers
}

// nsLabels are the name servers' labels under Domain without a cluster.
var nsLabels = []string{"ns1", "ns2"}

// ClusterView is what the DNS server needs to know of a gateway cluster.
type ClusterView interface {
	// NameServers are the live gateways as name servers of the domain,
	// sorted; empty means use Addrs as ns1 and ns2.
	NameServers() []NameServer
	// ServiceAddrs are the addresses of the live gateways that can serve
	// the service (a label under Domain) now; empty when none can.
	ServiceAddrs(service string) []netip.Addr
}

// NameServer is one name server of the domain: Label under Domain, with
// its addresses (the glue).
type NameServer struct {
	Label string
	Addrs []netip.Addr
}

// nameServers are the domain's name servers.
func (s *Server) nameServers() []NameServer {
	if s.Cluster != nil {
		if ns := s.Cluster.NameServers(); len(ns) > 0 {
			return ns
		}
	}
	out := make([]NameServer, len(nsLabels))
	for i, l := range nsLabels {
		out[i] = NameServer{Label: l, Addrs: s.Addrs}
	}
	return out
}

// allAddrs are the addresses of every live gateway: the apex's answer.
func (s *Server) allAddrs() []netip.Addr {
	if s.Cluster == nil {
		return s.Addrs
	}
	var out []netip.Addr
	for _, ns := range s.nameServers() {
		for _, a := range ns.Addrs {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// serviceAddrs are the addresses answered for a service and their TTL:
// in a cluster those of the gateways that can serve it (all gateways
// when none can, so clients get an answer from a gateway, not NXDOMAIN).
func (s *Server) serviceAddrs(service string) ([]netip.Addr, uint32) {
	if s.Cluster == nil {
		return s.Addrs, s.ttl()
	}
	ttl := s.ttl()
	if s.ServiceTTL > 0 {
		ttl = min(ttl, uint32(s.ServiceTTL/time.Second))
	}
	if a := s.Cluster.ServiceAddrs(service); len(a) > 0 {
		return a, ttl
	}
	return s.allAddrs(), ttl
}

// maxUDPSize is the largest UDP answer sent (the DNS flag day 2020 value),
// whatever larger size a client's EDNS0 offers.
const maxUDPSize = 1232

func (s *Server) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) ttl() uint32 {
	if s.TTL <= 0 {
		return 60
	}
	return uint32(s.TTL / time.Second)
}

func (s *Server) apex() string { return mdns.Fqdn(s.Domain) }

// Serve answers queries on pc (UDP) and ln (TCP, for truncated answers and
// zone-size queries) until ctx ends or Shutdown is called; it closes both.
// Either may be nil.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	if s.Serial == 0 {
		s.serial = uint32(time.Now().Unix())
	} else {
		s.serial = s.Serial
	}
	var srvs []*mdns.Server
	if pc != nil {
		srvs = append(srvs, &mdns.Server{PacketConn: pc, Handler: s, UDPSize: maxUDPSize})
	}
	if ln != nil {
		srvs = append(srvs, &mdns.Server{Listener: ln, Handler: s, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
			IdleTimeout: func() time.Duration { return 10 * time.Second }, MaxTCPQueries: 128})
	}
	s.mu.Lock()
	s.pc, s.ln = pc, ln
	closed := s.closed
	s.mu.Unlock()
	if closed {
		s.Shutdown(ctx)
	}
	// Closing the sockets ends the servers, also one that has not started
	// yet (its start then fails at once).
	stop := context.AfterFunc(ctx, func() { s.Shutdown(context.Background()) })
	defer stop()
	errc := make(chan error, len(srvs))
	for _, srv := range srvs {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	var first error
	for range srvs {
		if err := <-errc; err != nil && first == nil && !s.isClosed() {
			first = fmt.Errorf("dns server: %w", err)
			s.Shutdown(context.Background())
		}
	}
	return first
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown closes the sockets Serve serves.
func (s *Server) Shutdown(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.pc != nil {
		s.pc.Close()
	}
	if s.ln != nil {
		s.ln.Close()
	}
	return nil
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	m := s.Answer(r)
	if m == nil {
		return
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := mdns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = min(max(int(o.UDPSize()), mdns.MinMsgSize), maxUDPSize)
		}
		m.Truncate(size) // sets TC when it had to drop records: the client retries over TCP
	}
	if err := w.WriteMsg(m); err != nil {
		s.log().Debug("dns write", "remote", w.RemoteAddr().String(), "err", err)
	}
}

// Answer builds the answer to r; nil means send nothing (a response, not a
// query).
func (s *Server) Answer(r *mdns.Msg) *mdns.Msg {
	if r.Response {
		return nil
	}
	m := new(mdns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = false
	if o := r.IsEdns0(); o != nil {
		if o.Version() != 0 {
			m.SetRcode(r, mdns.RcodeBadVers)
			m.SetEdns0(maxUDPSize, false)
			return m
		}
		m.SetEdns0(maxUDPSize, o.Do())
	}
	if r.Opcode != mdns.OpcodeQuery {
		m.SetRcode(r, mdns.RcodeNotImplemented)
		return m
	}
	if len(r.Question) != 1 {
		m.SetRcode(r, mdns.RcodeFormatError)
		return m
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	apex := s.apex()
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		m.SetRcode(r, mdns.RcodeRefused)
		return m
	}
	do := r.IsEdns0() != nil && r.IsEdns0().Do()
	if name != apex && !strings.HasSuffix(name, "."+apex) {
		if z := s.TenantZones.find(name); z != nil {
			s.zoneAnswer(m, q, name, z)
			if do && s.Keys != nil {
				s.secure(m, q, z.apex, s.existsFn(), s.typesFn(z.apex))
			}
			return m
		}
		// Not our zone: no referral, no recursion.
		m.SetRcode(r, mdns.RcodeRefused)
		return m
	}
	m.Authoritative = true
	rel := strings.TrimSuffix(strings.TrimSuffix(name, apex), ".")
	switch {
	case rel == "":
		s.apexAnswer(m, q)
	case (rel == "_acme-challenge" || strings.HasPrefix(rel, "_acme-challenge.")) && s.Challenges != nil:
		s.challengeAnswer(m, q, strings.TrimSuffix(name, "."))
	case s.isNS(rel):
		s.addrAnswer(m, q, s.nsAddrs(rel), s.ttl())
	case !strings.Contains(rel, ".") && s.Exists != nil && s.Exists(rel):
		addrs, ttl := s.serviceAddrs(rel)
		s.addrAnswer(m, q, addrs, ttl)
	default:
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
	}
	if do && s.Keys != nil {
		s.secure(m, q, apex, s.existsFn(), s.typesFn(apex))
	}
	return m
}

// probeTypes are the types looked for at a name to list them in an NSEC3.
var probeTypes = []uint16{mdns.TypeA, mdns.TypeNS, mdns.TypeCNAME, mdns.TypeSOA, mdns.TypeMX, mdns.TypeTXT,
	mdns.TypeAAAA, mdns.TypeSRV, mdns.TypeCAA}

// probe answers (name, t) without DNSSEC, for the proofs of denial.
func (s *Server) probe(name string, t uint16) *mdns.Msg {
	r := new(mdns.Msg)
	r.SetQuestion(name, t)
	return s.Answer(r)
}

// existsFn reports whether a name has records or names below it.
func (s *Server) existsFn() func(string) bool {
	return func(n string) bool { return s.probe(n, mdns.TypeA).Rcode != mdns.RcodeNameError }
}

// typesFn lists the types at an existing name of the zone at apex, with
// RRSIG (and DNSKEY, NSEC3PARAM at the apex).
func (s *Server) typesFn(apex string) func(string) []uint16 {
	return func(n string) []uint16 {
		var out []uint16
		for _, t := range probeTypes {
			for _, rr := range s.probe(n, t).Answer {
				if rr.Header().Rrtype == t && strings.EqualFold(rr.Header().Name, n) {
					out = append(out, t)
					break
				}
			}
		}
		if strings.EqualFold(n, apex) {
			out = append(out, mdns.TypeDNSKEY, mdns.TypeNSEC3PARAM)
		}
		if len(out) > 0 {
			out = append(out, mdns.TypeRRSIG)
		}
		slices.Sort(out)
		return out
	}
}

// challengeAnswer answers the TXT records of an ACME DNS-01 challenge.
func (s *Server) challengeAnswer(m *mdns.Msg, q mdns.Question, name string) {
	vals := s.Challenges(name)
	if len(vals) == 0 {
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
		return
	}
	if q.Qtype == mdns.TypeTXT || q.Qtype == mdns.TypeANY {
		for _, v := range vals {
			h := s.hdr(q.Name, mdns.TypeTXT)
			h.Ttl = 1 // a challenge lives for seconds
			m.Answer = append(m.Answer, &mdns.TXT{Hdr: h, Txt: splitTXT(v)})
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.soa())
	}
}

// splitTXT cuts v into the 255-byte strings of a TXT record.
func splitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

func (s *Server) isNS(label string) bool {
	for _, ns := range s.nameServers() {
		if label == ns.Label {
			return true
		}
	}
	return false
}

// nsAddrs are the addresses of the name server at label.
func (s *Server) nsAddrs(label string) []netip.Addr {
	for _, ns := range s.nameServers() {
		if label == ns.Label {
			return ns.Addrs
		}
	}
	return nil
}

func (s *Server) hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: s.ttl()}
}

func (s *Server) soa() *mdns.SOA {
	apex := s.apex()
	ttl := s.ttl()
	return &mdns.SOA{Hdr: s.hdr(apex, mdns.TypeSOA), Ns: s.nameServers()[0].Label + "." + apex, Mbox: "hostmaster." + apex,
		Serial: s.serial, Refresh: 3600, Retry: 600, Expire: 604800, Minttl: ttl}
}

// apexAnswer answers a question for the apex.
func (s *Server) apexAnswer(m *mdns.Msg, q mdns.Question) {
	apex := s.apex()
	var ans []mdns.RR
	switch q.Qtype {
	case mdns.TypeSOA:
		ans = append(ans, s.soa())
	case mdns.TypeNS:
		for _, ns := range s.nameServers() {
			ans = append(ans, &mdns.NS{Hdr: s.hdr(apex, mdns.TypeNS), Ns: ns.Label + "." + apex})
		}
		m.Extra = append(m.Extra, s.glue()...)
	case mdns.TypeCAA:
		for _, ca := range s.CAAIssuers {
			for _, tag := range []string{"issue", "issuewild"} {
				ans = append(ans, &mdns.CAA{Hdr: s.hdr(apex, mdns.TypeCAA), Tag: tag, Value: ca})
			}
		}
	case mdns.TypeA, mdns.TypeAAAA:
		ans = s.addrRRs(apex, q.Qtype, s.allAddrs(), s.ttl())
	case mdns.TypeANY:
		// RFC 8482: a minimal answer to ANY.
		ans = append(ans, &mdns.HINFO{Hdr: s.hdr(apex, mdns.TypeHINFO), Cpu: "RFC8482"})
	}
	m.Answer = ans
	if len(ans) == 0 {
		m.Ns = append(m.Ns, s.soa()) // NODATA
	}
}

// addrAnswer answers a question for a name that holds gateway addresses
// (a service or a name server).
func (s *Server) addrAnswer(m *mdns.Msg, q mdns.Question, addrs []netip.Addr, ttl uint32) {
	name := strings.ToLower(q.Name)
	switch q.Qtype {
	case mdns.TypeA, mdns.TypeAAAA:
		m.Answer = s.addrRRs(name, q.Qtype, addrs, ttl)
	case mdns.TypeANY:
		m.Answer = append(s.addrRRs(name, mdns.TypeA, addrs, ttl), s.addrRRs(name, mdns.TypeAAAA, addrs, ttl)...)
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.soa()) // NODATA
	}
}

// addrRRs are the A (or AAAA) records of name for addrs, with ttl.
func (s *Server) addrRRs(name string, t uint16, addrs []netip.Addr, ttl uint32) []mdns.RR {
	var out []mdns.RR
	for _, a := range addrs {
		h := s.hdr(name, t)
		h.Ttl = ttl
		switch {
		case t == mdns.TypeA && a.Is4():
			out = append(out, &mdns.A{Hdr: h, A: a.AsSlice()})
		case t == mdns.TypeAAAA && a.Is6() && !a.Is4In6():
			out = append(out, &mdns.AAAA{Hdr: h, AAAA: a.AsSlice()})
		}
	}
	return out
}

// glue are the name servers' addresses.
func (s *Server) glue() []mdns.RR {
	var out []mdns.RR
	for _, ns := range s.nameServers() {
		n := ns.Label + "." + s.apex()
		out = append(out, s.addrRRs(n, mdns.TypeA, ns.Addrs, s.ttl())...)
		out = append(out, s.addrRRs(n, mdns.TypeAAAA, ns.Addrs, s.ttl())...)
	}
	return out
}
