// Package gateway is the composition root of `webgw gateway`: it opens the
// store and the CA, builds the routing table, the proxy, the edge listeners,
// the agent control plane and the admin API, and runs them until stopped.
package gateway

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/quic-go/quic-go"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/dns"
	"github.com/webgw/webgw/internal/edge"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/netpolicy"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/proxyproto"
	"github.com/webgw/webgw/internal/resolve"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// Gateway is a running gateway. Create it with Start.
type Gateway struct {
	cfg   *Config
	log   *slog.Logger
	store store.Store
	ca    *certs.LocalCA
	table *route.Table
	// upstreams guards direct upstream dials (--upstream-allow).
	upstreams *netpolicy.Policy

	// Addresses actually bound (port 0 resolved).
	HTTPAddr, HTTPSAddr, APIAddr string
	// H3Addr is the UDP address of HTTP/3 and QUIC agent tunnels (the
	// HTTPS port); "" when http3 is off.
	H3Addr string
	// CAFile is the CA certificate clients and agents trust.
	CAFile string
	// AdminTokenFile holds the admin API token.
	AdminTokenFile string
	// DNSAddr is the DNS server's address (UDP and TCP); "" when DNS is off.
	DNSAddr string
	// Fingerprint is the gateway key's pin for agents (--fingerprint).
	Fingerprint string
	// ID names this gateway.
	ID string

	// cluster is this gateway's membership and view of the others.
	cluster *cluster.Cluster
	https   *edge.HTTPS
	ports   *ports
	dns     *dns.Server // nil when DNS is off
	// dnsKeys are the zones' DNSSEC signing keys, kept in the store.
	dnsKeys *dns.StoreKeys
	// acme is the ACME certificate source; nil with the local CA.
	acme *certs.ACME
	// challenges are the ACME DNS-01 records the DNS server answers.
	challenges challengeView
	// zones are the tenants' verified DNS zones, answered by dns and
	// routed by the edge where a name points at a service.
	zones *dns.Zones
	// domains serves verified custom domains and rechecks their proof.
	domains *domains
	// resolver checks proof of control of domains (--resolver).
	resolver  *resolve.Resolver
	httpSrv   *http.Server
	apiSrv    *http.Server
	cancel    context.CancelFunc // stops the listeners and loops
	tunCancel context.CancelFunc // ends agent sessions, after the drain
	wg        sync.WaitGroup
	errc      chan error
	// httpsDone is closed when https.Serve has returned. Serve sets up the
	// edge's HTTP server in its own goroutine, so Stop waits for this before
	// calling https.Shutdown: otherwise a Stop soon after Start races with
	// that set-up and can miss the server, leaving it running.
	httpsDone chan struct{}
	// peers keeps sessions to the other members, to relay to them.
	peers *peers
	// fourTo6 is the IPv4-to-IPv6 WireGuard access; nil when off.
	fourTo6 *fourTo6
	// ygg is the embedded Yggdrasil node; nil when off. Set in Start.
	ygg yggNode
	// overlay serves opted-in services on the node's address; nil when
	// the node is off.
	overlay *overlay
}

// Version is the software version reported to agents and in status.
var Version = "0.1.0-dev"

