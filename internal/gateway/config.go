package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/netpolicy"
	"github.com/webgw/webgw/internal/resolve"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/yamlconf"

	"github.com/webgw/webgw/internal/model"
)

// Config is the gateway's canonical configuration, version 1. Every field
// has a config-file key and a flag of the same name (underscores become
// dashes); flags win. The zero value of each field means its default.
type Config struct {
	// Version of the file format; 0 or 1.
	Version int `yaml:"version"`
	// DataDir holds state, the local CA and the admin token; "" means ./webgw-data.
	DataDir string `yaml:"data_dir"`
	// Domain is the gateway domain; services are NAME.<domain>; "" means localhost.
	Domain string `yaml:"domain"`
	// HTTPAddr is the plain HTTP listener; "" means 127.0.0.1:8080.
	HTTPAddr string `yaml:"http_addr"`
	// HTTPSAddr is the HTTPS and agent tunnel listener; "" means 127.0.0.1:8443.
	HTTPSAddr string `yaml:"https_addr"`
	// DNSAddr is the authoritative DNS server's UDP and TCP address; ""
	// means 127.0.0.1:8053, and then a port already in use only turns DNS
	// off (with a warning), so several zero-config gateways can run.
	DNSAddr string `yaml:"dns_addr"`
	// ACMECA is the ACME directory URL the gateway gets its certificates
	// from; "" means its local CA (ca.pem in the data dir).
	ACMECA string `yaml:"acme_ca"`
	// ACMEEmail is the ACME account's contact; "" means none.
	ACMEEmail string `yaml:"acme_email"`
	// ACMEEABKeyID and ACMEEABHMAC are the CA's external account binding,
	// when it asks for one.
	ACMEEABKeyID string `yaml:"acme_eab_kid"`
	ACMEEABHMAC  string `yaml:"acme_eab_hmac"`
	// ACMECARoot is a PEM file of the CAs that sign the ACME server's own
	// TLS certificate (a private or test CA); "" means the system's roots.
	ACMECARoot string `yaml:"acme_ca_root"`
	// ACMECAA is the CA's domain named in the gateway domain's CAA records
	// ("letsencrypt.org"); "" means derived from acme_ca's host (its last two
	// labels), none for an IP address.
	ACMECAA string `yaml:"acme_caa"`
	// DNSTTL is the TTL of DNS answers; 0 means 60 s.
	DNSTTL time.Duration `yaml:"dns_ttl"`
	// Resolvers are the recursive resolvers (IP, or IP:PORT) the gateway
	// asks when it checks proof of control of a domain; empty means the
	// system's (/etc/resolv.conf).
	Resolvers []string `yaml:"resolver"`
	// DomainRecheck is how often the proof of control of every custom
	// domain is checked again; 0 means 6 h (DefaultDomainRecheck).
	DomainRecheck time.Duration `yaml:"domain_recheck"`
	// DomainGrace is how long a verified domain whose proof is gone is
	// still served; 0 means 24 h (DefaultDomainGrace).
	DomainGrace time.Duration `yaml:"domain_grace"`
	// APIAddr is the admin API, metrics and health listener; "" means 127.0.0.1:8081.
	APIAddr string `yaml:"api_addr"`
	// PublicIPs are the gateway's public addresses (put in its certificate
	// for agents, and later in DNS answers).
	PublicIPs []string `yaml:"public_ip"`
	// Region labels the gateway in the cluster's member list (free text,
	// up to 64 printable characters); "" means none.
	Region string `yaml:"region"`
	// ClusterTTL is the membership lease TTL: a gateway that stops renewing
	// it leaves the cluster (and DNS answers) this long after; 0 means 10 s.
	ClusterTTL time.Duration `yaml:"cluster_ttl"`
	// UpstreamAllow lists the networks (CIDRs or addresses) direct upstreams
	// may be in; empty means none: services are then served by agents only.
	// Loopback, link-local and the gateway's own addresses need an entry of
	// their own (::1/128), a wider one (::/0) does not cover them.
	UpstreamAllow []string `yaml:"upstream_allow"`
	// Store is a bolt file path (or bolt://PATH), or etcd://HOST:PORT[,HOST:PORT...]
	// for a cluster's etcd; "" means <data_dir>/state.db.
	Store string `yaml:"store"`
	// Etcd are the options of an etcd:// store.
	Etcd EtcdConfig `yaml:"etcd"`
	// Open lets agents without a token get quick-tunnel names; nil means true.
	Open *bool `yaml:"open"`
	// AccessLog writes one log line per request or stream; nil means true.
	AccessLog *bool `yaml:"access_log"`
	// HTTP3 serves HTTP/3 and QUIC agent tunnels on UDP at the HTTPS port,
	// advertised with Alt-Svc; nil means true.
	HTTP3 *bool `yaml:"http3"`
	// PortRange is the range public TCP and UDP ports are allocated from,
	// FIRST-LAST (20000-29999) or one port (20000); "" means 20000-20099
	// (DefaultPortRange). The ports listen on the host of https_addr.
	PortRange string `yaml:"port_range"`
	// ProxyProtocolFrom lists the sources (CIDRs or addresses) whose
	// connections to the HTTP, HTTPS and public TCP ports must open with a
	// PROXY protocol header (v1 or v2), whose client address is then
	// used; empty means none. Other sources' connections are taken as they
	// are: a PROXY header they send is not honoured.
	ProxyProtocolFrom []string `yaml:"proxy_protocol_from"`
	// WGPrefix is the IPv6 prefix routed to this gateway from which 4to6
	// devices (IPv4-to-IPv6 WireGuard access) get their addresses, such as
	// 2001:db8:100::/56; "" turns 4to6 off, and the other wg_ keys need it.
	WGPrefix string `yaml:"wg_prefix"`
	// WGListen is the UDP address WireGuard listens on, :PORT (every
	// address of the host); "" means :51820. Port 0 picks a free one.
	WGListen string `yaml:"wg_listen"`
	// WGPerDevice is what each device gets of wg_prefix: "/128" (one
	// address, the default when "") or "/64" (a prefix shorter than /64 is
	// needed then).
	WGPerDevice string `yaml:"wg_per_device"`
	// WGNAT66 masquerades devices' traffic behind the gateway's own IPv6
	// address instead of routing their addresses, for an operator who has
	// no prefix routed to the gateway (a single /64, or ULA addresses).
	WGNAT66 bool `yaml:"wg_nat66"`
	// WGEndpoint is the HOST:PORT devices dial, written in their configs;
	// "" means the first IPv4 public_ip and the wg_listen port.
	WGEndpoint string `yaml:"wg_endpoint"`
	// WGDNS are the resolvers (IPv6 addresses) written in devices'
	// configs; empty means none (the configs get no DNS line).
	WGDNS []string `yaml:"wg_dns"`
	// YggListen are the embedded Yggdrasil node's access point listeners,
	// URIs tls://HOST:PORT, tcp://HOST:PORT or quic://HOST:PORT (such as
	// tls://0.0.0.0:9001); users' nodes peer with the gateway there.
	// The node runs when ygg_listen, ygg_peer or ygg_tun is set; empty
	// (all three) means no node.
	YggListen []string `yaml:"ygg_listen"`
	// YggPeer are the node's outbound peers, URIs as for ygg_listen.
	YggPeer []string `yaml:"ygg_peer"`
	// YggPassword, when set, is the peering password asked of peers; ""
	// means none.
	YggPassword string `yaml:"ygg_password"`
	// YggAllowKey lists the only peers' public keys (64 hex characters)
	// accepted inbound; empty means any.
	YggAllowKey []string `yaml:"ygg_allow_key"`
	// YggTUN, when set, also puts the host on the overlay through a TUN
	// interface of this name; "" means none (the node's userspace stack only).
	YggTUN string `yaml:"ygg_tun"`
	// LogLevel is debug, info, warn or error; "" means info.
	LogLevel string `yaml:"log_level"`
	// Limits on what strangers and agents can send.
	Limits Limits `yaml:"limits"`

	// dnsDefault is set by Complete when DNSAddr was left to its default.
	dnsDefault bool
}

