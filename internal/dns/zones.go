package dns

import (
	"maps"
	"strings"
	"sync"
	"sync/atomic"

	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/model"
)

// ZoneData is one tenant zone as the store holds it.
type ZoneData struct {
	Zone    model.Zone
	Records []model.Record
	// Serial is the SOA serial; it must grow with every change (the
	// store revision of the last change does).
	Serial uint32
}

// Zones is the live set of tenant zones a Server answers besides the
// gateway domain: only verified zones are held. Readers never lock: a
// change swaps in a new map (copy-on-write). The zero value holds none.
type Zones struct {
	mu sync.Mutex                       // serialises writers
	m  atomic.Pointer[map[string]*zone] // by apex FQDN, lower case
}

// zone is a tenant zone ready to answer from.
type zone struct {
	apex   string // FQDN
	tenant string // the zone's owner
	serial uint32
	nodes  map[string]*node // by owner FQDN
	// ents are names that hold nothing but have names below them (empty
	// non-terminals): NODATA, not NXDOMAIN.
	ents map[string]bool
}

// node is the records at one name.
type node struct {
	owner    string // FQDN
	rrs      []mdns.RR
	cname    *mdns.CNAME
	services []serviceRR
}

type serviceRR struct {
	service string
	ttl     uint32
}

// Set makes d's zone answered as d says if it is verified, and not
// answered at all otherwise. Records that do not parse are left out.
func (zs *Zones) Set(d ZoneData) {
	if d.Zone.State != model.ZoneVerified {
		zs.Remove(d.Zone.Name)
		return
	}
	z := build(d)
	zs.mu.Lock()
	defer zs.mu.Unlock()
	next := zs.copy()
	next[z.apex] = z
	zs.m.Store(&next)
}

// Remove stops answering zone name (no trailing dot).
func (zs *Zones) Remove(name string) {
	zs.mu.Lock()
	defer zs.mu.Unlock()
	next := zs.copy()
	delete(next, mdns.Fqdn(strings.ToLower(name)))
	zs.m.Store(&next)
}

// Replace answers exactly the verified zones of all.
func (zs *Zones) Replace(all []ZoneData) {
	next := map[string]*zone{}
	for _, d := range all {
		if d.Zone.State == model.ZoneVerified {
			z := build(d)
			next[z.apex] = z
		}
	}
	zs.mu.Lock()
	defer zs.mu.Unlock()
	zs.m.Store(&next)
}

// Names returns the apexes of the zones answered (FQDN), for tests and status.
func (zs *Zones) Names() []string {
	var out []string
	if m := zs.m.Load(); m != nil {
		for k := range *m {
			out = append(out, k)
		}
	}
	return out
}

func (zs *Zones) copy() map[string]*zone {
	if m := zs.m.Load(); m != nil {
		return maps.Clone(*m)
	}
	return map[string]*zone{}
}

// find returns the zone that holds name (an FQDN, lower case): the one
// with the longest apex that name is at or under.
func (zs *Zones) find(name string) *zone {
	if zs == nil {
		return nil
	}
	m := zs.m.Load()
	if m == nil || len(*m) == 0 {
		return nil
	}
	for n := name; n != "" && n != "."; {
		if z := (*m)[n]; z != nil {
			return z
		}
		i := strings.IndexByte(n, '.')
		if i < 0 {
			break
		}
		n = n[i+1:]
	}
	return nil
}

// Service returns the service a name of a verified tenant zone points at
// (a record with a service), and the zone's tenant: the edge serves the
// name like that service's own. host is lower case, without a trailing dot.
func (zs *Zones) Service(host string) (service, tenant string, ok bool) {
	fq := mdns.Fqdn(host)
	z := zs.find(fq)
	if z == nil {
		return "", "", false
	}
	n := z.nodes[fq]
	if n == nil || len(n.services) == 0 {
		return "", "", false
	}
	return n.services[0].service, z.tenant, true
}