// Start validates cfg, opens everything and starts serving. Bad configuration
// returns a *ConfigError. The caller stops it with Stop.
func Start(ctx context.Context, cfg *Config, log *slog.Logger) (*Gateway, error) {
	cfg.Complete()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, cfgErr("data_dir: create %s: %v", cfg.DataDir, err)
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, log: log, store: st, errc: make(chan error, 4), zones: &dns.Zones{}, dnsKeys: &dns.StoreKeys{DB: st}}
	ok := false
	defer func() {
		if !ok {
			// Loops started before the failure (the cluster's) end first.
			if g.cancel != nil {
				g.cancel()
			}
			if g.tunCancel != nil {
				g.tunCancel()
			}
			g.wg.Wait()
			g.closeAll()
		}
	}()

	g.ID, err = loadOrCreateSecret(filepath.Join(cfg.DataDir, "gateway.id"), 6)
	if err != nil {
		return nil, err
	}
	g.AdminTokenFile = filepath.Join(cfg.DataDir, "admin.token")
	adminToken, err := loadOrCreateSecret(g.AdminTokenFile, 32)
	if err != nil {
		return nil, err
	}
	g.ca, err = certs.LoadOrCreateCA(ctx, st, cfg.DataDir, log)
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	g.CAFile = g.ca.CAFile()
	if g.ygg, err = startYggNode(cfg, log); err != nil {
		return nil, err
	}

	// Listeners first, so port 0 is resolved before certificates and the banner.
	httpsLn, udpPC, err := listenHTTPS(cfg.HTTPSAddr, *cfg.HTTP3)
	if err != nil {
		return nil, err
	}
	if udpPC != nil {
		// ServeUDP owns the socket from here; CloseUDP (in Stop) closes it.
		defer func() {
			if !ok {
				udpPC.Close()
			}
		}()
		g.H3Addr = udpPC.LocalAddr().String()
	}
	httpLn, err := listen("http_addr", cfg.HTTPAddr)
	if err != nil {
		httpsLn.Close()
		return nil, err
	}
	apiLn, err := listen("api_addr", cfg.APIAddr)
	if err != nil {
		httpsLn.Close()
		httpLn.Close()
		return nil, err
	}
	g.HTTPSAddr, g.HTTPAddr, g.APIAddr = httpsLn.Addr().String(), httpLn.Addr().String(), apiLn.Addr().String()
	dnsLn, dnsPC, err := listenBoth("dns_addr", cfg.DNSAddr, "", "")
	if err != nil {
		if !cfg.dnsDefault {
			httpsLn.Close()
			httpLn.Close()
			apiLn.Close()
			return nil, err
		}
		// The zero-config address is taken (another gateway on this
		// host): serve everything else.
		log.Warn("dns off: its default address is in use; set --dns-addr", "addr", cfg.DNSAddr, "err", err)
	} else {
		g.DNSAddr = dnsPC.LocalAddr().String()
		defer func() {
			if !ok {
				dnsLn.Close()
				dnsPC.Close()
			}
		}()
	}

	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if h, _, _ := net.SplitHostPort(g.HTTPSAddr); h != "" {
		if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	for _, p := range cfg.PublicIPs {
		ips = append(ips, net.ParseIP(p))
	}
	if g.ygg != nil {
		// Agents may reach the tunnel on the overlay (ygg://[ADDR]:443).
		ips = append(ips, g.ygg.Addr().AsSlice())
	}
	tunnelCert, err := g.ca.ServerIdentity(ctx, []string{cfg.Domain, "localhost"}, ips)
	if err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, fmt.Errorf("gateway certificate: %w", err)
	}
	g.Fingerprint = certs.Fingerprint(tunnelCert.Leaf)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := route.NewMetrics(reg)
	g.table = route.NewTable(metrics)
	allow, err := netpolicy.ParseAllow(cfg.UpstreamAllow)
	if err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, cfgErr("upstream_allow: %v", err)
	}
	var public []netip.Addr
	for _, ip := range cfg.PublicIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			public = append(public, a.Unmap())
		}
	}
	g.upstreams = netpolicy.NewWithPublic(allow, public)
	trusted, err := parseTrusted(cfg.ProxyProtocolFrom)
	if err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, cfgErr("proxy_protocol_from: %v", err)
	}
	portRange, _ := model.ParsePortRange(cfg.PortRange) // validated
	g.resolver = &resolve.Resolver{}
	for _, r := range cfg.Resolvers {
		srv, _ := resolve.ParseServer(r) // validated
		g.resolver.Servers = append(g.resolver.Servers, srv)
	}
	var checkUpstream func(model.ParsedUpstream) error
	if len(allow) > 0 {
		checkUpstream = g.upstreams.CheckUpstream
	}
	g.table.DialDirect = g.dialDirect
	g.table.Domain = cfg.Domain
	g.table.Log = log
	if err := g.loadServices(ctx); err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	// Agent sessions outlive the listeners on stop: requests in flight
	// through them finish before they are closed.
	tunCtx, tunCancel := context.WithCancel(context.Background())
	g.tunCancel = tunCancel
	bindHost, _, _ := net.SplitHostPort(g.HTTPSAddr)
	g.domains = &domains{store: st, log: log, resolver: g.resolver, domain: cfg.Domain, addrs: dnsAddrs(cfg.PublicIPs, bindHost),
		recheck: cfg.DomainRecheck, grace: cfg.DomainGrace}
	if err := g.domains.reload(ctx); err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, err
	}
	names := &edge.Names{Domain: cfg.Domain, Table: g.table, Custom: g.customName}
	httpsPort := portOf(g.HTTPSAddr)
	var certSrc edge.CertSource = g.ca
	var acmeChallenge func(http.ResponseWriter, *http.Request) bool
	if cfg.ACMECA != "" {
		if g.DNSAddr == "" {
			log.Warn("acme: DNS is off, so the wildcard certificate (DNS-01, answered by this gateway's DNS) cannot be obtained")
		}
		httpPortN, _ := strconv.Atoi(portOf(g.HTTPAddr))
		src, err := certs.NewACME(certs.ACMEConfig{
			CA: cfg.ACMECA, Email: cfg.ACMEEmail, EABKeyID: cfg.ACMEEABKeyID, EABMACKey: cfg.ACMEEABHMAC,
			RootsFile: cfg.ACMECARoot, Domain: cfg.Domain,
			DNS01: &certs.ChallengeRecords{DB: st}, Resolvers: nonEmpty(g.DNSAddr),
			Allowed: func(name string) bool {
				_, _, ok := g.customName(name)
				return ok
			},
			HTTPPort: httpPortN, Storage: &certs.Storage{DB: st}, Log: log,
		})
		if err != nil {
			httpsLn.Close()
			httpLn.Close()
			apiLn.Close()
			return nil, cfgErr("acme_ca: %v", err)
		}
		g.acme, certSrc, acmeChallenge = src, src, src.HandleHTTPChallenge
	}
	px := &proxy.HTTP{Lookup: names.Lookup, Log: log, AccessLog: *cfg.AccessLog}
	g.table.OnRetire = px.Retire
	if udpPC != nil {
		px.AltSvc = edge.AltSvc(httpsPort)
	}
	g.ports = &ports{
		host: bindHost, table: g.table, names: names, store: st, log: log, trusted: trusted, accessLog: *cfg.AccessLog,
		tcpIdle: cfg.Limits.TCPIdleTimeout, udpIdle: cfg.Limits.UDPIdleTimeout,
		maxUDP: cfg.Limits.MaxUDPSessionsPerPort, maxTCPPerIP: cfg.Limits.MaxTCPConnsPerIP, maxUDPTenant: int64(cmp.Or(cfg.Limits.MaxUDPSessionsPerTenant, DefaultMaxUDPPerTenant)),
		open: map[string]*openPort{}, limits: map[string]*edge.SessionLimit{}, ctx: runCtx,
	}
	if node := g.ygg; node != nil {
		g.ports.overlay = func(port int) (net.Listener, error) {
			return node.Listen("tcp", netip.AddrPortFrom(node.Addr(), uint16(port)).String())
		}
		g.ports.overlayPacket = func(port int) (net.PacketConn, error) {
			return node.ListenPacket("udp", netip.AddrPortFrom(node.Addr(), uint16(port)).String())
		}
	}
	announce := announceHost(cfg.PublicIPs, bindHost, cfg.Domain)
	if err := g.startCluster(runCtx, dnsAddrs(cfg.PublicIPs, bindHost), announce, httpsPort); err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, err
	}
	// openPublicPort opens a port's listener at once, for the agent or API
	// client that asked for it, and returns its public address. (Not named
	// openPort: that is the type of an open port.)
	openPublicPort := func(p model.Port) (string, error) {
		if err := g.ports.ensure(p); err != nil {
			return "", err
		}
		return net.JoinHostPort(announce, strconv.Itoa(p.Number)), nil
	}
	ctl := &control.Server{
		Store: st, Table: g.table, Log: log, Open: *cfg.Open, GatewayID: g.ID,
		MaxAgentsPerTenant: cfg.Limits.MaxAgentsPerTenant, MaxStreamsPerAgent: cfg.Limits.MaxStreamsPerAgent,
		MaxAnonymousPerIP: cfg.Limits.MaxQuickTunnelsPerIP,
		OnDrain:           px.DrainIdle,
		PortRange:         portRange, MaxPortsPerTenant: cmp.Or(cfg.Limits.MaxPortsPerTenant, DefaultMaxPortsPerTenant),
		OpenPort:       openPublicPort,
		Cluster:        agentCluster{g.cluster},
		QuickElsewhere: g.quickHeldElsewhere,
		URL: func(name string, _ model.Protocol) string {
			return "https://" + hostPort(name+"."+cfg.Domain, httpsPort)
		},
	}
	secret, err := cluster.Secret(ctx, st)
	if err != nil {
		httpsLn.Close()
		httpLn.Close()
		apiLn.Close()
		return nil, err
	}
	// Other gateways of the cluster relay here what they hold no tunnel
	// for; g.cluster is set (startCluster) before the edge serves.
	peerSrv := &control.PeerServer{Table: g.table, GatewayID: g.ID, Secret: secret, Log: log,
		Member: func(id string) bool { _, ok := g.cluster.Member(id); return ok }}
	g.https = &edge.HTTPS{
		Names: names, Certs: certSrc, TunnelCert: tunnelCert, Tunnel: func(_ context.Context, c net.Conn) { ctl.ServeConn(tunCtx, c) }, Proxy: px,
		Log: log, AccessLog: *cfg.AccessLog,
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout, IdleTimeout: cfg.Limits.IdleTimeout,
		MaxHeaderBytes: cfg.Limits.MaxHeaderBytes,
		TunnelQUIC:     func(_ context.Context, c *quic.Conn) { ctl.ServeQUIC(tunCtx, c) },
		QUIC:           quicListenConfig(),
	}
	lim := proxy.ConnLimits{
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout, IdleTimeout: cfg.Limits.IdleTimeout,
		MaxHeaderBytes: cfg.Limits.MaxHeaderBytes,
	}
	g.https.H1 = func(ctx context.Context, c net.Conn) { px.ServeH1(ctx, c, lim) }
	g.https.Peer = func(_ context.Context, c net.Conn) { peerSrv.ServeConn(tunCtx, c) }
	g.httpSrv = &http.Server{
		Handler:           &edge.Redirect{Names: names, HTTPSPort: httpsPort, Challenge: acmeChallenge},
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if cfg.WGPrefix != "" {
		if err := g.start4to6(ctx, reg); err != nil {
			httpsLn.Close()
			httpLn.Close()
			apiLn.Close()
			return nil, err
		}
	}
	a := &api.Server{
		Store: st, Table: g.table, AdminToken: adminToken, Log: log,
		CheckUpstream: checkUpstream,
		Metrics:       promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Info: api.GatewayInfo{ID: g.ID, Version: Version, Domain: cfg.Domain, HTTPAddr: g.HTTPAddr,
			HTTPSAddr: g.HTTPSAddr, HTTP3Addr: g.H3Addr, APIAddr: g.APIAddr, Open: *cfg.Open, Started: time.Now().UTC()},
		PortRange: portRange, MaxPortsPerTenant: cmp.Or(cfg.Limits.MaxPortsPerTenant, DefaultMaxPortsPerTenant),
		OpenPort:     openPublicPort,
		PortAddr:     func(n int) string { return net.JoinHostPort(announce, strconv.Itoa(n)) },
		PublicAddrs:  g.domains.addrs,
		VerifyDomain: g.domains.verify,
		ZoneTXT:      g.resolver.TXT,
		DS:           g.dsOf,
		Members:      g.cluster.Members,
		WG:           g.fourTo6.apiInfo(),
	}
	if g.ygg != nil {
		a.Ygg = g.yggStatus
	}
	g.apiSrv = &http.Server{
		Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	if g.ygg != nil {
		tun := func(_ context.Context, c net.Conn) { ctl.ServeConn(tunCtx, c) }
		if g.overlay, err = listenOverlay(g.ygg, names, certSrc, lim, *cfg.AccessLog, log, tunnelCert, tun); err != nil {
			httpsLn.Close()
			httpLn.Close()
			apiLn.Close()
			return nil, err
		}
	}

	// Peer sessions, like agents' (tunCtx), outlive the listeners on stop.
	g.peers = &peers{self: g.ID, cluster: g.cluster, table: g.table, secret: secret, roots: g.ca.Pool(), log: log}
	g.goRun(func() error { g.peers.run(tunCtx); return nil })

	if len(trusted) > 0 {
		// Behind the operator's load balancer: its connections carry the
		// client's address in a PROXY header.
		httpsLn = proxyproto.NewListener(httpsLn, trusted, 0)
		httpLn = proxyproto.NewListener(httpLn, trusted, 0)
	}
	g.httpsDone = make(chan struct{})
	g.goRun(func() error {
		defer close(g.httpsDone)
		return g.https.Serve(runCtx, httpsLn)
	})
	if udpPC != nil {
		g.goRun(func() error { return g.https.ServeUDP(runCtx, udpPC) })
	}
	g.goRun(func() error { return serveHTTP(g.httpSrv, httpLn) })
	if g.overlay != nil {
		g.overlay.serve(runCtx, g)
	}
	g.goRun(func() error { return serveHTTP(g.apiSrv, apiLn) })
	g.goRun(func() error { g.watchServices(runCtx); return nil })
	g.goRun(func() error { g.ports.watch(runCtx); return nil })
	if g.fourTo6 != nil {
		g.goRun(func() error { g.fourTo6.run(runCtx); return nil })
	}
	g.goRun(func() error { g.domains.watch(runCtx); return nil })
	g.goRun(func() error { g.domains.loop(runCtx); return nil })
	g.goRun(func() error { g.watchZones(runCtx, g.zones); return nil })
	g.goRun(func() error {
		g.recheckZones(runCtx, cmp0(cfg.DomainRecheck, DefaultDomainRecheck), cmp0(cfg.DomainGrace, DefaultDomainGrace))
		return nil
	})
	g.goRun(func() error { g.challenges.watch(runCtx, st, log); return nil })
	if g.acme != nil {
		if err := g.acme.Manage(runCtx); err != nil {
			log.Error("acme", "err", err)
		}
	}
	if dnsPC != nil {
		g.dns = &dns.Server{Domain: cfg.Domain, Addrs: dnsAddrs(cfg.PublicIPs, bindHost), TTL: cfg.DNSTTL, Log: log,
			Exists: func(label string) bool { return g.table.Lookup(label) != nil }, TenantZones: g.zones,
			Challenges: g.challenges.lookup, Keys: g.dnsKeys}
		if strings.HasPrefix(cfg.Store, "etcd://") {
			// Several gateways may share the store: steer answers among them.
			g.dns.Cluster = dnsCluster{g.cluster}
			g.dns.ServiceTTL = cmp0(cfg.ClusterTTL, cluster.DefaultTTL)
		}
		if caa := caaIssuer(cfg); cfg.ACMECA != "" && caa != "" {
			g.dns.CAAIssuers = []string{caa}
		}
		g.goRun(func() error { return g.dns.Serve(runCtx, dnsPC, dnsLn) })
	}
	g.goRun(func() error { g.expireLoop(runCtx); return nil })
	ok = true
	return g, nil
}

// quicListenConfig is the QUIC config of the UDP listener shared by HTTP/3
// clients and agent tunnels: the tunnel's windows, stream limits and short
// idle timeout (a killed agent is noticed in 4 s), with the gateway sending
// keepalive PINGs too, so a connection waiting for a slow answer is not cut
// (idle HTTP/3 clients are closed by the HTTP/3 server's idle timeout).
func quicListenConfig() *quic.Config {
	q := tunnel.QUICConfig(nil, true)
	q.HandshakeIdleTimeout = 5 * time.Second // quic-go aborts a handshake after twice this
	return q
}

func serveHTTP(s *http.Server, ln net.Listener) error {
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (g *Gateway) goRun(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			select {
			case g.errc <- err:
			default:
			}
		}
	}()
}

