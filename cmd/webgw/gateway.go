package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/webgw/webgw/internal/gateway"
)

func gatewayCmd() *cobra.Command {
	var (
		configFile string
		flags      gateway.Config
		open       bool
		accessLog  bool
		http3      bool
	)
	c := &cobra.Command{
		Use:   "gateway",
		Short: "Run a gateway (zero flags: a working local gateway for *.localhost)",
		Long: `Run a gateway. With no flags it serves the domain "localhost" on loopback:
HTTPS and agent tunnels on 127.0.0.1:8443, HTTP on 127.0.0.1:8080, the admin API on
127.0.0.1:8081, state and a local CA in ./webgw-data. A port of 0 picks a free port.
Every flag has a config-file key (--config FILE, YAML): the flag name with
underscores instead of dashes. Flags win over the file.`,
		Args: argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			for flag, env := range map[string]string{"data-dir": "WEBGW_DATA_DIR", "api-addr": "WEBGW_API_ADDR", "config": "WEBGW_CONFIG"} {
				if err := envDefault(c, flag, env); err != nil {
					return err
				}
			}
			cfg := &gateway.Config{}
			if configFile != "" {
				fc, err := gateway.LoadConfig(configFile)
				if err != nil {
					return &usageError{err: err}
				}
				cfg = fc
			}
			fs := c.Flags()
			set := func(name string, dst *string, v string) {
				if fs.Changed(name) || (name == "data-dir" || name == "api-addr") && v != "" && *dst == "" {
					*dst = v
				}
			}
			set("data-dir", &cfg.DataDir, flags.DataDir)
			set("domain", &cfg.Domain, flags.Domain)
			set("http-addr", &cfg.HTTPAddr, flags.HTTPAddr)
			set("https-addr", &cfg.HTTPSAddr, flags.HTTPSAddr)
			set("dns-addr", &cfg.DNSAddr, flags.DNSAddr)
			set("api-addr", &cfg.APIAddr, flags.APIAddr)
			set("store", &cfg.Store, flags.Store)
			set("log-level", &cfg.LogLevel, flags.LogLevel)
			set("port-range", &cfg.PortRange, flags.PortRange)
			set("wg-prefix", &cfg.WGPrefix, flags.WGPrefix)
			set("wg-listen", &cfg.WGListen, flags.WGListen)
			set("wg-per-device", &cfg.WGPerDevice, flags.WGPerDevice)
			set("wg-endpoint", &cfg.WGEndpoint, flags.WGEndpoint)
			flagWins(fs, "wg-nat66", &cfg.WGNAT66, flags.WGNAT66)
			flagWins(fs, "wg-dns", &cfg.WGDNS, flags.WGDNS)
			flagWins(fs, "ygg-listen", &cfg.YggListen, flags.YggListen)
			flagWins(fs, "ygg-peer", &cfg.YggPeer, flags.YggPeer)
			flagWins(fs, "ygg-password", &cfg.YggPassword, flags.YggPassword)
			flagWins(fs, "ygg-allow-key", &cfg.YggAllowKey, flags.YggAllowKey)
			flagWins(fs, "ygg-tun", &cfg.YggTUN, flags.YggTUN)
			flagWins(fs, "max-devices-per-tenant", &cfg.Limits.MaxDevicesPerTenant, flags.Limits.MaxDevicesPerTenant)
			flagWins(fs, "public-ip", &cfg.PublicIPs, flags.PublicIPs)
			flagWins(fs, "dns-ttl", &cfg.DNSTTL, flags.DNSTTL)
			flagWins(fs, "region", &cfg.Region, flags.Region)
			flagWins(fs, "cluster-ttl", &cfg.ClusterTTL, flags.ClusterTTL)
			flagWins(fs, "resolver", &cfg.Resolvers, flags.Resolvers)
			flagWins(fs, "etcd-ca", &cfg.Etcd.CA, flags.Etcd.CA)
			flagWins(fs, "etcd-cert", &cfg.Etcd.Cert, flags.Etcd.Cert)
			flagWins(fs, "etcd-key", &cfg.Etcd.Key, flags.Etcd.Key)
			flagWins(fs, "etcd-username", &cfg.Etcd.Username, flags.Etcd.Username)
			flagWins(fs, "etcd-password", &cfg.Etcd.Password, flags.Etcd.Password)
			flagWins(fs, "etcd-prefix", &cfg.Etcd.Prefix, flags.Etcd.Prefix)
			flagWins(fs, "acme-ca", &cfg.ACMECA, flags.ACMECA)
			flagWins(fs, "acme-email", &cfg.ACMEEmail, flags.ACMEEmail)
			flagWins(fs, "acme-eab-kid", &cfg.ACMEEABKeyID, flags.ACMEEABKeyID)
			flagWins(fs, "acme-eab-hmac", &cfg.ACMEEABHMAC, flags.ACMEEABHMAC)
			flagWins(fs, "acme-ca-root", &cfg.ACMECARoot, flags.ACMECARoot)
			flagWins(fs, "acme-caa", &cfg.ACMECAA, flags.ACMECAA)
			flagWins(fs, "domain-recheck", &cfg.DomainRecheck, flags.DomainRecheck)
			flagWins(fs, "domain-grace", &cfg.DomainGrace, flags.DomainGrace)
			flagWins(fs, "upstream-allow", &cfg.UpstreamAllow, flags.UpstreamAllow)
			flagWins(fs, "proxy-protocol-from", &cfg.ProxyProtocolFrom, flags.ProxyProtocolFrom)
			flagWins(fs, "tcp-idle-timeout", &cfg.Limits.TCPIdleTimeout, flags.Limits.TCPIdleTimeout)
			flagWins(fs, "udp-idle-timeout", &cfg.Limits.UDPIdleTimeout, flags.Limits.UDPIdleTimeout)
			flagWins(fs, "max-udp-sessions-per-port", &cfg.Limits.MaxUDPSessionsPerPort, flags.Limits.MaxUDPSessionsPerPort)
			flagWins(fs, "max-tcp-conns-per-ip", &cfg.Limits.MaxTCPConnsPerIP, flags.Limits.MaxTCPConnsPerIP)
			flagWins(fs, "max-udp-sessions-per-tenant", &cfg.Limits.MaxUDPSessionsPerTenant, flags.Limits.MaxUDPSessionsPerTenant)
			flagWins(fs, "open", &cfg.Open, &open)
			flagWins(fs, "access-log", &cfg.AccessLog, &accessLog)
			flagWins(fs, "http3", &cfg.HTTP3, &http3)
			flagWins(fs, "max-streams-per-agent", &cfg.Limits.MaxStreamsPerAgent, flags.Limits.MaxStreamsPerAgent)
			flagWins(fs, "max-agents-per-tenant", &cfg.Limits.MaxAgentsPerTenant, flags.Limits.MaxAgentsPerTenant)
			flagWins(fs, "max-quick-tunnels-per-ip", &cfg.Limits.MaxQuickTunnelsPerIP, flags.Limits.MaxQuickTunnelsPerIP)
			flagWins(fs, "max-ports-per-tenant", &cfg.Limits.MaxPortsPerTenant, flags.Limits.MaxPortsPerTenant)
			flagWins(fs, "max-header-bytes", &cfg.Limits.MaxHeaderBytes, flags.Limits.MaxHeaderBytes)
			flagWins(fs, "read-header-timeout", &cfg.Limits.ReadHeaderTimeout, flags.Limits.ReadHeaderTimeout)
			cfg.Complete()
			if err := cfg.Validate(); err != nil {
				return &usageError{err: err}
			}
			log := newLogger(cfg.LogLevel)
			ctx := c.Context()
			g, err := gateway.Start(ctx, cfg, log)
			if err != nil {
				if gateway.IsConfigError(err) {
					return &usageError{err: err}
				}
				return err
			}
			g.Banner(os.Stdout)
			select {
			case <-ctx.Done():
				log.Info("stopping: draining in-flight requests")
			case err := <-g.Err():
				log.Error("gateway failed", "err", err)
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				g.Stop(sctx)
				return err
			}
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if err := g.Stop(sctx); err != nil {
				return fmt.Errorf("stop: %w", err)
			}
			log.Info("stopped")
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file (keys: the flag names with underscores)")
	f.StringVar(&flags.DataDir, "data-dir", "webgw-data", "state, local CA and admin token directory [$WEBGW_DATA_DIR]")
	f.StringVar(&flags.Domain, "domain", "localhost", "gateway domain: services are NAME.<domain>")
	f.StringVar(&flags.HTTPAddr, "http-addr", "127.0.0.1:8080", "plain HTTP listener (redirects to HTTPS)")
	f.StringVar(&flags.HTTPSAddr, "https-addr", "127.0.0.1:8443", "HTTPS and agent tunnel listener")
	f.StringVar(&flags.DNSAddr, "dns-addr", "127.0.0.1:8053", "authoritative DNS server for the gateway domain, UDP and TCP (the default turns DNS off when in use)")
	f.DurationVar(&flags.DNSTTL, "dns-ttl", 60*time.Second, "TTL of DNS answers (a service name's answer in a cluster: at most --cluster-ttl)")
	f.StringVar(&flags.Region, "region", "", "region label of this gateway in the cluster's member list")
	f.DurationVar(&flags.ClusterTTL, "cluster-ttl", 10*time.Second, "membership lease TTL: a gateway that stops leaves the cluster and its DNS answers this long after")
	f.StringVar(&flags.ACMECA, "acme-ca", "", "ACME directory URL to get certificates from (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory); default: the local CA")
	f.StringVar(&flags.ACMEEmail, "acme-email", "", "ACME account contact email")
	f.StringVar(&flags.ACMEEABKeyID, "acme-eab-kid", "", "ACME external account binding key id (with --acme-eab-hmac)")
	f.StringVar(&flags.ACMEEABHMAC, "acme-eab-hmac", "", "ACME external account binding MAC key, base64url")
	f.StringVar(&flags.ACMECARoot, "acme-ca-root", "", "PEM file of the CAs signing the ACME server's own TLS certificate (a private or test CA)")
	f.StringVar(&flags.ACMECAA, "acme-caa", "", "the CA's domain for the gateway domain's CAA records (default: from --acme-ca's host)")
	f.StringVar(&flags.Etcd.CA, "etcd-ca", "", "with --store etcd://: PEM file of the CAs of the etcd servers (turns TLS on)")
	f.StringVar(&flags.Etcd.Cert, "etcd-cert", "", "with --store etcd://: client certificate (PEM) for mutual TLS, with --etcd-key")
	f.StringVar(&flags.Etcd.Key, "etcd-key", "", "with --store etcd://: client key (PEM)")
	f.StringVar(&flags.Etcd.Username, "etcd-username", "", "with --store etcd://: etcd user")
	f.StringVar(&flags.Etcd.Password, "etcd-password", "", "with --store etcd://: etcd password (prefer the config file key etcd.password)")
	f.StringVar(&flags.Etcd.Prefix, "etcd-prefix", "", "with --store etcd://: key prefix, so several clusters can share one etcd (default webgw/)")
	f.StringSliceVar(&flags.Resolvers, "resolver", nil, "recursive resolver (IP or IP:PORT) for checking proof of control of domains (repeatable; default: the system's)")
	f.DurationVar(&flags.DomainRecheck, "domain-recheck", gateway.DefaultDomainRecheck, "how often the DNS proof of custom domains and tenant zones is checked again")
	f.DurationVar(&flags.DomainGrace, "domain-grace", gateway.DefaultDomainGrace, "how long a verified custom domain or tenant zone whose proof is gone is still served")
	f.StringVar(&flags.APIAddr, "api-addr", "127.0.0.1:8081", "admin API, /metrics and /healthz listener [$WEBGW_API_ADDR]")
	f.StringSliceVar(&flags.PublicIPs, "public-ip", nil, "public IP address of this gateway (repeatable)")
	f.StringSliceVar(&flags.UpstreamAllow, "upstream-allow", nil, "network (CIDR) direct upstreams may be in (repeatable; default none). Loopback, link-local and own addresses need their own entry, e.g. ::1/128")
	f.StringVar(&flags.Store, "store", "", "state store: a bolt file path (default <data-dir>/state.db), or etcd://HOST:PORT[,HOST:PORT...] for a cluster")
	f.BoolVar(&open, "open", true, "let agents without a token get random quick-tunnel names")
	f.BoolVar(&accessLog, "access-log", true, "log one line per request or stream")
	f.BoolVar(&http3, "http3", true, "serve HTTP/3 and QUIC agent tunnels on UDP at the HTTPS port (advertised with Alt-Svc)")
	f.StringVar(&flags.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&flags.PortRange, "port-range", gateway.DefaultPortRange, "public TCP/UDP ports handed out to tcp and udp services: FIRST-LAST, or one port; they listen on the host of --https-addr")
	f.StringVar(&flags.WGPrefix, "wg-prefix", "", "4to6 (IPv4-to-IPv6 WireGuard access): the IPv6 prefix routed to this gateway that devices get their addresses from, such as 2001:db8:100::/56 (default: 4to6 off)")
	f.StringVar(&flags.WGListen, "wg-listen", gateway.DefaultWGListen, "4to6: UDP address WireGuard listens on, :PORT (every address of the host)")
	f.StringVar(&flags.WGPerDevice, "wg-per-device", gateway.DefaultWGPerDevice, "4to6: what each device gets of --wg-prefix: /128 (an address) or /64 (needs a prefix shorter than /64)")
	f.BoolVar(&flags.WGNAT66, "wg-nat66", false, "4to6: masquerade devices behind the gateway's own IPv6 address instead of routing their addresses (no routed prefix: a single /64, or ULA)")
	f.StringVar(&flags.WGEndpoint, "wg-endpoint", "", "4to6: HOST:PORT devices dial, written in their configs (default: the first IPv4 --public-ip and the --wg-listen port)")
	f.StringSliceVar(&flags.WGDNS, "wg-dns", nil, "4to6: IPv6 resolver written in devices' configs (repeatable; default none)")
	f.StringSliceVar(&flags.YggListen, "ygg-listen", nil, "yggdrasil: run the embedded node with an access point listening on this URI, tls://HOST:PORT, tcp:// or quic:// (repeatable; e.g. tls://0.0.0.0:9001)")
	f.StringSliceVar(&flags.YggPeer, "ygg-peer", nil, "yggdrasil: run the embedded node peering out to this URI, tls://HOST:PORT, tcp:// or quic:// (repeatable)")
	f.StringVar(&flags.YggPassword, "ygg-password", "", "yggdrasil: peering password asked of peers (prefer the config file key ygg_password)")
	f.StringSliceVar(&flags.YggAllowKey, "ygg-allow-key", nil, "yggdrasil: the only peer public key (64 hex characters) accepted inbound (repeatable; default any)")
	f.StringVar(&flags.YggTUN, "ygg-tun", "", "yggdrasil: run the embedded node and put the host on the overlay through a TUN interface of this name, such as ygg0 (default: no TUN)")
	f.IntVar(&flags.Limits.MaxDevicesPerTenant, "max-devices-per-tenant", gateway.DefaultMaxDevicesPerTenant, "4to6 devices one tenant may hold")
	f.Int64Var(&flags.Limits.MaxStreamsPerAgent, "max-streams-per-agent", 1024, "concurrent streams per agent session")
	f.IntVar(&flags.Limits.MaxAgentsPerTenant, "max-agents-per-tenant", 100, "concurrent agent sessions per tenant")
	f.IntVar(&flags.Limits.MaxPortsPerTenant, "max-ports-per-tenant", gateway.DefaultMaxPortsPerTenant, "public TCP/UDP ports one tenant (or all quick tunnels together) may hold")
	f.StringSliceVar(&flags.ProxyProtocolFrom, "proxy-protocol-from", nil, "source (CIDR or address) whose connections to the HTTP, HTTPS and TCP ports must start with a PROXY protocol v1/v2 header giving the client address (repeatable; default none)")
	f.DurationVar(&flags.Limits.TCPIdleTimeout, "tcp-idle-timeout", gateway.DefaultTCPIdleTimeout, "close a forwarded TCP connection idle this long")
	f.DurationVar(&flags.Limits.UDPIdleTimeout, "udp-idle-timeout", gateway.DefaultUDPIdleTimeout, "end a UDP session idle this long")
	f.IntVar(&flags.Limits.MaxUDPSessionsPerPort, "max-udp-sessions-per-port", gateway.DefaultMaxUDPPerPort, "concurrent UDP client sessions per public port")
	f.IntVar(&flags.Limits.MaxTCPConnsPerIP, "max-tcp-conns-per-ip", gateway.DefaultMaxTCPPerIP, "open connections from one client address to one public TCP port")
	f.IntVar(&flags.Limits.MaxUDPSessionsPerTenant, "max-udp-sessions-per-tenant", gateway.DefaultMaxUDPPerTenant, "concurrent UDP client sessions of all of one tenant's ports")
	f.IntVar(&flags.Limits.MaxQuickTunnelsPerIP, "max-quick-tunnels-per-ip", 10, "concurrent quick-tunnel (no token) agent sessions per remote address")
	f.IntVar(&flags.Limits.MaxHeaderBytes, "max-header-bytes", 64<<10, "largest accepted request header")
	f.DurationVar(&flags.Limits.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time allowed to send request headers")
	c.AddCommand(gatewayListCmd())
	return c
}

// flagWins sets *dst to v when the flag name was given: flags win over the
// config file.
func flagWins[T any](fs *pflag.FlagSet, name string, dst *T, v T) {
	if fs.Changed(name) {
		*dst = v
	}
}

func gatewayVersion() string { return "webgw " + gateway.Version }
