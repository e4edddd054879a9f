package gateway_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/gateway"
)

func TestCompleteDefaults(t *testing.T) {
	var c gateway.Config
	c.Complete()
	// DESIGN.md's contract for `webgw gateway` with no flags.
	want := map[string][2]string{
		"data_dir":   {c.DataDir, "webgw-data"},
		"domain":     {c.Domain, "localhost"},
		"http_addr":  {c.HTTPAddr, "127.0.0.1:8080"},
		"https_addr": {c.HTTPSAddr, "127.0.0.1:8443"},
		"dns_addr":   {c.DNSAddr, "127.0.0.1:8053"},
		"api_addr":   {c.APIAddr, "127.0.0.1:8081"},
		"log_level":  {c.LogLevel, "info"},
		"port_range": {c.PortRange, "20000-20099"},
		"store":      {c.Store, ""}, // <data_dir>/state.db, resolved by Start
	}
	for key, gw := range want {
		if gw[0] != gw[1] {
			t.Errorf("Complete: %s = %q, want %q", key, gw[0], gw[1])
		}
	}
	if c.Open == nil || !*c.Open {
		t.Error("Complete: open is not true by default (zero-config gateways accept quick tunnels)")
	}
	if c.AccessLog == nil || !*c.AccessLog {
		t.Error("Complete: access_log is not true by default")
	}
	if c.Limits != (gateway.Limits{}) {
		t.Errorf("Complete: limits %+v, want zero values (defaults applied where used)", c.Limits)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("the default config does not validate: %v", err)
	}
	if c.WGPrefix != "" || c.WGListen != "" || c.WGPerDevice != "" {
		t.Errorf("Complete: 4to6 is not off by default: %q %q %q", c.WGPrefix, c.WGListen, c.WGPerDevice)
	}
	c4 := gateway.Config{WGPrefix: "2001:db8:100::/56"}
	c4.Complete()
	if c4.WGListen != ":51820" || c4.WGPerDevice != "/128" {
		t.Errorf("Complete with wg_prefix: wg_listen %q, wg_per_device %q; want :51820 and /128", c4.WGListen, c4.WGPerDevice)
	}

	// Set values are kept; the domain is canonicalised.
	f := false
	c = gateway.Config{DataDir: "/d", Domain: "Example.ORG.", HTTPAddr: ":80", HTTPSAddr: ":443", DNSAddr: ":53",
		APIAddr: "10.0.0.1:9", LogLevel: "debug", Open: &f, AccessLog: &f}
	c.Complete()
	if c.DataDir != "/d" || c.Domain != "example.org" || c.HTTPAddr != ":80" || c.HTTPSAddr != ":443" ||
		c.DNSAddr != ":53" || c.APIAddr != "10.0.0.1:9" || c.LogLevel != "debug" || *c.Open || *c.AccessLog {
		t.Errorf("Complete changed set values: %+v", c)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*gateway.Config)
		wantErr string // "" means valid; else a substring of the error
	}{
		{"defaults", func(*gateway.Config) {}, ""},
		{"version 1", func(c *gateway.Config) { c.Version = 1 }, ""},
		{"version 2", func(c *gateway.Config) { c.Version = 2 }, "version: 2 not accepted"},
		{"multi-label domain", func(c *gateway.Config) { c.Domain = "gw.example.org" }, ""},
		{"domain with underscore", func(c *gateway.Config) { c.Domain = "my_gw.example" }, "domain:"},
		{"domain with empty label", func(c *gateway.Config) { c.Domain = "gw..example" }, "domain:"},
		{"domain leading dot", func(c *gateway.Config) { c.Domain = ".example" }, "domain:"},
		{"domain with port", func(c *gateway.Config) { c.Domain = "example.org:443" }, "domain:"},
		{"domain too long", func(c *gateway.Config) { c.Domain = strings.Repeat("a.", 101) + "org" }, "domain:"},
		{"domain label too long", func(c *gateway.Config) { c.Domain = strings.Repeat("a", 64) + ".org" }, "domain:"},
		{"ipv6 any", func(c *gateway.Config) { c.HTTPSAddr = "[::]:443" }, ""},
		{"port zero", func(c *gateway.Config) { c.HTTPAddr = "127.0.0.1:0" }, ""},
		{"empty host", func(c *gateway.Config) { c.APIAddr = ":8081" }, ""},
		{"localhost host", func(c *gateway.Config) { c.APIAddr = "localhost:8081" }, ""},
		{"no port", func(c *gateway.Config) { c.HTTPAddr = "127.0.0.1" }, "http_addr:"},
		{"port too big", func(c *gateway.Config) { c.HTTPSAddr = "127.0.0.1:65536" }, "https_addr:"},
		{"negative port", func(c *gateway.Config) { c.DNSAddr = "127.0.0.1:-1" }, "dns_addr:"},
		{"port name", func(c *gateway.Config) { c.APIAddr = "127.0.0.1:http" }, "api_addr:"},
		{"port with plus", func(c *gateway.Config) { c.APIAddr = "127.0.0.1:+80" }, "api_addr:"},
		{"host name", func(c *gateway.Config) { c.HTTPAddr = "example.org:80" }, "http_addr:"},
		{"public ips", func(c *gateway.Config) { c.PublicIPs = []string{"192.0.2.1", "2001:db8::1"} }, ""},
		{"bad public ip", func(c *gateway.Config) { c.PublicIPs = []string{"192.0.2.300"} }, "public_ip:"},
		{"bad upstream allow", func(c *gateway.Config) { c.UpstreamAllow = []string{"10.0.0.0/33"} }, "upstream_allow:"},
		{"bolt path", func(c *gateway.Config) { c.Store = "/var/lib/webgw/state.db" }, ""},
		{"bolt url", func(c *gateway.Config) { c.Store = "bolt:///var/lib/webgw/state.db" }, ""},
		{"etcd", func(c *gateway.Config) { c.Store = "etcd://127.0.0.1:2379,[::1]:2379" }, ""},
		{"etcd without a port", func(c *gateway.Config) { c.Store = "etcd://127.0.0.1" }, "store:"},
		{"etcd options without etcd", func(c *gateway.Config) { c.Etcd.Username = "u" }, "etcd: the etcd options need an etcd:// store"},
		{"etcd cert without key", func(c *gateway.Config) { c.Store, c.Etcd.Cert = "etcd://127.0.0.1:2379", "c.pem" }, "etcd.cert and etcd.key"},
		{"other scheme", func(c *gateway.Config) { c.Store = "redis://x" }, "store:"},
		{"log level", func(c *gateway.Config) { c.LogLevel = "verbose" }, "log_level:"},
		{"log level upper", func(c *gateway.Config) { c.LogLevel = "INFO" }, "log_level:"},
		{"max header bytes", func(c *gateway.Config) { c.Limits.MaxHeaderBytes = 4096 }, ""},
		{"negative max header bytes", func(c *gateway.Config) { c.Limits.MaxHeaderBytes = -1 }, "limits.max_header_bytes"},
		{"tiny max header bytes", func(c *gateway.Config) { c.Limits.MaxHeaderBytes = 10 }, "limits.max_header_bytes"},
		{"huge max header bytes", func(c *gateway.Config) { c.Limits.MaxHeaderBytes = 1<<20 + 1 }, "limits.max_header_bytes"},
		{"negative read header timeout", func(c *gateway.Config) { c.Limits.ReadHeaderTimeout = -time.Second }, "limits"},
		{"negative idle timeout", func(c *gateway.Config) { c.Limits.IdleTimeout = -time.Second }, "limits"},
		{"negative quick tunnel idle", func(c *gateway.Config) { c.Limits.QuickTunnelIdle = -time.Second }, "limits"},
		{"negative streams", func(c *gateway.Config) { c.Limits.MaxStreamsPerAgent = -1 }, "limits"},
		{"negative agents", func(c *gateway.Config) { c.Limits.MaxAgentsPerTenant = -1 }, "limits"},
		{"port range", func(c *gateway.Config) { c.PortRange = "20000-29999" }, ""},
		{"port range of one port", func(c *gateway.Config) { c.PortRange = "20000" }, ""},
		{"port range all ports", func(c *gateway.Config) { c.PortRange = "1-65535" }, ""},
		{"proxy protocol sources", func(c *gateway.Config) { c.ProxyProtocolFrom = []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"} }, ""},
		{"proxy protocol bad source", func(c *gateway.Config) { c.ProxyProtocolFrom = []string{"lb.example"} }, `proxy_protocol_from: "lb.example" is neither a CIDR`},
		{"negative tcp idle", func(c *gateway.Config) { c.Limits.TCPIdleTimeout = -time.Second }, "limits.tcp_idle_timeout"},
		{"negative udp sessions", func(c *gateway.Config) { c.Limits.MaxUDPSessionsPerPort = -1 }, "limits.max_udp_sessions_per_port"},
		{"negative conns per ip", func(c *gateway.Config) { c.Limits.MaxTCPConnsPerIP = -1 }, "limits.max_tcp_conns_per_ip"},
		{"port range zero", func(c *gateway.Config) { c.PortRange = "0-100" }, "port_range:"},
		{"port range too high", func(c *gateway.Config) { c.PortRange = "60000-65536" }, "port_range:"},
		{"port range reversed", func(c *gateway.Config) { c.PortRange = "29999-20000" }, "port_range:"},
		{"port range colon", func(c *gateway.Config) { c.PortRange = "20000:29999" }, "use FIRST-LAST such as 20000-29999"},
		{"port range empty after complete", func(c *gateway.Config) { c.PortRange = "" }, "port_range:"},
		{"max ports per tenant", func(c *gateway.Config) { c.Limits.MaxPortsPerTenant = 5 }, ""},
		{"negative max ports per tenant", func(c *gateway.Config) { c.Limits.MaxPortsPerTenant = -1 }, "limits.max_ports_per_tenant"},
		{"4to6", func(c *gateway.Config) {
			c.WGPrefix, c.PublicIPs = "2001:db8:100::/56", []string{"2001:db8::1", "203.0.113.1"}
		}, ""},
		{"4to6 /64 per device", func(c *gateway.Config) {
			c.WGPrefix, c.WGPerDevice, c.WGEndpoint = "2001:db8:100::/56", "/64", "gw.example.net:51820"
		}, ""},
		{"4to6 full", func(c *gateway.Config) {
			c.WGPrefix, c.WGListen, c.WGEndpoint, c.WGNAT66, c.WGDNS = "fd00:1::/64", "[::]:0", "203.0.113.1:443", true, []string{"2606:4700:4700::1111"}
			c.PublicIPs = []string{"2001:db8::1"}
		}, ""},
		{"4to6 nat66 without an IPv6 public_ip", func(c *gateway.Config) {
			c.WGPrefix, c.WGEndpoint, c.WGNAT66 = "fd00:1::/64", "203.0.113.1:443", true
		}, "wg_nat66: give an IPv6 public_ip"},
		{"4to6 keys without a prefix", func(c *gateway.Config) { c.WGListen = ":51820" }, "wg_listen, wg_per_device, wg_nat66, wg_endpoint and wg_dns need wg_prefix"},
		{"4to6 nat66 without a prefix", func(c *gateway.Config) { c.WGNAT66 = true }, "need wg_prefix"},
		{"4to6 ipv4 prefix", func(c *gateway.Config) { c.WGPrefix, c.WGEndpoint = "10.0.0.0/8", "203.0.113.1:51820" }, "wg_prefix: 10.0.0.0/8 is IPv4"},
		{"4to6 bad prefix", func(c *gateway.Config) { c.WGPrefix, c.WGEndpoint = "2001:db8::", "203.0.113.1:51820" }, `wg_prefix: "2001:db8::" is not an IPv6 prefix`},
		{"4to6 /64 in a /64", func(c *gateway.Config) {
			c.WGPrefix, c.WGPerDevice, c.WGEndpoint = "2001:db8:100::/64", "/64", "203.0.113.1:51820"
		}, "wg_prefix: a /64 per device needs a prefix shorter than /64"},
		{"4to6 per device", func(c *gateway.Config) {
			c.WGPrefix, c.WGPerDevice, c.WGEndpoint = "2001:db8:100::/56", "/96", "203.0.113.1:51820"
		}, `wg_per_device: "/96" not accepted`},
		{"4to6 no endpoint", func(c *gateway.Config) { c.WGPrefix, c.PublicIPs = "2001:db8:100::/56", []string{"2001:db8::1"} }, "wg_endpoint: give the HOST:PORT devices dial"},
		{"4to6 bad endpoint", func(c *gateway.Config) { c.WGPrefix, c.WGEndpoint = "2001:db8:100::/56", "203.0.113.1" }, "wg_endpoint:"},
		{"4to6 endpoint port 0", func(c *gateway.Config) { c.WGPrefix, c.WGEndpoint = "2001:db8:100::/56", "203.0.113.1:0" }, "wg_endpoint:"},
		{"4to6 endpoint any", func(c *gateway.Config) { c.WGPrefix, c.WGEndpoint = "2001:db8:100::/56", "0.0.0.0:51820" }, "wg_endpoint:"},
		{"4to6 endpoint bad name", func(c *gateway.Config) { c.WGPrefix, c.WGEndpoint = "2001:db8:100::/56", "gw_1.example:51820" }, "wg_endpoint:"},
		{"4to6 listen host", func(c *gateway.Config) {
			c.WGPrefix, c.WGEndpoint, c.WGListen = "2001:db8:100::/56", "203.0.113.1:51820", "203.0.113.1:51820"
		}, "wg_listen: \"203.0.113.1:51820\": WireGuard listens on every address"},
		{"4to6 listen port", func(c *gateway.Config) {
			c.WGPrefix, c.WGEndpoint, c.WGListen = "2001:db8:100::/56", "203.0.113.1:51820", ":65536"
		}, "wg_listen:"},
		{"4to6 ipv4 dns", func(c *gateway.Config) {
			c.WGPrefix, c.WGEndpoint, c.WGDNS = "2001:db8:100::/56", "203.0.113.1:51820", []string{"1.1.1.1"}
		}, "wg_dns: 1.1.1.1 is IPv4"},
		{"4to6 bad dns", func(c *gateway.Config) {
			c.WGPrefix, c.WGEndpoint, c.WGDNS = "2001:db8:100::/56", "203.0.113.1:51820", []string{"dns.google"}
		}, `wg_dns: "dns.google" is not an IP address`},
		{"negative max devices per tenant", func(c *gateway.Config) { c.Limits.MaxDevicesPerTenant = -1 }, "limits.max_devices_per_tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c gateway.Config
			c.Complete()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate: %q, want it to contain %q", err, tt.wantErr)
			}
			if !gateway.IsConfigError(err) {
				t.Errorf("Validate: %T is not a config error (exit code 2)", err)
			}
		})
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(*testing.T, *gateway.Config)
	}{
		{name: "empty file", yaml: "", check: func(t *testing.T, c *gateway.Config) {
			if c.Domain != "" || c.Open != nil {
				t.Errorf("empty file gave %+v, want the zero config", c)
			}
		}},
		{name: "comments only", yaml: "# nothing here\n"},
		{name: "full", yaml: `version: 1
data_dir: /srv/webgw
domain: gw.example.org
http_addr: 0.0.0.0:80
https_addr: 0.0.0.0:443
dns_addr: 0.0.0.0:53
api_addr: 127.0.0.1:8081
upstream_allow: ["::1/128", 10.0.0.0/8]
public_ip: [192.0.2.1, "2001:db8::1"]
store: /srv/webgw/state.db
open: false
access_log: false
log_level: warn
port_range: 30000-30999
ygg_listen: ["tls://0.0.0.0:9001"]
ygg_peer: ["quic://peer.example.net:9002"]
ygg_password: pw
ygg_allow_key: ["0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a"]
ygg_tun: ygg0
limits:
  max_header_bytes: 8192
  read_header_timeout: 5s
  idle_timeout: 2m
  max_streams_per_agent: 10
  max_agents_per_tenant: 3
  max_ports_per_tenant: 7
  quick_tunnel_idle: 1h
`, check: func(t *testing.T, c *gateway.Config) {
			if c.Version != 1 || c.DataDir != "/srv/webgw" || c.Domain != "gw.example.org" || c.HTTPAddr != "0.0.0.0:80" ||
				c.HTTPSAddr != "0.0.0.0:443" || c.DNSAddr != "0.0.0.0:53" || c.APIAddr != "127.0.0.1:8081" ||
				len(c.PublicIPs) != 2 || len(c.UpstreamAllow) != 2 || c.Store != "/srv/webgw/state.db" || c.Open == nil || *c.Open ||
				c.AccessLog == nil || *c.AccessLog || c.LogLevel != "warn" || c.PortRange != "30000-30999" ||
				len(c.YggListen) != 1 || len(c.YggPeer) != 1 || c.YggPassword != "pw" || len(c.YggAllowKey) != 1 || c.YggTUN != "ygg0" {
				t.Errorf("decoded %+v", c)
			}
			want := gateway.Limits{MaxHeaderBytes: 8192, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
				MaxStreamsPerAgent: 10, MaxAgentsPerTenant: 3, MaxPortsPerTenant: 7, QuickTunnelIdle: time.Hour}
			if c.Limits != want {
				t.Errorf("limits %+v, want %+v", c.Limits, want)
			}
			c.Complete()
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		}},
		{name: "4to6", yaml: `public_ip: [203.0.113.1, "2001:db8::1"]
wg_prefix: 2001:db8:100::/56
wg_listen: ":51821"
wg_per_device: /64
wg_nat66: true
wg_endpoint: gw.example.net:51821
wg_dns: ["2001:4860:4860::8888", "2606:4700:4700::1111"]
limits:
  max_devices_per_tenant: 3
`, check: func(t *testing.T, c *gateway.Config) {
			if c.WGPrefix != "2001:db8:100::/56" || c.WGListen != ":51821" || c.WGPerDevice != "/64" || !c.WGNAT66 ||
				c.WGEndpoint != "gw.example.net:51821" || len(c.WGDNS) != 2 || c.Limits.MaxDevicesPerTenant != 3 {
				t.Errorf("decoded %+v", c)
			}
			c.Complete()
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		}},
		{name: "unknown key", yaml: "domain: x\nlisten: 1.2.3.4\n", wantErr: `unknown key "listen"`},
		{name: "unknown nested key", yaml: "limits:\n  max_streams: 3\n", wantErr: "max_streams"},
		{name: "flag spelling", yaml: "data-dir: /x\n", wantErr: "data-dir"},
		{name: "wrong type", yaml: "open: maybe\n", wantErr: "open"},
		{name: "port range as a number", yaml: "port_range: 20000\n", check: func(t *testing.T, c *gateway.Config) {
			c.Complete()
			if c.PortRange != "20000" || c.Validate() != nil {
				t.Errorf("port_range: 20000 gave %q (%v)", c.PortRange, c.Validate())
			}
		}},
		{name: "port range as a list", yaml: "port_range: [20000, 20010]\n", wantErr: "port_range"},
		{name: "int duration", yaml: "limits:\n  idle_timeout: 30\n", wantErr: "idle_timeout"},
		{name: "not a map", yaml: "- a\n- b\n", wantErr: "config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := gateway.LoadConfig(writeFile(t, tt.yaml))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("LoadConfig: nil error, want one containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !gateway.IsConfigError(err) {
					t.Errorf("LoadConfig: %v (%T), want a config error containing %q", err, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
	if _, err := gateway.LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !gateway.IsConfigError(err) {
		t.Errorf("LoadConfig of a missing file: %v, want a config error", err)
	}
}

func FuzzLoadConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"domain: example.org\n",
		"version: 1\nlimits:\n  idle_timeout: 5s\n",
		"public_ip: [1.2.3.4]\nopen: false\n",
		"store: etcd://x\n",
		"port_range: 20000-20099\nlimits:\n  max_ports_per_tenant: 5\n",
		"public_ip: [203.0.113.1]\nwg_prefix: 2001:db8:100::/56\nwg_per_device: /64\nwg_dns: [\"2001:db8::53\"]\nlimits:\n  max_devices_per_tenant: 2\n",
		"wg_prefix: fd00::/64\nwg_listen: \":0\"\nwg_endpoint: gw.example:51820\nwg_nat66: true\n",
		"unknown: 1\n",
		"limits: [1, 2]\n",
		"&a [*a]\n",
		"domain: !!binary aGVsbG8=\n",
		"---\ndomain: a\n---\ndomain: b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := gateway.LoadConfig(p)
		if err != nil {
			if !gateway.IsConfigError(err) {
				t.Fatalf("LoadConfig error %T is not a config error: %v", err, err)
			}
			return
		}
		c.Complete()
		if err := c.Validate(); err != nil && !gateway.IsConfigError(err) {
			t.Fatalf("Validate error %T is not a config error: %v", err, err)
		}
	})
}