// Err delivers the first fatal serving error.
func (g *Gateway) Err() <-chan error { return g.errc }

// Stop stops accepting, lets in-flight requests finish until ctx ends, and
// closes everything.
func (g *Gateway) Stop(ctx context.Context) error {
	g.cancel()
	// Cancelling closes the HTTPS listener, so Serve returns promptly.
	<-g.httpsDone
	var wg sync.WaitGroup
	for _, f := range []func(context.Context) error{g.https.Shutdown, g.httpSrv.Shutdown, g.apiSrv.Shutdown} {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); g.ports.shutdown(ctx) }()
	if g.overlay != nil {
		wg.Add(1)
		go func() { defer wg.Done(); g.overlay.shutdown(ctx) }()
	}
	wg.Wait()
	g.table.Close() // stops health checks
	if g.acme != nil {
		g.acme.Stop()
	}
	// Only now that no request is in flight (or ctx ran out) are the agents cut.
	g.tunCancel()
	for _, a := range g.table.AgentsOf() {
		wg.Add(1)
		go func() { defer wg.Done(); a.Session.Close() }() // a stuck peer may take a second each
	}
	wg.Wait()
	// Last, the UDP socket that QUIC connections shared.
	if err := g.https.CloseUDP(); err != nil {
		g.log.Debug("close udp", "err", err)
	}
	g.wg.Wait()
	return g.closeAll()
}

