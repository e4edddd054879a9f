package model_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

// FuzzParseUpstreamURL checks that ParseUpstreamURL does not panic, that
// an accepted URL has a host and a port and one of the schemes its
// protocol accepts, and that SCHEME://HostPort() parses back to the same
// upstream.
func FuzzParseUpstreamURL(f *testing.F) {
	for _, s := range []string{
		"http://[2001:db8::10]:8080",
		"https://[300:1234::5]:443",
		"http://10.0.0.1",
		"h2c://backend.example:50051",
		"tls://[::ffff:127.0.0.1]",
		"https://backend.example./",
		"http://[fe80::1%25eth0]:80",
		"http://user@host:80",
		"http://host:0",
		"http://a_b.example:65535",
	} {
		for _, proto := range []string{"http", "h2c", "tls", "", "tcp"} {
			f.Add(s, proto)
		}
	}
	f.Fuzz(func(t *testing.T, raw, proto string) {
		p, err := model.ParseUpstreamURL(raw, model.Protocol(proto))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if p.Host == "" || p.Port == 0 {
			t.Fatalf("ParseUpstreamURL(%q) = %+v: no host or port", raw, p)
		}
		if a, err := netip.ParseAddr(p.Host); p.Addr.IsValid() && (p.Addr.Zone() != "" || err != nil || a != p.Addr) {
			t.Fatalf("ParseUpstreamURL(%q) = %+v: Addr does not match Host", raw, p)
		}
		if !p.Addr.IsValid() && strings.Contains(p.Host, ":") {
			t.Fatalf("ParseUpstreamURL(%q) = %+v: a name with a colon", raw, p)
		}
		again, err := model.ParseUpstreamURL(p.Scheme+"://"+p.HostPort(), model.Protocol(proto))
		if err != nil {
			t.Fatalf("ParseUpstreamURL(%q) = %+v, but %s://%s does not parse: %v", raw, p, p.Scheme, p.HostPort(), err)
		}
		if again != p {
			t.Fatalf("ParseUpstreamURL(%q) = %+v; re-parsed: %+v", raw, p, again)
		}
	})
}
