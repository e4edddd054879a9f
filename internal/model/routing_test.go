package model_test

import (
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
)

func TestValidateRoutingForwarded(t *testing.T) {
	up := func(urls ...string) []model.Upstream {
		var out []model.Upstream
		for _, u := range urls {
			out = append(out, model.Upstream{URL: u})
		}
		return out
	}
	tests := []struct {
		name    string
		sv      model.Service
		wantErr string // "" means valid
	}{
		{"tcp upstream", model.Service{Protocol: model.ProtoTCP, Upstreams: up("tcp://[2001:db8::1]:5432")}, ""},
		{"udp upstream", model.Service{Protocol: model.ProtoUDP, Upstreams: up("udp://192.0.2.1:53")}, ""},
		{"tcp needs a port", model.Service{Protocol: model.ProtoTCP, Upstreams: up("tcp://192.0.2.1")}, "needs a port"},
		{"http scheme on tcp", model.Service{Protocol: model.ProtoTCP, Upstreams: up("http://192.0.2.1:80")}, `scheme "http" not accepted for a tcp service; use tcp://`},
		{"udp scheme on http", model.Service{Protocol: model.ProtoHTTP, Upstreams: up("udp://192.0.2.1:53")}, "not accepted for a http service"},
		{"tcp check on tcp", model.Service{Protocol: model.ProtoTCP, Health: &model.HealthCheck{Type: "tcp"}}, ""},
		{"http check on tcp", model.Service{Protocol: model.ProtoTCP, Health: &model.HealthCheck{Type: "http"}}, "a tcp service is checked with tcp"},
		{"checks on udp", model.Service{Protocol: model.ProtoUDP, Health: &model.HealthCheck{Type: "tcp"}}, "udp services have no active checks"},
		{"proxy v1 on tcp", model.Service{Protocol: model.ProtoTCP, ProxyProtocol: 1}, ""},
		{"proxy v2 on http", model.Service{Protocol: model.ProtoHTTP, ProxyProtocol: 2, Upstreams: up("http://192.0.2.1:80")}, ""},
		{"proxy v3", model.Service{Protocol: model.ProtoTCP, ProxyProtocol: 3}, "proxy_protocol: 3; use 1 or 2"},
		{"proxy negative", model.Service{Protocol: model.ProtoTCP, ProxyProtocol: -1}, "proxy_protocol: -1"},
		{"proxy on udp", model.Service{Protocol: model.ProtoUDP, ProxyProtocol: 2}, "not available for udp"},
		{"proxy to https upstream", model.Service{Protocol: model.ProtoHTTP, ProxyProtocol: 2, Upstreams: up("https://192.0.2.1:443")}, "upstreams[0].url: an https upstream cannot be sent a PROXY header"},
		{"proxy to tls passthrough", model.Service{Protocol: model.ProtoTLS, ProxyProtocol: 2, Upstreams: up("tls://192.0.2.1:443")}, ""},
	}
	for _, tt := range tests {
		err := tt.sv.ValidateRouting()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: %v, want valid", tt.name, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: %v, want an error containing %q", tt.name, err, tt.wantErr)
		}
	}
}
