package model_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

// wgVectors are private keys and their public keys as wg(8) prints them:
// the RFC 7748 section 6.1 pair (Alice), and a pair from wg genkey | wg pubkey.
var wgVectors = []struct{ priv, pub string }{
	{"dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=", "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="},
	{"6KAtyQ8Xq3G3LKEA1YWTMMh0V6m+hZTcz1h62kgQN18=", "ghWunVU3CSHgsgLgpbUa4MC1cGOvxmyIWVV5TOreQ1o="},
}

func TestWGKeyVectors(t *testing.T) {
	for _, v := range wgVectors {
		priv, err := model.ParseWGKey(v.priv)
		if err != nil {
			t.Fatalf("ParseWGKey(%s): %v", v.priv, err)
		}
		if got := priv.Public().String(); got != v.pub {
			t.Errorf("Public(%s) = %s, want %s", v.priv, got, v.pub)
		}
		if priv.String() != v.priv {
			t.Errorf("String() = %s, want %s", priv, v.priv)
		}
	}
}

func TestGenerateWGKey(t *testing.T) {
	seen := map[model.WGKey]bool{}
	for range 20 {
		k, err := model.GenerateWGKey()
		if err != nil {
			t.Fatal(err)
		}
		if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
			t.Fatalf("key %s is not clamped", k)
		}
		if seen[k] || k.IsZero() || k.Public().IsZero() {
			t.Fatalf("key %s repeated or zero", k)
		}
		seen[k] = true
		back, err := model.ParseWGKey(k.String())
		if err != nil || back != k {
			t.Fatalf("ParseWGKey(String()) = %s, %v; want %s", back, err, k)
		}
	}
}

// TestWGKeyMatchesWG checks fresh keys against wg pubkey, where wg(8) is
// installed.
func TestWGKeyMatchesWG(t *testing.T) {
	wg, err := exec.LookPath("wg")
	if err != nil {
		t.Skip("wg(8) not installed")
	}
	for range 3 {
		k, err := model.GenerateWGKey()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(wg, "pubkey")
		cmd.Stdin = strings.NewReader(k.String() + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey: %v", err)
		}
		if got, want := k.Public().String(), strings.TrimSpace(string(out)); got != want {
			t.Errorf("Public(%s) = %s; wg pubkey says %s", k, got, want)
		}
	}
}

func TestParseWGKeyErrors(t *testing.T) {
	for _, s := range []string{
		"",
		"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo",   // no padding
		"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo==", // 45
		"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo=",  // URL alphabet
		"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp=",  // non-canonical last bits
		"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066Spjqq TmoA",
		"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm==", // 31 bytes
	} {
		if k, err := model.ParseWGKey(s); err == nil {
			t.Errorf("ParseWGKey(%q) = %s, want an error", s, k)
		} else if !strings.Contains(err.Error(), "44 characters of base64") {
			t.Errorf("ParseWGKey(%q): %q does not say what is wanted", s, err)
		}
	}
}

func FuzzParseWGKey(f *testing.F) {
	for _, v := range wgVectors {
		f.Add(v.priv)
		f.Add(v.pub)
	}
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Add("////////////////////////////////////////////")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := model.ParseWGKey(s)
		if err != nil {
			return
		}
		if k.String() != s {
			t.Fatalf("ParseWGKey(%q) accepted a non-canonical spelling of %s", s, k)
		}
	})
}
