package dns

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fakeCluster is a cluster of gateways for the DNS server.
type fakeCluster struct {
	mu    sync.Mutex
	ns    []NameServer
	holds map[string][]netip.Addr
}

func (f *fakeCluster) NameServers() []NameServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ns)
}

func (f *fakeCluster) ServiceAddrs(s string) []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holds[s]
}

// TestClusterSteering: NS lists every live gateway with its glue, the apex
// all their addresses, a service the gateways holding it (all when none
// does), with the shorter service TTL; a change shows in the next answer.
func TestClusterSteering(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.11"), netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.13")
	fc := &fakeCluster{
		ns:    []NameServer{{"ns-aa", []netip.Addr{a}}, {"ns-bb", []netip.Addr{b}}, {"ns-cc", []netip.Addr{c}}},
		holds: map[string][]netip.Addr{"web": {a, c}},
	}
	s := testServer("web", "idle")
	s.Cluster = fc
	s.ServiceTTL = 10 * time.Second
	addr := startServer(t, s)

	r := query(t, addr, "udp", "gw.test", mdns.TypeNS, 0)
	if got := rrStrings(r.Answer); !slices.Equal(got, []string{"ns-aa.gw.test.", "ns-bb.gw.test.", "ns-cc.gw.test."}) {
		t.Errorf("NS = %v", got)
	}
	if got := rrStrings(r.Extra); !slices.Equal(got, []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}) {
		t.Errorf("NS glue = %v", got)
	}
	if got := rrStrings(query(t, addr, "udp", "ns-bb.gw.test", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.12"}) {
		t.Errorf("A ns-bb = %v", got)
	}
	if got := rrStrings(query(t, addr, "udp", "gw.test", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}) {
		t.Errorf("apex A = %v", got)
	}
	r = query(t, addr, "udp", "web.gw.test", mdns.TypeA, 0)
	if got := rrStrings(r.Answer); !slices.Equal(got, []string{"10.0.0.11", "10.0.0.13"}) {
		t.Errorf("A web = %v, want the two holders", got)
	}
	if len(r.Answer) > 0 && r.Answer[0].Header().Ttl != 10 {
		t.Errorf("A web TTL = %d, want the service TTL 10", r.Answer[0].Header().Ttl)
	}
	if got := rrStrings(query(t, addr, "udp", "idle.gw.test", mdns.TypeA, 0).Answer); len(got) != 3 {
		t.Errorf("A idle (held by none) = %v, want every gateway", got)
	}
	if r := query(t, addr, "udp", "gone.gw.test", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Errorf("A gone rcode = %d, want NXDOMAIN", r.Rcode)
	}
	if r := query(t, addr, "udp", "ns1.gw.test", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Errorf("ns1 in a cluster: rcode = %d, want NXDOMAIN", r.Rcode)
	}

	// Gateway a dies: it leaves NS and web's answer.
	fc.mu.Lock()
	fc.ns = fc.ns[1:]
	fc.holds["web"] = []netip.Addr{c}
	fc.mu.Unlock()
	if got := rrStrings(query(t, addr, "udp", "web.gw.test", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.13"}) {
		t.Errorf("A web after a left = %v", got)
	}
	if got := rrStrings(query(t, addr, "tcp", "gw.test", mdns.TypeNS, 0).Answer); !slices.Equal(got, []string{"ns-bb.gw.test.", "ns-cc.gw.test."}) {
		t.Errorf("NS after a left = %v", got)
	}
	if r := query(t, addr, "udp", "gw.test", mdns.TypeSOA, 0); len(r.Answer) != 1 || r.Answer[0].(*mdns.SOA).Ns != "ns-bb.gw.test." {
		t.Errorf("SOA after a left = %v", r.Answer)
	}
}
