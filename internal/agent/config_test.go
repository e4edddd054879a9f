package agent

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

const pin = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseTarget(t *testing.T) {
	tests := []struct {
		target  string
		proto   model.Protocol
		addr    string
		wantErr string
	}{
		{"http://127.0.0.1:3000", model.ProtoHTTP, "127.0.0.1:3000", ""},
		{"http://127.0.0.1:3000/", model.ProtoHTTP, "127.0.0.1:3000", ""},
		{"http://localhost", model.ProtoHTTP, "localhost:80", ""},
		{"https://backend.internal", model.ProtoTLS, "backend.internal:443", ""},
		{"https://10.0.0.5:8443", model.ProtoTLS, "10.0.0.5:8443", ""},
		{"h2c://127.0.0.1:50051", model.ProtoH2C, "127.0.0.1:50051", ""},
		{"http://[::1]:8080", model.ProtoHTTP, "[::1]:8080", ""},
		{"http://[fd00::1]", model.ProtoHTTP, "[fd00::1]:80", ""},
		{"tcp://127.0.0.1:22", model.ProtoTCP, "127.0.0.1:22", ""},
		{"udp://127.0.0.1:53", model.ProtoUDP, "127.0.0.1:53", ""},
		{"tcp://[::1]:5432", model.ProtoTCP, "[::1]:5432", ""},
		{"udp://dns.internal:53/", model.ProtoUDP, "dns.internal:53", ""},
		{"TCP://127.0.0.1:22", model.ProtoTCP, "127.0.0.1:22", ""},
		{"tcp://127.0.0.1", "", "", "no port; want tcp://HOST:PORT"},
		{"udp://127.0.0.1", "", "", "no port; want udp://HOST:PORT"},
		{"udp://127.0.0.1:", "", "", "no port; want udp://HOST:PORT"},
		{"tcp://127.0.0.1:0", "", "", `port "0" not accepted`},
		{"udp://127.0.0.1:65536", "", "", "not accepted"},
		{"tcp://:22", "", "", "no host"},
		{"tcp://127.0.0.1:22/x", "", "", "no path"},
		{"udp://127.0.0.1:ssh", "", "", "want http://HOST:PORT"},
		{"ftp://127.0.0.1:21", "", "", `scheme "ftp" not accepted; want http://HOST:PORT, https://HOST:PORT, h2c://HOST:PORT, tcp://HOST:PORT or udp://HOST:PORT`},
		{"HTTP://127.0.0.1:1", model.ProtoHTTP, "127.0.0.1:1", ""}, // url.Parse lower-cases the scheme
		{"127.0.0.1:3000", "", "", "want http://HOST:PORT"},
		{"localhost:3000", "", "", "want http://HOST:PORT"},
		{"", "", "", "want http://HOST:PORT"},
		{"http://", "", "", "want http://HOST:PORT"},
		{"http://:3000", "", "", "no host"},
		{"http://127.0.0.1:3000/app", "", "", "no path"},
		{"http://127.0.0.1:3000?x=1", "", "", "no path, query or user"},
		{"http://user:pw@127.0.0.1:3000", "", "", "no path, query or user"},
		{"http://127.0.0.1:0", "", "", `port "0" not accepted`},
		{"http://127.0.0.1:65536", "", "", "not accepted"},
		{"http://127.0.0.1:abc", "", "", "want http://HOST:PORT"},
		{"http://127.0.0.1:3000 ", "", "", "want http://HOST:PORT"},
	}
	for _, tt := range tests {
		proto, addr, err := ParseTarget(tt.target)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTarget(%q) error %v, want one containing %q", tt.target, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "target") {
				t.Errorf("ParseTarget(%q) error %q does not say it is about the target", tt.target, err)
			}
			continue
		}
		if err != nil || proto != tt.proto || addr != tt.addr {
			t.Errorf("ParseTarget(%q) = %q, %q, %v; want %q, %q", tt.target, proto, addr, err, tt.proto, tt.addr)
		}
	}
}

