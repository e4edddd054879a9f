package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/webgw/webgw/internal/edge"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/route"
)

// overlay serves the services published on the Yggdrasil overlay (model
// Service.Ygg) on the node's address: HTTPS on 443, the same edge as the
// public port but for those names only, and redirects to it on 80, and
// agents' tunnels (token-authenticated, as on the public port), so an agent
// with no IPv4/IPv6 route out reaches its gateway over Yggdrasil. It serves
// nothing else: no cluster-peer ALPN, no admin API, no metrics, no DNS, no
// public tcp/udp ports.
type overlay struct {
	https *edge.HTTPS
	http  *http.Server
	// HTTPSAddr and HTTPAddr are the listeners' addresses.
	HTTPSAddr, HTTPAddr string
	httpsLn, httpLn     net.Listener  // owned by the serve goroutines once started
	done                chan struct{} // closed when https.Serve returned
}

// published is the overlay's filter: the services that opted in.
func published(svc *route.Service) bool { return svc.Spec().Ygg }

// listenOverlay binds the overlay's listeners on the node's address and
// builds its servers from the public edge's parts (names, certificates,
// limits); nothing serves until serve.
func listenOverlay(node yggNode, names *edge.Names, certs edge.CertSource, lim proxy.ConnLimits, accessLog bool, log *slog.Logger,
	tunnelCert *tls.Certificate, tunnel func(context.Context, net.Conn)) (*overlay, error) {
	host := netip.AddrPortFrom(node.Addr(), 443).String()
	httpsLn, err := node.Listen("tcp", host)
	if err != nil {
		return nil, &ConfigError{Msg: "yggdrasil: listen on " + host + ": " + err.Error()}
	}
	host = netip.AddrPortFrom(node.Addr(), 80).String()
	httpLn, err := node.Listen("tcp", host)
	if err != nil {
		httpsLn.Close()
		return nil, &ConfigError{Msg: "yggdrasil: listen on " + host + ": " + err.Error()}
	}
	on := &edge.Names{Domain: names.Domain, Table: names.Table, Custom: names.Custom, Only: published}
	px := &proxy.HTTP{Lookup: on.Lookup, Log: log, AccessLog: accessLog}
	o := &overlay{
		HTTPSAddr: httpsLn.Addr().String(), HTTPAddr: httpLn.Addr().String(),
		httpsLn: httpsLn, httpLn: httpLn, done: make(chan struct{}),
		// Peer and TunnelQUIC are nil: cluster peers' ALPN is closed here
		// (and there is no UDP listener for QUIC).
		https: &edge.HTTPS{
			Names: on, Certs: certs, Proxy: px, Log: log, AccessLog: accessLog, TunnelCert: tunnelCert, Tunnel: tunnel,
			ReadHeaderTimeout: lim.ReadHeaderTimeout, IdleTimeout: lim.IdleTimeout, MaxHeaderBytes: lim.MaxHeaderBytes,
			H1: func(ctx context.Context, c net.Conn) { px.ServeH1(ctx, c, lim) },
		},
		http: &http.Server{
			Handler:           &edge.Redirect{Names: on, HTTPSPort: "443"},
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
	}
	return o, nil
}

// serve runs the listeners under g's goroutines until ctx ends.
func (o *overlay) serve(ctx context.Context, g *Gateway) {
	g.goRun(func() error {
		defer close(o.done)
		return o.https.Serve(ctx, o.httpsLn)
	})
	g.goRun(func() error { return serveHTTP(o.http, o.httpLn) })
}

// shutdown drains both servers; ctx bounds it. The caller has ended
// serve's ctx.
func (o *overlay) shutdown(ctx context.Context) error {
	<-o.done
	return errors.Join(o.https.Shutdown(ctx), o.http.Shutdown(ctx))
}