func build(d ZoneData) *zone {
	name := strings.ToLower(d.Zone.Name)
	z := &zone{apex: mdns.Fqdn(name), tenant: d.Zone.Tenant, serial: d.Serial, nodes: map[string]*node{}, ents: map[string]bool{}}
	nodeOf := func(owner string) *node {
		n := z.nodes[owner]
		if n == nil {
			n = &node{owner: owner}
			z.nodes[owner] = n
			for p := owner; p != z.apex; {
				_, p, _ = strings.Cut(p, ".")
				if p == z.apex || p == "" {
					break
				}
				z.ents[p] = true
			}
		}
		return n
	}
	for _, r := range d.Records {
		owner := strings.ToLower(r.Fqdn(name))
		ttl := uint32(r.TTL)
		if ttl == 0 {
			ttl = model.DefaultTTL
		}
		if r.Service != "" {
			n := nodeOf(owner)
			n.services = append(n.services, serviceRR{service: r.Service, ttl: ttl})
			continue
		}
		rr, err := r.RR(name)
		if err != nil {
			continue // the API stores valid records only
		}
		n := nodeOf(owner)
		if c, ok := rr.(*mdns.CNAME); ok {
			n.cname = c
		}
		n.rrs = append(n.rrs, rr)
	}
	return z
}

// maxChase bounds the CNAMEs followed within a zone in one answer.
const maxChase = 8

// zoneAnswer answers q (name lower case) from tenant zone z.
func (s *Server) zoneAnswer(m *mdns.Msg, q mdns.Question, name string, z *zone) {
	m.Authoritative = true
	soa := s.zoneSOA(z)
	if name == z.apex {
		switch q.Qtype {
		case mdns.TypeSOA:
			m.Answer = append(m.Answer, soa)
		case mdns.TypeNS:
			for _, ns := range s.nameServers() {
				m.Answer = append(m.Answer, &mdns.NS{Hdr: s.hdr(z.apex, mdns.TypeNS), Ns: ns.Label + "." + s.apex()})
			}
			m.Extra = append(m.Extra, s.glue()...)
		}
	}
	n := z.nodes[name]
	switch {
	case n == nil && name == z.apex, n == nil && z.ents[name]:
		// NODATA below (unless SOA or NS were answered).
	case n == nil:
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, soa)
		return
	default:
		for i := 0; n != nil && i <= maxChase; i++ {
			if n.cname != nil && q.Qtype != mdns.TypeCNAME && q.Qtype != mdns.TypeANY {
				m.Answer = append(m.Answer, n.cname)
				// Follow the target only within the zone.
				n = z.nodes[strings.ToLower(n.cname.Target)]
				continue
			}
			m.Answer = append(m.Answer, s.nodeRRs(n, q.Qtype)...)
			break
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, soa) // NODATA
	}
}

// nodeRRs are the records of type t (all for ANY) at n.
func (s *Server) nodeRRs(n *node, t uint16) []mdns.RR {
	var out []mdns.RR
	for _, rr := range n.rrs {
		if t == mdns.TypeANY || rr.Header().Rrtype == t {
			out = append(out, rr)
		}
	}
	if t != mdns.TypeA && t != mdns.TypeAAAA && t != mdns.TypeANY {
		return out
	}
	for _, sv := range n.services {
		if s.Exists != nil && !s.Exists(sv.service) {
			continue // the service is gone: NODATA
		}
		var rrs []mdns.RR
		addrs, _ := s.serviceAddrs(sv.service)
		if t == mdns.TypeANY {
			rrs = append(s.addrRRs(n.owner, mdns.TypeA, addrs, sv.ttl), s.addrRRs(n.owner, mdns.TypeAAAA, addrs, sv.ttl)...)
		} else {
			rrs = s.addrRRs(n.owner, t, addrs, sv.ttl)
		}
		for _, rr := range rrs {
			rr.Header().Ttl = sv.ttl
		}
		out = append(out, rrs...)
	}
	return out
}

func (s *Server) zoneSOA(z *zone) *mdns.SOA {
	return &mdns.SOA{Hdr: s.hdr(z.apex, mdns.TypeSOA), Ns: s.nameServers()[0].Label + "." + s.apex(), Mbox: "hostmaster." + z.apex,
		Serial: z.serial, Refresh: 3600, Retry: 600, Expire: 604800, Minttl: s.ttl()}
}