// EtcdConfig are the options of an etcd:// store. Zero values: no TLS, no
// auth, the key prefix "webgw/".
type EtcdConfig struct {
	// CA is a PEM file of the CAs signing the etcd servers' certificates;
	// setting it (or Cert) turns TLS on.
	CA string `yaml:"ca"`
	// Cert and Key are the client certificate and key, for mutual TLS.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// Username and Password authenticate with etcd's own auth.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// Prefix is put before every key, so several clusters can share an etcd.
	Prefix string `yaml:"prefix"`
}

// Limits bound what strangers and agents can send. Zero values mean defaults.
type Limits struct {
	// MaxHeaderBytes bounds request headers; 0 means 64 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// ReadHeaderTimeout bounds reading request headers (slowloris); 0 means 10 s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes idle client connections; 0 means 120 s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxStreamsPerAgent bounds concurrent streams to one agent; 0 means 1024.
	MaxStreamsPerAgent int64 `yaml:"max_streams_per_agent"`
	// MaxAgentsPerTenant bounds concurrent agent sessions per tenant; 0 means 100.
	MaxAgentsPerTenant int `yaml:"max_agents_per_tenant"`
	// MaxQuickTunnelsPerIP bounds concurrent anonymous (quick-tunnel) agent
	// sessions from one address; 0 means 10.
	MaxQuickTunnelsPerIP int `yaml:"max_quick_tunnels_per_ip"`
	// MaxPortsPerTenant bounds the public TCP and UDP ports one tenant may
	// hold; 0 means 100 (DefaultMaxPortsPerTenant).
	MaxPortsPerTenant int `yaml:"max_ports_per_tenant"`
	// MaxDevicesPerTenant bounds the 4to6 devices one tenant may hold; 0
	// means 10 (DefaultMaxDevicesPerTenant).
	MaxDevicesPerTenant int `yaml:"max_devices_per_tenant"`
	// TCPIdleTimeout closes a forwarded TCP connection after no byte moved
	// either way for this long; 0 means 10 min.
	TCPIdleTimeout time.Duration `yaml:"tcp_idle_timeout"`
	// UDPIdleTimeout ends a UDP session after no datagram moved either way
	// for this long; 0 means 60 s.
	UDPIdleTimeout time.Duration `yaml:"udp_idle_timeout"`
	// MaxUDPSessionsPerPort bounds the client sessions of one UDP port; 0
	// means 1024.
	MaxUDPSessionsPerPort int `yaml:"max_udp_sessions_per_port"`
	// MaxUDPSessionsPerTenant bounds the client sessions of all of one
	// tenant's UDP ports together (of all anonymous ones together); 0 means 4096.
	MaxUDPSessionsPerTenant int `yaml:"max_udp_sessions_per_tenant"`
	// MaxTCPConnsPerIP bounds the open connections from one client address
	// to one public TCP port; 0 means 256.
	MaxTCPConnsPerIP int `yaml:"max_tcp_conns_per_ip"`
	// QuickTunnelIdle forgets a quick-tunnel name this long after its last agent left; 0 means 10 min.
	QuickTunnelIdle time.Duration `yaml:"quick_tunnel_idle"`
}

