package model

import (
	"strings"
	"testing"
)

func TestValidateZoneName(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"example.org", "example.org", ""},
		{"Example.ORG.", "example.org", ""},
		{"a.b.example.test", "a.b.example.test", ""},
		{"", "", "empty"},
		{"org", "", "top-level"},
		{"exa_mple.org", "", "character '_'"},
		{"-a.org", "", "start or end"},
		{"a..org", "", "empty"},
		{strings.Repeat("a.", 127) + "org", "", "at most 253"},
	} {
		got, err := ValidateZoneName(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("ValidateZoneName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ValidateZoneName(%q) error = %v; want one containing %q", tc.in, err, tc.err)
		}
	}
}

func TestValidateRecord(t *testing.T) {
	const zone = "example.test"
	for _, tc := range []struct {
		r        Record
		name     string // canonical name wanted
		data     string // canonical data wanted
		errField string // the field the error must name; "" for none
	}{
		{Record{Name: "www", Type: "A", Data: "192.0.2.1"}, "www", "192.0.2.1", ""},
		{Record{Name: "@", Type: "aaaa", Data: "2001:db8::1"}, "@", "2001:db8::1", ""},
		{Record{Name: "WWW.example.test.", Type: "A", Data: "192.0.2.1"}, "www", "192.0.2.1", ""},
		{Record{Name: "example.test.", Type: "TXT", Data: `"v=spf1 -all"`}, "@", `"v=spf1 -all"`, ""},
		{Record{Name: "@", Type: "MX", Data: "10 mail"}, "@", "10 mail.example.test.", ""},
		{Record{Name: "@", Type: "MX", Data: "10 mx.other.test."}, "@", "10 mx.other.test.", ""},
		{Record{Name: "_sip._tcp", Type: "SRV", Data: "10 5 5060 sip.example.test."}, "_sip._tcp", "10 5 5060 sip.example.test.", ""},
		{Record{Name: "@", Type: "CAA", Data: `0 issue "letsencrypt.org"`}, "@", `0 issue "letsencrypt.org"`, ""},
		{Record{Name: "alias", Type: "CNAME", Data: "www"}, "alias", "www.example.test.", ""},
		{Record{Name: "txt", Type: "TXT", Data: `"a;b" "c"`}, "txt", `"a;b" "c"`, ""},
		{Record{Name: "app", Service: "shop"}, "app", "", ""},
		{Record{Name: "app", Service: "shop", TTL: 300}, "app", "", ""},

		{Record{Name: "", Type: "A", Data: "192.0.2.1"}, "", "", "name"},
		{Record{Name: "www.other.test.", Type: "A", Data: "192.0.2.1"}, "", "", "name"},
		{Record{Name: "*", Type: "A", Data: "192.0.2.1"}, "", "", "name"},
		{Record{Name: "a b", Type: "A", Data: "192.0.2.1"}, "", "", "name"},
		{Record{Name: "www", Type: "NS", Data: "ns1.other.test."}, "", "", "type"},
		{Record{Name: "www", Type: "", Data: "192.0.2.1"}, "", "", "type"},
		{Record{Name: "www", Type: "A", Data: "2001:db8::1"}, "", "", "data"},
		{Record{Name: "www", Type: "A", Data: "192.0.2.1 192.0.2.2"}, "", "", "data"},
		{Record{Name: "www", Type: "A", Data: ""}, "", "", "data"},
		{Record{Name: "www", Type: "A", Data: "192.0.2.1\nevil IN A 192.0.2.9"}, "", "", "data"},
		{Record{Name: "www", Type: "A", Data: "192.0.2.1 ; x"}, "", "", "data"},
		{Record{Name: "www", Type: "MX", Data: "mail"}, "", "", "data"},
		{Record{Name: "www", Type: "CAA", Data: `0 bogus "x"`}, "", "", "data"},
		{Record{Name: "www", Type: "TXT", Data: strings.Repeat(`"`+strings.Repeat("a", 255)+`" `, 17)}, "", "", "data"},
		{Record{Name: "www", Type: "A", Data: "192.0.2.1", TTL: 10}, "", "", "ttl"},
		{Record{Name: "www", Type: "A", Data: "192.0.2.1", TTL: 86401}, "", "", "ttl"},
		{Record{Name: "www", Type: "A", Data: "192.0.2.1", Service: "shop"}, "", "", "service"},
		{Record{Name: "www", Service: "Shop!"}, "", "", "service"},
	} {
		r := tc.r
		err := ValidateRecord(zone, &r)
		if tc.errField == "" {
			if err != nil || r.Name != tc.name || r.Data != tc.data {
				t.Errorf("ValidateRecord(%+v) = %+v, %v; want name %q data %q", tc.r, r, err, tc.name, tc.data)
			}
			continue
		}
		if err == nil || !strings.HasPrefix(err.Error(), tc.errField+":") {
			t.Errorf("ValidateRecord(%+v) error = %v; want one naming %q", tc.r, err, tc.errField)
		}
	}
}

func TestCheckRecords(t *testing.T) {
	a := Record{Name: "www", Type: "A", Data: "192.0.2.1"}
	txt := Record{Name: "www", Type: "TXT", Data: `"x"`}
	cname := Record{Name: "www", Type: "CNAME", Data: "other.test."}
	svc := Record{Name: "www", Service: "shop"}
	for _, tc := range []struct {
		recs []Record
		err  string
	}{
		{[]Record{a, txt}, ""},
		{[]Record{cname}, ""},
		{[]Record{svc, txt}, ""},
		{[]Record{a, cname}, "CNAME"},
		{[]Record{cname, txt}, "CNAME"},
		{[]Record{cname, cname}, "exists already"},
		{[]Record{a, a}, "exists already"},
		{[]Record{{Name: "@", Type: "CNAME", Data: "x.test."}}, "apex"},
		{[]Record{svc, a}, "service"},
		{[]Record{svc, {Name: "www", Service: "blog"}}, "service already"},
		{make([]Record, MaxRecords+1), "at most"},
	} {
		err := CheckRecords("example.test", tc.recs)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("CheckRecords(%v) = %v; want %q", tc.recs, err, tc.err)
		}
	}
}

// FuzzRecord: any record input is either refused or made canonical, and
// the canonical form validates again to itself.
func FuzzRecord(f *testing.F) {
	for _, s := range [][3]string{
		{"www", "A", "192.0.2.1"}, {"@", "MX", "10 mail"}, {"t", "TXT", `"a" "b\"c"`},
		{"_s._tcp", "SRV", "1 2 3 x.test."}, {"@", "CAA", `0 issue "ca.test"`}, {"c", "CNAME", "x"},
		{"x", "A", "1.2.3.4\n$INCLUDE /etc/passwd"}, {"x", "TXT", `"(" ")"`}, {"x", "AAAA", "::ffff:1.2.3.4"},
	} {
		f.Add(s[0], s[1], s[2], 0)
	}
	f.Fuzz(func(t *testing.T, name, typ, data string, ttl int) {
		r := Record{Name: name, Type: typ, Data: data, TTL: ttl}
		if ValidateRecord("example.test", &r) != nil {
			return
		}
		again := r
		if err := ValidateRecord("example.test", &again); err != nil || again != r {
			t.Fatalf("canonical record %+v does not validate to itself: %+v, %v", r, again, err)
		}
		if _, err := r.RR("example.test"); err != nil {
			t.Fatalf("RR of valid record %+v: %v", r, err)
		}
	})
}