func validConfig() *Config {
	return &Config{
		Gateways: []GatewayConfig{{Addr: "127.0.0.1:8443"}},
		Services: []ServiceConfig{{Name: "shop", Target: "http://127.0.0.1:3000"}},
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, []byte("x"), 0o600)
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"valid", func(*Config) {}, ""},
		{"version 1", func(c *Config) { c.Version = 1 }, ""},
		{"version 2", func(c *Config) { c.Version = 2 }, "version: 2 not accepted"},
		{"no gateways", func(c *Config) { c.Gateways = nil }, "gateways: at least one gateway"},
		{"addr without port", func(c *Config) { c.Gateways[0].Addr = "gw.example.org" }, "gateways[0].addr"},
		{"empty addr", func(c *Config) { c.Gateways[0].Addr = "" }, "gateways[0].addr"},
		{"addr without host", func(c *Config) { c.Gateways[0].Addr = ":8443" }, "gateways[0].addr"},
		{"addr empty port", func(c *Config) { c.Gateways[0].Addr = "gw:" }, "gateways[0].addr"},
		{"addr port 0", func(c *Config) { c.Gateways[0].Addr = "gw:0" }, "gateways[0].addr"},
		{"addr port too big", func(c *Config) { c.Gateways[0].Addr = "gw:70000" }, "gateways[0].addr"},
		{"addr named port", func(c *Config) { c.Gateways[0].Addr = "gw:https" }, "gateways[0].addr"},
		{"ipv6 addr", func(c *Config) { c.Gateways[0].Addr = "[2001:db8::1]:443" }, ""},
		{"second addr bad", func(c *Config) {
			c.Gateways = append(c.Gateways, GatewayConfig{Addr: "nope"})
		}, "gateways[1].addr"},
		{"fingerprint", func(c *Config) { c.Gateways[0].Fingerprint = pin }, ""},
		{"fingerprint without prefix", func(c *Config) { c.Gateways[0].Fingerprint = strings.TrimPrefix(pin, "sha256:") }, ""},
		{"bad fingerprint", func(c *Config) { c.Gateways[0].Fingerprint = "sha256:abc" }, "gateways[0].fingerprint"},
		{"non-hex fingerprint", func(c *Config) { c.Gateways[0].Fingerprint = "sha256:" + strings.Repeat("z", 64) }, "gateways[0].fingerprint"},
		{"ca file", func(c *Config) { c.Gateways[0].CA = caFile }, ""},
		{"missing ca file", func(c *Config) { c.Gateways[0].CA = missing }, "gateways[0].ca"},
		{"missing default ca file", func(c *Config) { c.CA = missing }, "gateways[0].ca"},
		{"no services", func(c *Config) { c.Services = nil }, "services: at least one service"},
		{"tcp target", func(c *Config) { c.Services[0].Target = "tcp://127.0.0.1:22" }, ""},
		{"udp target", func(c *Config) { c.Services[0].Target = "udp://127.0.0.1:53" }, ""},
		{"tcp target without port", func(c *Config) { c.Services[0].Target = "tcp://127.0.0.1" }, "services[0].target"},
		{"tcp port", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "tcp://127.0.0.1:22", 2222 }, ""},
		{"udp port", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "udp://127.0.0.1:53", 65535 }, ""},
		{"udp port 1", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "udp://127.0.0.1:53", 1 }, ""},
		{"port too big", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "tcp://127.0.0.1:22", 65536 }, "services[0].port: 65536 not accepted; use 1-65535"},
		{"negative port", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "udp://127.0.0.1:53", -1 }, "services[0].port: -1 not accepted; use 1-65535"},
		{"port on http", func(c *Config) { c.Services[0].Port = 8080 }, "services[0].port: only for tcp:// and udp:// targets"},
		{"port on https", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "https://127.0.0.1:8443", 8443 }, "services[0].port: only for tcp:// and udp://"},
		{"proxy protocol 3", func(c *Config) { c.Services[0].ProxyProtocol = 3 }, "services[0].proxy_protocol: 3 not accepted; use 1 or 2"},
		{"acme_http on http", func(c *Config) { c.Services[0].ACMEHTTP = "http://127.0.0.1:80" }, "services[0].acme_http: only for https://"},
		{"acme_http not http", func(c *Config) {
			c.Services[0].Target, c.Services[0].ACMEHTTP = "https://127.0.0.1:8443", "tcp://127.0.0.1:80"
		}, "services[0].acme_http: \"tcp://127.0.0.1:80\"; want http://HOST:PORT"},
		{"proxy protocol on udp", func(c *Config) { c.Services[0].Target, c.Services[0].ProxyProtocol = "udp://127.0.0.1:53", 2 }, "services[0].proxy_protocol: not available for udp://"},
		{"port on h2c", func(c *Config) { c.Services[0].Target, c.Services[0].Port = "h2c://127.0.0.1:1", 9000 }, "services[0].port"},
		{"port on second service", func(c *Config) {
			c.Services = append(c.Services, ServiceConfig{Name: "db", Target: "tcp://127.0.0.1:5432", Port: 5432}, ServiceConfig{Name: "web", Target: "http://127.0.0.1:1", Port: 1})
		}, "services[2].port"},
		{"negative udp idle", func(c *Config) { c.UDPIdleTimeout = -time.Second }, "udp_idle_timeout"},
		{"ftp target", func(c *Config) { c.Services[0].Target = "ftp://127.0.0.1:21" }, `services[0].target: target "ftp://127.0.0.1:21": scheme "ftp"`},
		{"path in target", func(c *Config) { c.Services[0].Target = "http://127.0.0.1:3000/x" }, "services[0].target"},
		{"empty target", func(c *Config) { c.Services[0].Target = "" }, "services[0].target"},
		{"reserved name", func(c *Config) { c.Services[0].Name = "www" }, "services[0].name"},
		{"upper-case name", func(c *Config) { c.Services[0].Name = "Shop" }, "upper-case"},
		{"long name", func(c *Config) { c.Services[0].Name = strings.Repeat("a", 64) }, "services[0].name"},
		{"duplicate names", func(c *Config) {
			c.Services = append(c.Services, ServiceConfig{Name: "blog", Target: "http://127.0.0.1:1"}, ServiceConfig{Name: "shop", Target: "http://127.0.0.1:2"})
		}, `services[2].name: "shop" listed twice`},
		{"two quick tunnels", func(c *Config) {
			c.Services = []ServiceConfig{{Target: "http://127.0.0.1:1"}, {Target: "http://127.0.0.1:2"}}
		}, ""},
		{"negative drain", func(c *Config) { c.DrainTimeout = -time.Second }, "drain_timeout"},
		{"negative dial", func(c *Config) { c.DialTimeout = -time.Second }, "dial_timeout"},
		{"one connection", func(c *Config) { c.Connections = 1 }, ""},
		{"16 connections", func(c *Config) { c.Connections = 16 }, ""},
		{"17 connections", func(c *Config) { c.Connections = 17 }, "connections: 17 not accepted; use 1-16"},
		{"negative connections", func(c *Config) { c.Connections = -1 }, "connections: -1"},
		{"max gateways", func(c *Config) { c.MaxGateways = 2 }, ""},
		{"negative max gateways", func(c *Config) { c.MaxGateways = -1 }, "max_gateways: -1 not accepted; use 1 or more"},
		{"transport tcp", func(c *Config) { c.Transport = "tcp" }, ""},
		{"transport quic", func(c *Config) { c.Transport = "quic" }, ""},
		{"transport auto", func(c *Config) { c.Transport = "auto" }, ""},
		{"transport udp", func(c *Config) { c.Transport = "udp" }, `transport: "udp" not accepted; use auto, tcp or quic`},
		{"weight 1000", func(c *Config) { c.Services[0].Weight = 1000 }, ""},
		{"weight 1001", func(c *Config) { c.Services[0].Weight = 1001 }, "services[0].weight: 1001 not accepted; use 1-1000"},
		{"negative weight", func(c *Config) { c.Services[0].Weight = -1 }, "services[0].weight"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mutate(c)
			svcs, err := c.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if len(svcs) != len(c.Services) {
					t.Errorf("%d services parsed, want %d", len(svcs), len(c.Services))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate: %v, want an error containing %q", err, tt.wantErr)
			}
			if !IsConfigError(err) {
				t.Errorf("validate: %T is not a *ConfigError", err)
			}
			// New refuses it the same way.
			if _, err := New(c, Options{}); !IsConfigError(err) {
				t.Errorf("New: %v, want a config error", err)
			}
		})
	}
}