// Defaults of the public port settings.
const (
	DefaultPortRange         = "20000-20099"
	DefaultMaxPortsPerTenant = 100
	DefaultTCPIdleTimeout    = 10 * time.Minute
	DefaultUDPIdleTimeout    = 60 * time.Second
	DefaultMaxUDPPerPort     = 1024
	DefaultMaxUDPPerTenant   = 4096
	DefaultMaxTCPPerIP       = 256
)

// Defaults of the 4to6 settings.
const (
	DefaultWGListen            = ":51820"
	DefaultWGPerDevice         = "/128"
	DefaultMaxDevicesPerTenant = 10
)

// ConfigError is bad configuration; the CLI exits 2 for it.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func cfgErr(format string, args ...any) error { return &ConfigError{Msg: fmt.Sprintf(format, args...)} }

// IsConfigError reports whether err is bad configuration.
func IsConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

// LoadConfig reads a YAML config file strictly: unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, cfgErr("read config %s: %v", path, err)
	}
	var c Config
	// An empty file decodes to nothing: validation then says what is missing.
	if err := yamlconf.Decode(data, &c); err != nil {
		return nil, cfgErr("config %s: %v", path, err)
	}
	return &c, nil
}

// Complete fills in defaults.
func (c *Config) Complete() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.DataDir, "webgw-data")
	def(&c.Domain, "localhost")
	def(&c.HTTPAddr, "127.0.0.1:8080")
	def(&c.HTTPSAddr, "127.0.0.1:8443")
	if c.DNSAddr == "" {
		c.dnsDefault = true
	}
	def(&c.DNSAddr, "127.0.0.1:8053")
	def(&c.APIAddr, "127.0.0.1:8081")
	def(&c.PortRange, DefaultPortRange)
	def(&c.LogLevel, "info")
	if c.WGPrefix != "" {
		def(&c.WGListen, DefaultWGListen)
		def(&c.WGPerDevice, DefaultWGPerDevice)
	}
	c.Domain = strings.ToLower(strings.TrimSuffix(c.Domain, "."))
	if c.Open == nil {
		t := true
		c.Open = &t
	}
	if c.AccessLog == nil {
		t := true
		c.AccessLog = &t
	}
	if c.HTTP3 == nil {
		t := true
		c.HTTP3 = &t
	}
}

