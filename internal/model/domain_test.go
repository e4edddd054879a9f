package model

import (
	"strings"
	"testing"
	"time"
)

func TestValidateDomainName(t *testing.T) {
	for _, tc := range []struct {
		name, err string
	}{
		{"www.example.com", ""},
		{"a.b", ""},
		{"xn--bcher-kva.example", ""},
		{"shop-1.example.test", ""},
		{"", "empty"},
		{"example", "one label"},
		{"www.example.com.", "trailing dot"},
		{"WWW.example.com", "upper-case"},
		{"www..example.com", "empty label"},
		{"-www.example.com", "start or end"},
		{"www_x.example.com", "not accepted"},
		{"*.example.com", "not accepted"},
		{"192.0.2.1", "an address"},
		{strings.Repeat("a", 64) + ".example", "at most 63"},
		{strings.Repeat("abcdefghi.", 26) + "com", "at most 253"},
	} {
		err := ValidateDomainName(tc.name)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one containing %q", tc.name, err, tc.err)
		}
	}
}

func TestDomainApplyCheck(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	grace := time.Hour
	d := Domain{State: DomainPending}
	d.ApplyCheck("TXT missing", t0, grace)
	if d.State != DomainPending || d.Reason != "TXT missing" || !d.FailingSince.IsZero() {
		t.Fatalf("pending after a failed check: %+v", d)
	}
	d.ApplyCheck("", t0, grace)
	if d.State != DomainVerified || d.Reason != "" || !d.VerifiedAt.Equal(t0) {
		t.Fatalf("after a good check: %+v", d)
	}
	d.ApplyCheck("gone", t0.Add(time.Minute), grace)
	if d.State != DomainVerified || !d.FailingSince.Equal(t0.Add(time.Minute)) {
		t.Fatalf("first failure: %+v", d)
	}
	d.ApplyCheck("gone", t0.Add(30*time.Minute), grace)
	if d.State != DomainVerified {
		t.Fatalf("within grace: %+v", d)
	}
	d.ApplyCheck("", t0.Add(40*time.Minute), grace)
	if d.State != DomainVerified || !d.FailingSince.IsZero() {
		t.Fatalf("proof back: %+v", d)
	}
	d.ApplyCheck("gone", t0.Add(50*time.Minute), grace)
	d.ApplyCheck("gone", t0.Add(110*time.Minute), grace)
	if d.State != DomainUnverified || d.Reason != "gone" {
		t.Fatalf("after grace: %+v", d)
	}
}

func TestNewDomainToken(t *testing.T) {
	a, b := NewDomainToken(), NewDomainToken()
	if a == b || !strings.HasPrefix(a, "webgw-verify=") || len(a) != len("webgw-verify=")+40 {
		t.Fatalf("tokens %q %q", a, b)
	}
}