func (g *Gateway) closeAll() error {
	var errs []error
	if g.ygg != nil {
		if err := g.ygg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("yggdrasil: close node: %w", err))
		}
	}
	if g.fourTo6 != nil {
		if err := g.fourTo6.close(); err != nil {
			errs = append(errs, fmt.Errorf("4to6: close wireguard: %w", err))
		}
	}
	if g.store != nil {
		errs = append(errs, g.store.Close())
	}
	return errors.Join(errs...)
}

// dialDirect dials a direct upstream inside the networks the operator allowed.
func (g *Gateway) dialDirect(ctx context.Context, u model.ParsedUpstream, spec model.Upstream, useTLS bool) (net.Conn, error) {
	var t *netpolicy.TLSOptions
	if useTLS {
		// The proxy speaks HTTP/1.1 on the connection.
		t = &netpolicy.TLSOptions{Insecure: spec.TLSInsecure, ServerName: spec.TLSServerName, NextProtos: []string{"http/1.1"}}
	}
	dial, err := g.overlayDial(u)
	if err != nil {
		return nil, err
	}
	return g.upstreams.DialUpstreamVia(ctx, u, t, dial)
}

// loadServices fills the table from the store.
func (g *Gateway) loadServices(ctx context.Context) error {
	svcs, err := store.ListServices(ctx, g.store)
	if err != nil {
		return fmt.Errorf("load services: %w", err)
	}
	seen := make(map[string]bool, len(svcs))
	for _, s := range svcs {
		g.table.Configure(s)
		seen[s.Name] = true
	}
	for _, s := range g.table.List() {
		if s.Stored && !seen[s.Name] {
			g.table.Remove(s.Name)
		}
	}
	return nil
}