// Validate checks a completed config; errors name the key and what is accepted.
func (c *Config) Validate() error {
	if c.Version != 0 && c.Version != 1 {
		return cfgErr("version: %d not accepted; use 1", c.Version)
	}
	if err := validateDomain(c.Domain); err != nil {
		return cfgErr("domain: %v", err)
	}
	for _, a := range []struct{ key, v string }{
		{"http_addr", c.HTTPAddr}, {"https_addr", c.HTTPSAddr}, {"dns_addr", c.DNSAddr}, {"api_addr", c.APIAddr},
	} {
		if err := validateAddr(a.v); err != nil {
			return cfgErr("%s: %v", a.key, err)
		}
	}
	for _, ip := range c.PublicIPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			return cfgErr("public_ip: %q is not an IPv4 or IPv6 address", ip)
		}
	}
	if _, err := netpolicy.ParseAllow(c.UpstreamAllow); err != nil {
		return cfgErr("upstream_allow: %v", err)
	}
	if strings.HasPrefix(c.Store, "etcd://") {
		if _, err := store.ParseEtcdURL(c.Store); err != nil {
			return cfgErr("store: %v", err)
		}
	} else if c.Etcd != (EtcdConfig{}) {
		return cfgErr("etcd: the etcd options need an etcd:// store")
	}
	if (c.Etcd.Cert == "") != (c.Etcd.Key == "") {
		return cfgErr("etcd.cert and etcd.key: give both or neither")
	}
	if strings.Contains(c.Store, "://") && !strings.HasPrefix(c.Store, "bolt://") && !strings.HasPrefix(c.Store, "etcd://") {
		return cfgErr("store: %q not accepted; use a file path, bolt://PATH or etcd://HOST:PORT", c.Store)
	}
	if _, err := model.ParsePortRange(c.PortRange); err != nil {
		return cfgErr("port_range: %v", err)
	}
	if len(c.Region) > 64 || strings.IndexFunc(c.Region, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return cfgErr("region: %q not accepted; use up to 64 printable characters", c.Region)
	}
	if c.ClusterTTL < 0 || (c.ClusterTTL > 0 && c.ClusterTTL < 2*time.Second) || c.ClusterTTL > 5*time.Minute {
		return cfgErr("cluster_ttl: %v not accepted; use 2s-5m (0 for 10s)", c.ClusterTTL)
	}
	if c.DNSTTL < 0 || (c.DNSTTL > 0 && c.DNSTTL < time.Second) || c.DNSTTL > 7*24*time.Hour {
		return cfgErr("dns_ttl: %v not accepted; use 1s-168h (0 for 60s)", c.DNSTTL)
	}
	if c.ACMECA != "" {
		u, err := url.Parse(c.ACMECA)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return cfgErr("acme_ca: %q; want the https:// URL of an ACME directory", c.ACMECA)
		}
	}
	if (c.ACMEEABKeyID == "") != (c.ACMEEABHMAC == "") {
		return cfgErr("acme_eab_kid and acme_eab_hmac: give both or neither")
	}
	if c.ACMECA == "" && (c.ACMEEmail != "" || c.ACMEEABKeyID != "" || c.ACMECARoot != "" || c.ACMECAA != "") {
		return cfgErr("acme_email, acme_eab_kid, acme_eab_hmac, acme_ca_root and acme_caa need acme_ca")
	}
	for _, r := range c.Resolvers {
		if _, err := resolve.ParseServer(r); err != nil {
			return cfgErr("resolver: %v", err)
		}
	}
	if c.DomainRecheck < 0 || (c.DomainRecheck > 0 && c.DomainRecheck < time.Second) {
		return cfgErr("domain_recheck: %v not accepted; use 1s or more (0 for %v)", c.DomainRecheck, DefaultDomainRecheck)
	}
	if c.DomainGrace < 0 || (c.DomainGrace > 0 && c.DomainGrace < time.Second) {
		return cfgErr("domain_grace: %v not accepted; use 1s or more (0 for %v)", c.DomainGrace, DefaultDomainGrace)
	}
	if _, err := parseTrusted(c.ProxyProtocolFrom); err != nil {
		return cfgErr("proxy_protocol_from: %v", err)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return cfgErr("log_level: %q not accepted; use debug, info, warn or error", c.LogLevel)
	}
	if err := c.validate4to6(); err != nil {
		return err
	}
	if err := c.validateYgg(); err != nil {
		return err
	}
	l := c.Limits
	if l.MaxHeaderBytes < 0 || l.MaxHeaderBytes > 1<<20 {
		return cfgErr("limits.max_header_bytes: %d not accepted; use 1024-1048576 (0 for 65536)", l.MaxHeaderBytes)
	}
	if l.MaxHeaderBytes > 0 && l.MaxHeaderBytes < 1024 {
		return cfgErr("limits.max_header_bytes: %d not accepted; use 1024-1048576 (0 for 65536)", l.MaxHeaderBytes)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"read_header_timeout", l.ReadHeaderTimeout}, {"idle_timeout", l.IdleTimeout}, {"quick_tunnel_idle", l.QuickTunnelIdle},
		{"tcp_idle_timeout", l.TCPIdleTimeout}, {"udp_idle_timeout", l.UDPIdleTimeout}} {
		if d.v < 0 {
			return cfgErr("limits.%s: %v not accepted; use a positive duration such as 10s (0 for the default)", d.key, d.v)
		}
	}
	for _, n := range []struct {
		key string
		v   int64
	}{{"max_streams_per_agent", l.MaxStreamsPerAgent}, {"max_agents_per_tenant", int64(l.MaxAgentsPerTenant)}, {"max_quick_tunnels_per_ip", int64(l.MaxQuickTunnelsPerIP)},
		{"max_ports_per_tenant", int64(l.MaxPortsPerTenant)}, {"max_udp_sessions_per_port", int64(l.MaxUDPSessionsPerPort)},
		{"max_udp_sessions_per_tenant", int64(l.MaxUDPSessionsPerTenant)}, {"max_tcp_conns_per_ip", int64(l.MaxTCPConnsPerIP)},
		{"max_devices_per_tenant", int64(l.MaxDevicesPerTenant)}} {
		if n.v < 0 {
			return cfgErr("limits.%s: %d not accepted; use a positive count (0 for the default)", n.key, n.v)
		}
	}
	return nil
}

func validateAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT (e.g. 127.0.0.1:8443, [::]:443, :0 for a free port)", a)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return fmt.Errorf("%q: host must be an IP address or localhost", a)
		}
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 || fmt.Sprint(p) != port {
		return fmt.Errorf("%q: port must be 0-65535 (0 picks a free port)", a)
	}
	return nil
}

func validateDomain(d string) error {
	if d == "" || len(d) > 200 {
		return fmt.Errorf("%q not accepted; use a DNS name such as example.org (at most 200 characters)", d)
	}
	for _, l := range strings.Split(d, ".") {
		if err := model.ValidateTenantName(l); err != nil {
			return fmt.Errorf("%q: label %q: use a-z, 0-9 and '-' (1-63 characters per label)", d, l)
		}
	}
	return nil
}

// parseTrusted reads proxy_protocol_from: CIDRs, or single addresses.
func parseTrusted(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is neither a CIDR (10.0.0.0/8, 2001:db8::/32) nor an IP address", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// validate4to6 checks the wg_ keys.
func (c *Config) validate4to6() error {
	if c.WGPrefix == "" {
		if c.WGListen != "" || c.WGPerDevice != "" || c.WGNAT66 || c.WGEndpoint != "" || len(c.WGDNS) > 0 {
			return cfgErr("wg_listen, wg_per_device, wg_nat66, wg_endpoint and wg_dns need wg_prefix: 4to6 is off without it")
		}
		return nil
	}
	if _, err := model.ParseDevicePlan(c.WGPrefix, c.WGPerDevice); err != nil {
		msg := err.Error()
		if rest, ok := strings.CutPrefix(msg, "per device: "); ok {
			return cfgErr("wg_per_device: %s", rest)
		}
		return cfgErr("wg_prefix: %s", strings.TrimPrefix(msg, "prefix: "))
	}
	if _, err := wgListenPort(c.WGListen); err != nil {
		return cfgErr("wg_listen: %v", err)
	}
	if c.WGEndpoint != "" {
		if err := validateEndpoint(c.WGEndpoint); err != nil {
			return cfgErr("wg_endpoint: %v", err)
		}
	} else if firstIPv4(c.PublicIPs) == "" {
		return cfgErr("wg_endpoint: give the HOST:PORT devices dial (an IPv4 address, or a name of one), or an IPv4 public_ip: devices' configs name it")
	}
	if c.WGNAT66 && firstIPv6(c.PublicIPs) == "" {
		return cfgErr("wg_nat66: give an IPv6 public_ip: NAT66 masquerades devices behind the gateway's own IPv6 address")
	}
	for _, s := range c.WGDNS {
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil || a.Zone() != "":
			return cfgErr("wg_dns: %q is not an IP address; give an IPv6 resolver such as 2606:4700:4700::1111", s)
		case !a.Is6() || a.Is4In6():
			return cfgErr("wg_dns: %s is IPv4, which devices cannot reach through the tunnel (it carries IPv6 only); give an IPv6 resolver such as 2606:4700:4700::1111", s)
		}
	}
	return nil
}