func TestValidateDefaults(t *testing.T) {
	dir := t.TempDir()
	ca1, ca2 := filepath.Join(dir, "1.pem"), filepath.Join(dir, "2.pem")
	os.WriteFile(ca1, nil, 0o600)
	os.WriteFile(ca2, nil, 0o600)
	c := &Config{
		Token: "wgw_default", CA: ca1,
		Gateways: []GatewayConfig{
			{Addr: "a:1"},
			{Addr: "b:2", CA: ca2, Token: "wgw_own"},
		},
		Services: []ServiceConfig{
			{Name: "shop", Target: "http://127.0.0.1:3000"},
			{Target: "https://127.0.0.1:8443"},
			{Name: "grpc", Target: "h2c://127.0.0.1:50051", Weight: 7},
			{Name: "db", Target: "tcp://127.0.0.1:5432", Port: 15432},
			{Name: "resolver", Target: "udp://[::1]:53"},
		},
	}
	svcs, err := c.validate()
	if err != nil {
		t.Fatal(err)
	}
	if c.DrainTimeout != 30*time.Second || c.DialTimeout != 10*time.Second || c.UDPIdleTimeout != 60*time.Second {
		t.Errorf("defaults: drain %v dial %v udp idle %v, want 30s, 10s and 60s", c.DrainTimeout, c.DialTimeout, c.UDPIdleTimeout)
	}
	if g := c.Gateways[0]; g.CA != ca1 || g.Token != "wgw_default" {
		t.Errorf("gateway 0 %+v: want the default CA and token", g)
	}
	if g := c.Gateways[1]; g.CA != ca2 || g.Token != "wgw_own" {
		t.Errorf("gateway 1 %+v: want its own CA and token kept", g)
	}
	want := []service{
		{name: "shop", protocol: model.ProtoHTTP, addr: "127.0.0.1:3000", target: "http://127.0.0.1:3000", weight: 1},
		{name: "", protocol: model.ProtoTLS, addr: "127.0.0.1:8443", target: "https://127.0.0.1:8443", weight: 1, acmeAddr: "127.0.0.1:80"},
		{name: "grpc", protocol: model.ProtoH2C, addr: "127.0.0.1:50051", target: "h2c://127.0.0.1:50051", weight: 7},
		{name: "db", protocol: model.ProtoTCP, addr: "127.0.0.1:5432", target: "tcp://127.0.0.1:5432", weight: 1, port: 15432},
		{name: "resolver", protocol: model.ProtoUDP, addr: "[::1]:53", target: "udp://[::1]:53", weight: 1},
	}
	for i, s := range svcs {
		if *s != want[i] {
			t.Errorf("service %d = %+v, want %+v", i, *s, want[i])
		}
	}

	// Set timeouts are kept.
	c = validConfig()
	c.DrainTimeout, c.DialTimeout = time.Second, 2*time.Second
	if _, err := c.validate(); err != nil || c.DrainTimeout != time.Second || c.DialTimeout != 2*time.Second {
		t.Errorf("set timeouts changed: %v %v %v", c.DrainTimeout, c.DialTimeout, err)
	}
}

