package dns

import (
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/model"
)

func exampleZone(state model.ZoneState) ZoneData {
	return ZoneData{
		Zone:   model.Zone{Name: "example.test", Tenant: "acme", State: state},
		Serial: 42,
		Records: []model.Record{
			{ID: "1", Name: "www", Type: "A", Data: "192.0.2.1"},
			{ID: "2", Name: "www", Type: "TXT", Data: `"hello"`},
			{ID: "3", Name: "@", Type: "MX", Data: "10 mail.example.test."},
			{ID: "4", Name: "mail", Type: "A", Data: "192.0.2.2"},
			{ID: "5", Name: "alias", Type: "CNAME", Data: "www.example.test."},
			{ID: "6", Name: "out", Type: "CNAME", Data: "elsewhere.test."},
			{ID: "7", Name: "app", Service: "shop", TTL: 300},
			{ID: "8", Name: "_sip._tcp", Type: "SRV", Data: "10 5 5060 sip.example.test."},
			{ID: "9", Name: "@", Type: "CAA", Data: `0 issue "letsencrypt.org"`},
			{ID: "10", Name: "gone", Service: "nosuch"},
		},
	}
}

func TestZoneAnswers(t *testing.T) {
	s := testServer("shop")
	s.TenantZones = &Zones{}
	s.serial = 1
	ask := func(name string, t uint16) *mdns.Msg {
		q := new(mdns.Msg)
		q.SetQuestion(name, t)
		return s.Answer(q)
	}
	// Pending: not answered.
	s.TenantZones.Set(exampleZone(model.ZonePending))
	if m := ask("www.example.test.", mdns.TypeA); m.Rcode != mdns.RcodeRefused {
		t.Fatalf("a pending zone was answered: %v", m)
	}
	s.TenantZones.Set(exampleZone(model.ZoneVerified))
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  []string // answer records, squashed
		ns    string   // a record wanted in the authority section
	}{
		{"www.example.test.", mdns.TypeA, 0, []string{"www.example.test. 60 IN A 192.0.2.1"}, ""},
		{"WWW.Example.Test.", mdns.TypeA, 0, []string{"www.example.test. 60 IN A 192.0.2.1"}, ""},
		{"www.example.test.", mdns.TypeTXT, 0, []string{`www.example.test. 60 IN TXT "hello"`}, ""},
		{"www.example.test.", mdns.TypeAAAA, 0, nil, "SOA ns1.gw.test. hostmaster.example.test. 42"},
		{"example.test.", mdns.TypeMX, 0, []string{"example.test. 60 IN MX 10 mail.example.test."}, ""},
		{"example.test.", mdns.TypeCAA, 0, []string{`example.test. 60 IN CAA 0 issue "letsencrypt.org"`}, ""},
		{"example.test.", mdns.TypeSOA, 0, []string{"example.test. 60 IN SOA ns1.gw.test. hostmaster.example.test. 42 3600 600 604800 60"}, ""},
		{"example.test.", mdns.TypeNS, 0, []string{"example.test. 60 IN NS ns1.gw.test.", "example.test. 60 IN NS ns2.gw.test."}, ""},
		{"example.test.", mdns.TypeA, 0, nil, "SOA"},
		{"alias.example.test.", mdns.TypeA, 0, []string{"alias.example.test. 60 IN CNAME www.example.test.", "www.example.test. 60 IN A 192.0.2.1"}, ""},
		{"alias.example.test.", mdns.TypeCNAME, 0, []string{"alias.example.test. 60 IN CNAME www.example.test."}, ""},
		{"out.example.test.", mdns.TypeA, 0, []string{"out.example.test. 60 IN CNAME elsewhere.test."}, ""},
		{"app.example.test.", mdns.TypeA, 0, []string{"app.example.test. 300 IN A 192.0.2.10"}, ""},
		{"app.example.test.", mdns.TypeAAAA, 0, []string{"app.example.test. 300 IN AAAA 2001:db8::10"}, ""},
		{"gone.example.test.", mdns.TypeA, 0, nil, "SOA"},
		{"_sip._tcp.example.test.", mdns.TypeSRV, 0, []string{"_sip._tcp.example.test. 60 IN SRV 10 5 5060 sip.example.test."}, ""},
		{"_tcp.example.test.", mdns.TypeSRV, 0, nil, "SOA"}, // empty non-terminal: NODATA
		{"nope.example.test.", mdns.TypeA, mdns.RcodeNameError, nil, "SOA ns1.gw.test. hostmaster.example.test."},
		{"a.b.www.example.test.", mdns.TypeA, mdns.RcodeNameError, nil, "SOA"},
		{"other.test.", mdns.TypeA, mdns.RcodeRefused, nil, ""},
		{"shop.gw.test.", mdns.TypeA, 0, []string{"shop.gw.test. 60 IN A 192.0.2.10"}, ""},
	} {
		m := ask(tc.name, tc.qtype)
		var got []string
		for _, rr := range m.Answer {
			got = append(got, strings.Join(strings.Fields(rr.String()), " "))
		}
		var ns []string
		for _, rr := range m.Ns {
			ns = append(ns, strings.Join(strings.Fields(rr.String()), " "))
		}
		if m.Rcode != tc.rcode || strings.Join(got, "|") != strings.Join(tc.want, "|") ||
			tc.rcode != mdns.RcodeRefused && !m.Authoritative || !strings.Contains(strings.Join(ns, "|"), tc.ns) {
			t.Errorf("%s %s: rcode %s aa %v answer %q authority %q; want rcode %s answer %q authority with %q",
				tc.name, mdns.TypeToString[tc.qtype], mdns.RcodeToString[m.Rcode], m.Authoritative, got, ns,
				mdns.RcodeToString[tc.rcode], tc.want, tc.ns)
		}
	}
	// Live: a removed zone is refused in the next answer.
	s.TenantZones.Remove("example.test")
	if m := ask("www.example.test.", mdns.TypeA); m.Rcode != mdns.RcodeRefused {
		t.Errorf("a removed zone was answered: %v", m)
	}
	s.TenantZones.Replace([]ZoneData{exampleZone(model.ZoneVerified)})
	if m := ask("www.example.test.", mdns.TypeA); len(m.Answer) != 1 {
		t.Errorf("after Replace: %v", m)
	}
}

// TestZoneOverUDP: a tenant zone through a real socket, with a client.
func TestZoneOverUDP(t *testing.T) {
	s := testServer()
	s.TenantZones = &Zones{}
	s.TenantZones.Set(exampleZone(model.ZoneVerified))
	addr := startServer(t, s)
	q := new(mdns.Msg)
	q.SetQuestion("www.example.test.", mdns.TypeA)
	m, err := mdns.Exchange(q, addr)
	if err != nil || !m.Authoritative || len(m.Answer) != 1 {
		t.Fatalf("exchange: %v %v", m, err)
	}
}