// watchServices keeps the table in step with the store: another gateway, or
// the API, may change services.
func (g *Gateway) watchServices(ctx context.Context) {
	follow(ctx, g.store, store.ServicesPrefix, g.log, func() {
		if err := g.loadServices(ctx); err != nil {
			g.log.Error("reload services", "err", err)
		}
	}, func(ev store.Event) {
		name := strings.TrimPrefix(ev.Entry.Key, store.ServicesPrefix)
		switch ev.Type {
		case store.EventDelete:
			g.table.Remove(name)
		case store.EventPut:
			var s model.Service
			if err := json.Unmarshal(ev.Entry.Value, &s); err != nil || s.Name != name {
				g.log.Error("service record unreadable; ignored", "key", ev.Entry.Key, "err", err)
				return
			}
			g.table.Configure(s)
		}
		g.ports.RefreshOverlay() // a service published on the overlay, or no longer
	})
}

// follow keeps something in step with the records under prefix until ctx
// ends: each time a watch is (re)established it calls reload, to re-list
// what may have changed meanwhile, then apply for each change. A failed
// watch is retried with backoff, and what was applied keeps serving.
func follow(ctx context.Context, st store.Store, prefix string, log *slog.Logger, reload func(), apply func(store.Event)) {
	backoff := time.Second
	for ctx.Err() == nil {
		ch, err := st.Watch(ctx, prefix)
		if err != nil {
			if errors.Is(err, store.ErrClosed) || ctx.Err() != nil {
				return
			}
			log.Error("watch the store; retrying", "prefix", prefix, "err", err, "in", backoff.String())
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = time.Second
		// Re-list after the watch is set up so no change falls between.
		reload()
		for ev := range ch {
			apply(ev)
		}
	}
}

func (g *Gateway) expireLoop(ctx context.Context) {
	idle := g.cfg.Limits.QuickTunnelIdle
	if idle == 0 {
		idle = 10 * time.Minute
	}
	missing := map[string]time.Time{}
	t := time.NewTicker(min(idle/4, time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			expired := map[string]bool{}
			for _, n := range g.table.ExpireAnonymous(now, idle) {
				g.log.Info("quick tunnel name released", "service", n)
				expired[n] = true
			}
			g.expireQuickPorts(ctx, now, idle, expired, missing)
		}
	}
}

// customName is edge.Names.Custom: a verified custom domain, or a name of
// a verified tenant zone pointed at a service (both only for the owner's
// own services: the edge checks the tenant).
func (g *Gateway) customName(host string) (service, tenant string, ok bool) {
	if service, tenant, ok = g.domains.lookup(host); ok {
		return service, tenant, ok
	}
	return g.zones.Service(host)
}

// dsOf is the DS record and DNSKEY of a zone the gateway signs.
func (g *Gateway) dsOf(ctx context.Context, zone string) ([]string, string, error) {
	key, err := g.dnsKeys.Key(ctx, zone)
	if err != nil {
		return nil, "", err
	}
	return []string{key.DS().String()}, key.DNSKEY.String(), nil
}

// openStore opens the bolt file or the etcd cluster cfg.Store names.
func openStore(ctx context.Context, cfg *Config) (store.Store, error) {
	if strings.HasPrefix(cfg.Store, "etcd://") {
		endpoints, err := store.ParseEtcdURL(cfg.Store)
		if err != nil {
			return nil, cfgErr("store: %v", err)
		}
		st, err := store.OpenEtcd(ctx, endpoints, store.EtcdOptions{
			CAFile: cfg.Etcd.CA, CertFile: cfg.Etcd.Cert, KeyFile: cfg.Etcd.Key,
			Username: cfg.Etcd.Username, Password: cfg.Etcd.Password, Prefix: cfg.Etcd.Prefix,
		})
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return st, nil
	}
	path := strings.TrimPrefix(cfg.Store, "bolt://")
	if path == "" {
		path = filepath.Join(cfg.DataDir, "state.db")
	}
	st, err := store.OpenBolt(path)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return st, nil
}

// nonEmpty is the list of s, empty when s is.
func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// dnsAddrs are the addresses DNS answers name for the gateway: its public
// IPs, else the host it listens on when that is one address (loopback in
// zero-config mode).
func dnsAddrs(publicIPs []string, bindHost string) []netip.Addr {
	var out []netip.Addr
	for _, ip := range publicIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 {
		if a, err := netip.ParseAddr(bindHost); err == nil && !a.IsUnspecified() {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// orAll names an empty listen host.
func orAll(host string) string {
	if host == "" {
		return "all addresses"
	}
	return host
}

// expireQuickPorts releases the ports of anonymous quick tunnels whose name
// just expired, or has been gone for idle (not claimed again since a restart).
// missing remembers when each port was first seen without its name.
func (g *Gateway) expireQuickPorts(ctx context.Context, now time.Time, idle time.Duration, expired map[string]bool, missing map[string]time.Time) {
	held, err := store.PortsOf(ctx, g.store, "")
	if err != nil {
		g.log.Error("list quick-tunnel ports", "err", err)
		return
	}
	seen := make(map[string]bool, len(held))
	for _, p := range held {
		key := p.String()
		seen[key] = true
		if svc := g.table.Lookup(p.Service); svc != nil && svc.Tenant == "" || len(g.cluster.Holders(p.Service)) > 0 {
			// Here, or another gateway of the cluster holds the quick
			// tunnel now: the port is in use.
			delete(missing, key)
			continue
		}
		if first, ok := missing[key]; !expired[p.Service] && (!ok || now.Sub(first) < idle) {
			if !ok {
				missing[key] = now
			}
			continue
		}
		if err := store.ReleasePort(ctx, g.store, p.Proto, p.Number, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			g.log.Error("release quick-tunnel port", "port", key, "err", err)
			continue
		}
		delete(missing, key)
		g.log.Info("quick tunnel port released", "port", key, "service", p.Service)
	}
	for key := range missing {
		if !seen[key] {
			delete(missing, key)
		}
	}
}

// PublicURL is the https URL of a service name.
func (g *Gateway) PublicURL(name string) string {
	return "https://" + hostPort(name+"."+g.cfg.Domain, portOf(g.HTTPSAddr))
}

// Banner writes the start-up summary for people.
func (g *Gateway) Banner(w io.Writer) {
	c := g.cfg
	fmt.Fprintf(w, "webgw gateway %s ready (version %s)\n", g.ID, Version)
	fmt.Fprintf(w, "  domain        %s\n", c.Domain)
	fmt.Fprintf(w, "  https+tunnel  %s\n", g.HTTPSAddr)
	if g.H3Addr != "" {
		fmt.Fprintf(w, "  http/3        udp/%s on %s (and agent tunnels over quic)\n", portOf(g.H3Addr), g.H3Addr)
	}
	fmt.Fprintf(w, "  http          %s (redirects to https)\n", g.HTTPAddr)
	fmt.Fprintf(w, "  tcp/udp ports %s on %s (expose tcp://HOST:PORT or udp://HOST:PORT)\n", c.PortRange, orAll(g.ports.host))
	fmt.Fprintf(w, "  admin api     http://%s (token in %s)\n", g.APIAddr, g.AdminTokenFile)
	if g.DNSAddr != "" {
		fmt.Fprintf(w, "  dns           %s (udp and tcp, authoritative for %s)\n", g.DNSAddr, c.Domain)
	} else {
		fmt.Fprintf(w, "  dns           off (%s is in use; set --dns-addr)\n", c.DNSAddr)
	}
	fmt.Fprintf(w, "  ca            %s\n", g.CAFile)
	if c.ACMECA != "" {
		fmt.Fprintf(w, "  certificates  ACME from %s (the local CA above signs the agent tunnel only)\n", c.ACMECA)
	}
	fmt.Fprintf(w, "  fingerprint   %s\n", g.Fingerprint)
	if f := g.fourTo6; f != nil {
		fmt.Fprintf(w, "  4to6          wireguard udp/%d, prefix %s (/%d per device, %d devices), endpoint %s\n",
			f.eng.ListenPort(), f.plan.Prefix, f.plan.Bits, len(f.snapshot()), f.info.Endpoint)
	}
	if g.ygg != nil {
		fmt.Fprintf(w, "  yggdrasil     %s\n", g.yggBanner())
	}
	if *c.Open {
		fmt.Fprintf(w, "  open mode     on: agents without a token get a random quick-tunnel name\n")
	} else {
		fmt.Fprintf(w, "  open mode     off: agents need a tenant token (webgw tenant add NAME)\n")
	}
	fmt.Fprintf(w, "\nExpose a local app:\n  webgw expose --gateway %s --ca %s http://127.0.0.1:3000\n", dialable(g.HTTPSAddr), g.CAFile)
}

// dialable turns a listen address into one an agent on this host can dial.
func dialable(addr string) string {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
		h = "127.0.0.1"
	}
	return net.JoinHostPort(h, p)
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func hostPort(host, port string) string {
	if port == "" || port == "443" {
		return host
	}
	return net.JoinHostPort(host, port)
}

// listenHTTPS binds the HTTPS listener and, with udp, a UDP socket on the
// same address and port for QUIC. With port 0 the UDP port of the one picked
// may be taken; then the pair is tried again.
func listenHTTPS(addr string, udp bool) (net.Listener, net.PacketConn, error) {
	if !udp {
		ln, err := listen("https_addr", addr)
		return ln, nil, err
	}
	return listenBoth("https_addr", addr, " for http3", " (set http3: false to serve TCP only)")
}

// listenBoth listens on TCP and UDP at addr, the same port for both (with
// port 0, a few tries to find one free for both). Errors name key.
func listenBoth(key, addr, what, hint string) (net.Listener, net.PacketConn, error) {
	tries := 1
	if portOf(addr) == "0" {
		tries = 5
	}
	for i := 1; ; i++ {
		ln, err := listen(key, addr)
		if err != nil {
			return nil, nil, err
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return ln, pc, nil
		}
		ln.Close()
		if i >= tries {
			return nil, nil, cfgErr("%s: listen on udp %s%s: %v%s", key, ln.Addr(), what, err, hint)
		}
	}
}

func listen(key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, cfgErr("%s: listen on %s: %v", key, addr, err)
	}
	return ln, nil
}

// loadOrCreateSecret reads a hex secret file, or creates it (0600, written
// atomically) with n random bytes.
func loadOrCreateSecret(path string, n int) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if s != "" {
			return s, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	buf := make([]byte, n)
	rand.Read(buf)
	s := hex.EncodeToString(buf)
	if err := writeFileAtomic(path, []byte(s+"\n"), 0o600); err != nil {
		return "", err
	}
	return s, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