func TestNewBadCA(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte("not a certificate"), 0o600)
	c := validConfig()
	c.Gateways[0].CA = ca
	_, err := New(c, Options{})
	if !IsConfigError(err) || !strings.Contains(err.Error(), "gateways[0].ca") || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("New with a CA file without certificates: %v, want a config error naming gateways[0].ca", err)
	}
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, nil, 0o600)

	tests := []struct {
		name       string
		yaml       string
		loadErr    string // error from LoadConfig
		validErr   string // error from validate after a good load
		checkValid func(*testing.T, *Config)
	}{
		{name: "documented example", yaml: `
token: wgw_abc
ca: ` + ca + `
gateways:
  - addr: 127.0.0.1:8443
  - addr: gw2.example.org:443
    fingerprint: ` + pin + `
    token: wgw_other
    server_name: gw2.example.org
services:
  - name: shop
    target: http://127.0.0.1:3000
  - name: grpc
    target: h2c://127.0.0.1:50051
drain_timeout: 5s
dial_timeout: 1m
`, checkValid: func(t *testing.T, c *Config) {
			if c.Connections != 2 || c.Transport != "auto" {
				t.Errorf("defaults: connections %d, transport %q; want 2, auto", c.Connections, c.Transport)
			}
			if c.Token != "wgw_abc" || len(c.Gateways) != 2 || len(c.Services) != 2 || c.DrainTimeout != 5*time.Second || c.DialTimeout != time.Minute {
				t.Errorf("decoded %+v", c)
			}
			if g := c.Gateways[1]; g.Fingerprint != pin || g.Token != "wgw_other" || g.ServerName != "gw2.example.org" || g.CA != ca {
				t.Errorf("gateway 1 %+v", g)
			}
		}},
		{name: "ha keys", yaml: `
connections: 4
transport: tcp
max_gateways: 3
gateways: [{addr: 'gw:443'}]
services:
  - target: http://127.0.0.1:1
    weight: 10
`, checkValid: func(t *testing.T, c *Config) {
			if c.Connections != 4 || c.Transport != "tcp" || c.Services[0].Weight != 10 || c.MaxGateways != 3 {
				t.Errorf("decoded %+v", c)
			}
		}},
		{name: "negative max gateways", yaml: "max_gateways: -2\ngateways: [{addr: 'gw:443'}]\nservices: [{target: 'http://127.0.0.1:1'}]\n", validErr: "max_gateways"},
		{name: "bad transport", yaml: "transport: udp\ngateways: [{addr: 'gw:443'}]\nservices: [{target: 'http://127.0.0.1:1'}]\n", validErr: "transport"},
		{name: "empty file", yaml: "", validErr: "gateways: at least one gateway"},
		{name: "no services", yaml: "gateways: [{addr: 'gw:443'}]\n", validErr: "services: at least one service"},
		{name: "unknown key", yaml: "gateway:\n  - addr: gw:443\n", loadErr: `unknown key "gateway"`},
		{name: "unknown gateway key", yaml: "gateways:\n  - adr: gw:443\n", loadErr: "adr"},
		{name: "unknown service key", yaml: "services:\n  - name: a\n    url: http://x:1\n", loadErr: "url"},
		{name: "int duration", yaml: "drain_timeout: 30\n", loadErr: "drain_timeout"},
		{name: "bad duration", yaml: "dial_timeout: soon\n", loadErr: "dial_timeout"},
		{name: "gateways not a list", yaml: "gateways: gw:443\n", loadErr: "gateways"},
		{name: "tcp and udp", yaml: `
gateways: [{addr: 'gw:443'}]
services:
  - name: ssh
    target: tcp://127.0.0.1:22
    port: 2222
  - target: udp://127.0.0.1:53
udp_idle_timeout: 2m
`, checkValid: func(t *testing.T, c *Config) {
			if c.Services[0].Port != 2222 || c.Services[1].Port != 0 || c.UDPIdleTimeout != 2*time.Minute {
				t.Errorf("decoded %+v", c)
			}
		}},
		{name: "tcp target without port", yaml: "gateways: [{addr: 'gw:443'}]\nservices: [{target: 'tcp://127.0.0.1'}]\n", validErr: "services[0].target"},
		{name: "port on http", yaml: "gateways: [{addr: 'gw:443'}]\nservices: [{target: 'http://127.0.0.1:1', port: 80}]\n", validErr: "services[0].port"},
		{name: "port not a number", yaml: "services: [{target: 'tcp://127.0.0.1:1', port: high}]\n", loadErr: "port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadConfig(writeConfig(t, tt.yaml))
			if tt.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.loadErr) || !IsConfigError(err) {
					t.Fatalf("LoadConfig: %v, want a config error containing %q", err, tt.loadErr)
				}
				if !strings.Contains(err.Error(), "accepted keys") {
					t.Errorf("LoadConfig: %q does not list the accepted keys", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			_, err = c.validate()
			if tt.validErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.validErr) {
					t.Fatalf("validate: %v, want an error containing %q", err, tt.validErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			if tt.checkValid != nil {
				tt.checkValid(t, c)
			}
		})
	}
	_, err := LoadConfig(filepath.Join(dir, "missing.yaml"))
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Errorf("LoadConfig of a missing file: %v, want a *ConfigError", err)
	}
}