// wgListenPort reads wg_listen: :PORT, or an unspecified address and a
// port; "" means DefaultWGListen.
func wgListenPort(addr string) (int, error) {
	if addr == "" {
		addr = DefaultWGListen
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("%q is not :PORT (such as :51820)", addr)
	}
	if host != "" {
		if a, err := netip.ParseAddr(host); err != nil || !a.IsUnspecified() {
			return 0, fmt.Errorf("%q: WireGuard listens on every address of the host; give :PORT (such as :51820)", addr)
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || strconv.Itoa(n) != port {
		return 0, fmt.Errorf("%q: port must be 0-65535 (0 picks a free port)", addr)
	}
	return n, nil
}

// validateEndpoint checks wg_endpoint: HOST:PORT, HOST an IP address or a DNS name.
func validateEndpoint(ep string) error {
	host, port, err := net.SplitHostPort(ep)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not HOST:PORT (such as 203.0.113.10:51820 or gw.example.net:51820)", ep)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsUnspecified() || a.Zone() != "" {
			return fmt.Errorf("%q: devices cannot dial %s; give the gateway's public address", ep, host)
		}
	} else if err := validateDomain(strings.ToLower(strings.TrimSuffix(host, "."))); err != nil {
		return fmt.Errorf("%q: host is neither an IP address nor a DNS name", ep)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return fmt.Errorf("%q: port must be 1-65535", ep)
	}
	return nil
}

// firstIPv4 is the first IPv4 address of ips; "" if none.
func firstIPv4(ips []string) string {
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap().Is4() {
			return a.Unmap().String()
		}
	}
	return ""
}

// firstIPv6 is the first IPv6 address in ips, or "".
func firstIPv6(ips []string) string {
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Is6() && !a.Is4In6() {
			return a.String()
		}
	}
	return ""
}
