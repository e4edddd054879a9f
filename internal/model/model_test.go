package model_test

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		wantErr string // "" means valid; otherwise a substring of the error
	}{
		{"a", ""},
		{"shop", ""},
		{"my-shop-2", ""},
		{"0", ""},
		{"123", ""},
		{"xn--bcher-kva", ""},
		{"a--b", ""},
		{strings.Repeat("a", 63), ""},
		{strings.Repeat("a", 64), "64 characters long; at most 63"},
		{strings.Repeat("a", 300), "at most 63"},
		{"", "empty"},
		{"-shop", "must not start or end with '-'"},
		{"shop-", "must not start or end with '-'"},
		{"-", "must not start or end with '-'"},
		{"Shop", "upper-case letter 'S'"},
		{"shoP", "upper-case"},
		{"my_shop", "character '_' not accepted"},
		{"shop.example", "character '.' not accepted"},
		{"shop example", "character ' ' not accepted"},
		{"shöp", "not accepted"},
		{"shop\x00", "not accepted"},
		{"www", "reserved"},
		{"api", "reserved"},
		{"admin", "reserved"},
		{"acme", "reserved"},
		{"localhost", "reserved"},
		{"webgw", "reserved"},
		{"_acme-challenge", "not accepted"}, // refused by syntax already
	}
	for _, tt := range tests {
		err := model.ValidateName(tt.name)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("ValidateName(%q) = %v, want nil", tt.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want error containing %q", tt.name, tt.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ValidateName(%q) = %q, want it to contain %q", tt.name, err, tt.wantErr)
		}
		if !strings.Contains(err.Error(), "invalid name") {
			t.Errorf("ValidateName(%q) = %q, want it to say %q", tt.name, err, "invalid name")
		}
		if e := err.Error(); e != "" && e[0] >= 'A' && e[0] <= 'Z' {
			t.Errorf("ValidateName(%q): error %q starts with a capital", tt.name, e)
		}
	}
}

func TestIsReserved(t *testing.T) {
	for _, n := range []string{"www", "api", "admin", "_acme-challenge", "WWW", "Admin", "ns1", "mail"} {
		if !model.IsReserved(n) {
			t.Errorf("IsReserved(%q) = false, want true", n)
		}
	}
	for _, n := range []string{"shop", "wwww", "apis", "", "quick-otter-42"} {
		if model.IsReserved(n) {
			t.Errorf("IsReserved(%q) = true, want false", n)
		}
	}
}

func TestValidateTenantName(t *testing.T) {
	tests := []struct {
		name    string
		wantErr string
	}{
		{"acme", ""},
		{"team-7", ""},
		{strings.Repeat("t", 63), ""},
		// Tenant names are not service names: reserved labels are fine.
		{"admin", ""},
		{"www", ""},
		{strings.Repeat("t", 64), "at most 63"},
		{"", "empty"},
		{"-acme", "'-'"},
		{"acme-", "'-'"},
		{"Acme", "upper-case"},
		{"ac_me", "'_'"},
		{"a/b", "'/'"},
	}
	for _, tt := range tests {
		err := model.ValidateTenantName(tt.name)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("ValidateTenantName(%q) = %v, want nil", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "invalid tenant name") {
			t.Errorf("ValidateTenantName(%q) = %v, want an invalid tenant name error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestProtocol(t *testing.T) {
	tests := []struct {
		p          model.Protocol
		valid      bool
		terminates bool
	}{
		{model.ProtoHTTP, true, true},
		{model.ProtoH2C, true, true},
		{model.ProtoTLS, true, false},
		{model.ProtoTCP, true, false},
		{model.ProtoUDP, true, false},
		{"sctp", false, false},
		{"", false, false},
		{"HTTP", false, false},
	}
	for _, tt := range tests {
		if got := tt.p.Valid(); got != tt.valid {
			t.Errorf("Protocol(%q).Valid() = %v, want %v", tt.p, got, tt.valid)
		}
		if got := tt.p.Terminates(); got != tt.terminates {
			t.Errorf("Protocol(%q).Terminates() = %v, want %v", tt.p, got, tt.terminates)
		}
	}
}

func TestNewToken(t *testing.T) {
	seen := make(map[string]bool)
	for i := 0; i < 1000; i++ {
		tok := model.NewToken()
		if !strings.HasPrefix(tok, model.TokenPrefix) {
			t.Fatalf("NewToken() = %q, want prefix %q", tok, model.TokenPrefix)
		}
		digits := strings.TrimPrefix(tok, model.TokenPrefix)
		if len(digits) != 64 {
			t.Fatalf("NewToken() = %q: %d hex digits, want 64 (256 bits)", tok, len(digits))
		}
		if _, err := hex.DecodeString(digits); err != nil || strings.ToLower(digits) != digits {
			t.Fatalf("NewToken() = %q: not lower-case hex", tok)
		}
		if seen[tok] {
			t.Fatalf("NewToken() returned %q twice", tok)
		}
		seen[tok] = true
	}
}

func TestHashToken(t *testing.T) {
	tok := "wgw_0123"
	sum := sha256.Sum256([]byte(tok))
	want := hex.EncodeToString(sum[:])
	if got := model.HashToken(tok); got != want {
		t.Errorf("HashToken(%q) = %q, want %q", tok, got, want)
	}
	if model.HashToken(tok) != model.HashToken(tok) {
		t.Error("HashToken is not deterministic")
	}
	a, b := model.NewToken(), model.NewToken()
	ha, hb := model.HashToken(a), model.HashToken(b)
	if ha == hb {
		t.Error("two tokens hash alike")
	}
	if len(ha) != 64 || strings.Contains(ha, a) || strings.Contains(ha, strings.TrimPrefix(a, model.TokenPrefix)) {
		t.Errorf("HashToken(%q) = %q: want 64 hex digits that do not contain the token", a, ha)
	}
	// The known SHA-256 of the empty string pins the algorithm.
	if got := model.HashToken(""); got != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("HashToken(\"\") = %q, want the SHA-256 of the empty string", got)
	}
}
