package dns

import (
	"path/filepath"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

func signedServer(t *testing.T) *Server {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := testServer("shop")
	s.serial = 1
	s.Keys = &StoreKeys{DB: st}
	return s
}

func ask(s *Server, name string, t uint16, do bool) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), t)
	m.SetEdns0(1232, do)
	return s.Answer(m)
}

// verifyAll checks every RRSIG of rrs against key and that every RRset has one.
func verifyAll(t *testing.T, what string, rrs []mdns.RR, key *mdns.DNSKEY) {
	t.Helper()
	sets := map[[2]string][]mdns.RR{}
	var sigs []*mdns.RRSIG
	for _, rr := range rrs {
		if sig, ok := rr.(*mdns.RRSIG); ok {
			sigs = append(sigs, sig)
			continue
		}
		k := [2]string{rr.Header().Name, mdns.TypeToString[rr.Header().Rrtype]}
		sets[k] = append(sets[k], rr)
	}
	for k, set := range sets {
		ok := false
		for _, sig := range sigs {
			if sig.Header().Name == k[0] && mdns.TypeToString[sig.TypeCovered] == k[1] {
				if err := sig.Verify(key, set); err != nil {
					t.Errorf("%s: RRSIG of %v does not verify: %v", what, k, err)
				}
				if !sig.ValidityPeriod(timeNow()) {
					t.Errorf("%s: RRSIG of %v not valid now", what, k)
				}
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: RRset %v has no RRSIG", what, k)
		}
	}
}

func TestDNSSEC(t *testing.T) {
	s := signedServer(t)
	// The DNSKEY, signed by itself.
	r := ask(s, "gw.test", mdns.TypeDNSKEY, true)
	if len(r.Answer) != 2 {
		t.Fatalf("DNSKEY answer %v", r.Answer)
	}
	key := r.Answer[0].(*mdns.DNSKEY)
	if key.Flags != 257 || key.Algorithm != mdns.ECDSAP256SHA256 {
		t.Errorf("DNSKEY %v, want a P-256 key-signing key", key)
	}
	verifyAll(t, "DNSKEY", r.Answer, key)
	// The same key on the next answer (it is stored).
	if r2 := ask(s, "gw.test", mdns.TypeDNSKEY, true); r2.Answer[0].(*mdns.DNSKEY).PublicKey != key.PublicKey {
		t.Error("the key changed between answers")
	}

	for _, q := range []struct {
		name string
		t    uint16
	}{{"shop.gw.test", mdns.TypeA}, {"gw.test", mdns.TypeSOA}, {"gw.test", mdns.TypeNS}, {"shop.gw.test", mdns.TypeAAAA}} {
		r := ask(s, q.name, q.t, true)
		if len(r.Answer) < 2 {
			t.Errorf("%s %s: no signed answer: %v", q.name, mdns.TypeToString[q.t], r.Answer)
		}
		verifyAll(t, q.name, r.Answer, key)
	}
	// Without DO: no signatures.
	if r := ask(s, "shop.gw.test", mdns.TypeA, false); len(r.Answer) != 1 {
		t.Errorf("answer without DO carries %d records", len(r.Answer))
	}

	// NXDOMAIN: the closest encloser (gw.test) matched, the next closer
	// (nope.gw.test) and the wildcard (*.gw.test) covered, all signed.
	r = ask(s, "a.nope.gw.test", mdns.TypeA, true)
	if r.Rcode != mdns.RcodeNameError {
		t.Fatalf("rcode %s", mdns.RcodeToString[r.Rcode])
	}
	var n3 []*mdns.NSEC3
	for _, rr := range r.Ns {
		if n, ok := rr.(*mdns.NSEC3); ok {
			n3 = append(n3, n)
		}
	}
	has := func(f func(*mdns.NSEC3) bool) bool { return slices.ContainsFunc(n3, f) }
	if !has(func(n *mdns.NSEC3) bool { return n.Match("gw.test.") }) ||
		!has(func(n *mdns.NSEC3) bool { return n.Cover("nope.gw.test.") }) ||
		!has(func(n *mdns.NSEC3) bool { return n.Cover("*.gw.test.") }) {
		t.Errorf("NXDOMAIN proof incomplete: %v", n3)
	}
	for _, n := range n3 {
		if n.Cover("shop.gw.test.") || n.Match("shop.gw.test.") {
			t.Errorf("an NSEC3 covers or matches an existing name: %v", n)
		}
	}
	verifyAll(t, "NXDOMAIN", r.Ns, key)
	if b, err := r.Pack(); err != nil {
		t.Fatalf("the NXDOMAIN proof does not pack: %v", err)
	} else if err := new(mdns.Msg).Unpack(b); err != nil {
		t.Fatalf("the NXDOMAIN proof does not unpack: %v", err)
	}

	// NODATA: the name's own NSEC3, without the type asked for.
	r = ask(s, "shop.gw.test", mdns.TypeMX, true)
	var match *mdns.NSEC3
	for _, rr := range r.Ns {
		if n, ok := rr.(*mdns.NSEC3); ok && n.Match("shop.gw.test.") {
			match = n
		}
	}
	if match == nil || slices.Contains(match.TypeBitMap, mdns.TypeMX) || !slices.Contains(match.TypeBitMap, mdns.TypeA) {
		t.Fatalf("NODATA proof %v, want shop's NSEC3 listing A and not MX", r.Ns)
	}
	verifyAll(t, "NODATA", r.Ns, key)
}

// TestDNSSECTenantZone: a tenant's zone is signed with its own key, and its
// denials are proven within it.
func TestDNSSECTenantZone(t *testing.T) {
	s := signedServer(t)
	s.TenantZones = &Zones{}
	s.TenantZones.Set(exampleZone(model.ZoneVerified))
	r := ask(s, "example.test", mdns.TypeDNSKEY, true)
	if len(r.Answer) != 2 {
		t.Fatalf("DNSKEY of the tenant zone: %v", r.Answer)
	}
	key := r.Answer[0].(*mdns.DNSKEY)
	gw := ask(s, "gw.test", mdns.TypeDNSKEY, true).Answer[0].(*mdns.DNSKEY)
	if key.PublicKey == gw.PublicKey {
		t.Error("the tenant zone is signed with the gateway zone's key")
	}
	for _, q := range []struct {
		name string
		t    uint16
	}{{"www.example.test", mdns.TypeA}, {"alias.example.test", mdns.TypeA}, {"example.test", mdns.TypeMX}} {
		r := ask(s, q.name, q.t, true)
		verifyAll(t, q.name, r.Answer, key)
	}
	r = ask(s, "nope.example.test", mdns.TypeA, true)
	if r.Rcode != mdns.RcodeNameError || len(r.Ns) < 4 {
		t.Fatalf("NXDOMAIN in the tenant zone: %s %v", mdns.RcodeToString[r.Rcode], r.Ns)
	}
	verifyAll(t, "tenant NXDOMAIN", r.Ns, key)
	for _, rr := range r.Ns {
		if rr.Header().Rrtype == mdns.TypeRRSIG && rr.(*mdns.RRSIG).SignerName != "example.test." {
			t.Errorf("signed by %s, want example.test.", rr.(*mdns.RRSIG).SignerName)
		}
	}
}