func TestInflight(t *testing.T) {
	var f inflight
	select {
	case <-f.idle():
	default:
		t.Fatal("idle not ready with nothing in flight")
	}
	f.add()
	f.add()
	idle := f.idle()
	f.done()
	select {
	case <-idle:
		t.Fatal("idle with one stream left")
	default:
	}
	f.add() // a stream may start while someone waits
	f.done()
	f.done()
	select {
	case <-idle:
	default:
		t.Fatal("not idle after every stream ended")
	}
	if f.count() != 0 {
		t.Errorf("count %d", f.count())
	}
}

// TestResolveGatewayAddr: gateways on the Yggdrasil overlay by address or
// by the node's public key; bad forms are refused with what is accepted.
func TestResolveGatewayAddr(t *testing.T) {
	// RFC 8032's first ed25519 test key: its 200::/7 address as
	// yggdrasil-go derives it.
	const key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	for in, want := range map[string]string{
		"gw.example.org:443":     "gw.example.org:443",
		"ygg://[200:1::2]:8443":  "[200:1::2]:8443",
		"ygg://[300:1::2]:443":   "[300:1::2]:443",
		"ygg://[201:abcd::1]":    "[201:abcd::1]:443",
		"ygg://" + key + ":8443": "",
		"ygg://" + key:           "",
	} {
		got, err := ResolveGatewayAddr(in)
		if err != nil {
			t.Errorf("ResolveGatewayAddr(%q): %v", in, err)
			continue
		}
		if want != "" && got != want {
			t.Errorf("ResolveGatewayAddr(%q) = %q, want %q", in, got, want)
		}
		if want == "" {
			host, _, _ := strings.Cut(strings.TrimPrefix(got, "["), "]")
			if a, err := netip.ParseAddr(host); err != nil || !yggNetwork.Contains(a) {
				t.Errorf("ResolveGatewayAddr(%q) = %q, want an address in 200::/7", in, got)
			}
		}
	}
	a, _ := ResolveGatewayAddr("ygg://" + key + ":8443")
	b, _ := ResolveGatewayAddr("ygg://" + key)
	if strings.TrimSuffix(a, ":8443") != strings.TrimSuffix(b, ":443") {
		t.Errorf("the same key gave two addresses: %s and %s", a, b)
	}
	for _, bad := range []string{"ygg://[2001:db8::1]:443", "ygg://nothex:443", "ygg://[200::1]:0", "ygg://" + key[:10], "no-port"} {
		if _, err := ResolveGatewayAddr(bad); err == nil {
			t.Errorf("ResolveGatewayAddr(%q) accepted", bad)
		}
	}
}
