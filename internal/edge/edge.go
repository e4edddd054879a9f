// Package edge runs the gateway's public listeners: the HTTPS port, which
// reads each ClientHello and routes it by ALPN and SNI (agent tunnels, TLS
// passthrough, or TLS termination into the HTTP proxy), QUIC on the same UDP
// port (HTTP/3 and agent tunnels), and the plain HTTP port, which redirects
// known names to HTTPS.
package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/proxyproto"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// CertSource gives certificates for names the edge terminates.
type CertSource interface {
	ForName(name string) (*tls.Certificate, error)
}

// Names maps host names to services: NAME.<domain>, and verified custom
// domains.
type Names struct {
	// Domain is the gateway domain, lower case, without a trailing dot.
	Domain string
	Table  *route.Table
	// Custom maps a verified custom domain (lower case, no trailing dot)
	// to the service it is served by and the tenant that owns both; ok is
	// false for any other name. It is asked only for names outside Domain.
	// nil means no custom domains.
	Custom func(host string) (service, tenant string, ok bool)
	// Only, when set, narrows the names to the services it accepts: any
	// other name, the domain itself and unknown labels are then not ours
	// (refused as a stranger's), so a listener serves just those services
	// (the Yggdrasil overlay's, which serves the services published there).
	// nil means every service.
	Only func(svc *route.Service) bool
}

// Resolve returns the service label for host and whether host is ours: the
// domain itself, a single label directly under it, or a verified custom
// domain (whose label is its service's). svc is nil for unknown labels, and
// for a custom domain whose service is gone or has another owner.
func (n *Names) Resolve(host string) (label string, ours bool, svc *route.Service) {
	label, ours, svc = n.resolve(host)
	if n.Only != nil && (svc == nil || !n.Only(svc)) {
		return "", false, nil
	}
	return label, ours, svc
}

func (n *Names) resolve(host string) (label string, ours bool, svc *route.Service) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == n.Domain {
		return "", true, nil
	}
	if !strings.HasSuffix(host, n.Domain) || len(host) <= len(n.Domain)+1 || host[len(host)-len(n.Domain)-1] != '.' {
		return n.custom(host)
	}
	label = host[:len(host)-len(n.Domain)-1]
	if label == "" || strings.IndexByte(label, '.') >= 0 || len(label) > 63 {
		return "", false, nil
	}
	return label, true, n.Table.Lookup(label)
}

// custom resolves a name outside the gateway domain through Custom.
func (n *Names) custom(host string) (label string, ours bool, svc *route.Service) {
	if n.Custom == nil || host == "" {
		return "", false, nil
	}
	service, tenant, ok := n.Custom(host)
	if !ok {
		return "", false, nil
	}
	if svc = n.Table.Lookup(service); svc != nil && svc.Tenant != tenant {
		svc = nil
	}
	return service, true, svc
}

// Lookup returns the service for a host, or nil.
func (n *Names) Lookup(host string) *route.Service {
	_, _, svc := n.Resolve(host)
	return svc
}

// HTTPS serves the public HTTPS port. Set its fields, then call Serve.
type HTTPS struct {
	Names *Names
	Certs CertSource
	// TunnelCert is the gateway's own certificate, shown to agents.
	TunnelCert *tls.Certificate
	// Tunnel serves an agent connection after its TLS handshake.
	Tunnel func(ctx context.Context, c net.Conn)
	// Peer serves another gateway's peer session (ALPN tunnel.PeerALPN,
	// with TunnelCert, TLS 1.3) after its TLS handshake, as Tunnel serves
	// an agent's. Nil closes such connections.
	Peer func(ctx context.Context, c net.Conn)
	// TunnelQUIC serves an agent connection that came over QUIC to
	// ServeUDP (ALPN tunnel.ALPN), after its handshake. It owns c and runs
	// in a goroutine of its own; ctx ends when ServeUDP stops accepting.
	// Nil closes such connections with CodeTunnelRefused.
	TunnelQUIC func(ctx context.Context, c *quic.Conn)
	// QUIC configures ServeUDP's connections, HTTP/3 and agents alike; nil
	// means quic-go's defaults with a handshake bounded by HelloTimeout.
	QUIC *quic.Config
	// Proxy handles terminated HTTP requests.
	Proxy http.Handler
	// H1, when set, serves a terminated HTTP/1.1 connection whose SNI names
	// a plain http service (the proxy's fast path); it must close c. Nil
	// sends every terminated connection to Proxy.
	H1 func(ctx context.Context, c net.Conn)
	// Log receives errors and passthrough access lines; nil discards.
	Log *slog.Logger
	// AccessLog logs one line per passthrough stream.
	AccessLog bool
	// HelloTimeout bounds reading the ClientHello and the TLS handshake; 0 means 10 s.
	HelloTimeout time.Duration
	// ReadHeaderTimeout bounds reading request headers (slowloris); 0 means 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle client keep-alive connections; 0 means 120 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds request headers; 0 means 64 KiB.
	MaxHeaderBytes int
	// MaxH3ConnsPerIP bounds concurrent HTTP/3 connections from one remote
	// IP address (each may hold 100 streams and their buffers); more are
	// closed at once, and the client falls back to TCP. 0 means 64.
	MaxH3ConnsPerIP int
	// PassthroughIdle closes passthrough streams idle this long; 0 means 1 h.
	PassthroughIdle time.Duration

	httpL *chanListener  // set by Serve before it accepts; read by its connection goroutines
	wg    sync.WaitGroup // the http.Server's Serve goroutine

	mu       sync.Mutex
	srv      *http.Server // guarded by mu; set by Serve
	shutdown bool         // guarded by mu; set by Shutdown
	h1ctx    context.Context
	h1stop   context.CancelFunc // ends idle H1 connections; set with h1ctx under mu
	h1wg     sync.WaitGroup     // H1, passthrough and HTTP/3 connections; Add only under mu while !shutdown
	udp      udpState           // guarded by mu; set by ServeUDP
	h3PerIP  map[string]int     // live HTTP/3 connections per remote IP; guarded by mu

	termOnce sync.Once
	term     *tls.Config // shared by terminated connections; set once by termConfig
}

// termConfig returns the one TLS config shared by terminated connections;
// it picks the certificate by SNI (the apex's when there is none), so a held
// connection keeps no config of its own.
func (e *HTTPS) termConfig() *tls.Config {
	e.termOnce.Do(func() {
		e.term = &tls.Config{
			NextProtos: []string{"h2", "http/1.1"},
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				n := h.ServerName
				label, ours, svc := e.Names.Resolve(n)
				switch {
				case n == "" || !ours:
					n = e.Names.Domain
				case svc == nil && label != "" && strings.Contains(e.Names.Domain, "."):
					// An unknown name gets the 404 page under one wildcard
					// certificate: strangers cannot make the gateway sign
					// one per random name. (A one-label domain such as
					// localhost cannot have a wildcard clients accept, so
					// there each name is signed; that is local use.)
					n = "*." + e.Names.Domain
				}
				cert, err := e.Certs.ForName(strings.ToLower(strings.TrimSuffix(n, ".")))
				if err != nil {
					e.log().Warn("certificate", "name", n, "err", err)
				}
				return cert, err
			},
		}
	})
	return e.term
}

// h1Begin registers an H1 or passthrough connection, which Shutdown waits
// for, unless shutting down.
func (e *HTTPS) h1Begin() (context.Context, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.shutdown {
		return nil, false
	}
	if e.h1ctx == nil {
		e.h1ctx, e.h1stop = context.WithCancel(context.Background())
	}
	e.h1wg.Add(1)
	return e.h1ctx, true
}

func (e *HTTPS) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// Serve accepts connections on ln until ctx ends or ln fails. On return it
// has stopped accepting; Shutdown drains the HTTP side.
func (e *HTTPS) Serve(ctx context.Context, ln net.Listener) error {
	e.httpL = newChanListener(ln.Addr())
	rht := e.ReadHeaderTimeout
	if rht == 0 {
		rht = 10 * time.Second
	}
	idle := e.IdleTimeout
	if idle == 0 {
		idle = 120 * time.Second
	}
	mhb := e.MaxHeaderBytes
	if mhb == 0 {
		mhb = 64 << 10
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	srv := &http.Server{
		Handler:           e.Proxy,
		ReadHeaderTimeout: rht,
		IdleTimeout:       idle,
		MaxHeaderBytes:    mhb,
		Protocols:         &protos,
		TLSConfig:         &tls.Config{NextProtos: []string{"h2", "http/1.1"}},
		ErrorLog:          slog.NewLogLogger(e.log().Handler(), slog.LevelDebug),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 250},
	}
	e.mu.Lock()
	if e.shutdown {
		e.mu.Unlock()
		ln.Close()
		return nil
	}
	e.srv = srv
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		srv.Serve(e.httpL)
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept https: %w", err)
		}
		go e.handle(ctx, c)
	}
}

// Shutdown stops the HTTP servers (TCP and HTTP/3) gracefully, waiting for
// in-flight requests until ctx ends. It may be called before or while Serve
// or ServeUDP starts; they then return at once.
func (e *HTTPS) Shutdown(ctx context.Context) (err error) {
	e.mu.Lock()
	e.shutdown = true
	srv := e.srv
	h1stop := e.h1stop
	e.mu.Unlock()
	waitUDP := e.shutdownUDP(ctx)
	defer func() {
		if uerr := waitUDP(); err == nil {
			err = uerr
		}
	}()
	// Fast-path connections close when idle, those in a request finish it;
	// passthrough streams run until they end or ctx does.
	if h1stop != nil {
		h1stop()
	}
	h1done := make(chan struct{})
	go func() { e.h1wg.Wait(); close(h1done) }()
	defer func() {
		select {
		case <-h1done:
		case <-ctx.Done():
		}
	}()
	if srv == nil {
		return nil
	}
	err = srv.Shutdown(ctx)
	// Also when srv.Serve had not started: no handshaken connection may
	// wait for an Accept that never comes.
	e.httpL.Close()
	e.wg.Wait()
	return err
}

func (e *HTTPS) handle(ctx context.Context, c net.Conn) {
	to := e.HelloTimeout
	if to == 0 {
		to = 10 * time.Second
	}
	c.SetReadDeadline(time.Now().Add(to))
	hello, peeked, err := peekClientHello(c)
	if err != nil {
		e.log().Debug("read client hello", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	pc := &prefixConn{Conn: c, prefix: peeked}

	for _, t := range []struct {
		alpn, who string
		serve     func(context.Context, net.Conn)
	}{{tunnel.ALPN, "agent", e.Tunnel}, {tunnel.PeerALPN, "peer", e.Peer}} {
		if !slices.Contains(hello.protos, t.alpn) {
			continue
		}
		if t.serve == nil {
			c.Close()
			return
		}
		tc := tls.Server(pc, &tls.Config{
			Certificates: []tls.Certificate{*e.TunnelCert},
			NextProtos:   []string{t.alpn},
			MinVersion:   tls.VersionTLS13,
		})
		if err := tc.HandshakeContext(ctx); err != nil {
			e.log().Debug(t.who+" tls handshake", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		c.SetReadDeadline(time.Time{})
		t.serve(ctx, tc)
		return
	}

	_, ours, svc := e.Names.Resolve(hello.serverName)
	if svc != nil && svc.Protocol == model.ProtoTLS {
		c.SetReadDeadline(time.Time{})
		if _, ok := e.h1Begin(); !ok {
			c.Close()
			return
		}
		defer e.h1wg.Done()
		e.passthrough(pc, svc, hello.serverName)
		return
	}
	if !ours && hello.serverName != "" {
		// Not a name of ours: refuse in TLS terms, like a server without that name.
		c.Write(alertUnrecognizedName)
		c.Close()
		return
	}
	tc := tls.Server(pc, e.termConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		e.log().Debug("tls handshake", "remote", c.RemoteAddr().String(), "sni", hello.serverName, "err", err)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	if e.H1 != nil && svc != nil && svc.Protocol == model.ProtoHTTP && tc.ConnectionState().NegotiatedProtocol != "h2" {
		hctx, ok := e.h1Begin()
		if !ok {
			tc.Close()
			return
		}
		// A fresh goroutine serves the connection: this one's stack grew
		// in the handshake, and a held idle connection should not keep it.
		go func() {
			defer e.h1wg.Done()
			e.H1(hctx, tc)
		}()
		return
	}
	if !e.httpL.deliver(tc) {
		tc.Close()
	}
}

func (e *HTTPS) passthrough(pc *prefixConn, svc *route.Service, sni string) {
	start := time.Now()
	stream, _, err := svc.Dial(&tunnel.Header{Kind: tunnel.KindTLS, Service: svc.Name, Client: clientAddr(pc.RemoteAddr()), Host: sni})
	if err != nil {
		e.log().Debug("passthrough dial", "service", svc.Name, "err", err)
		pc.Write(alertInternalError)
		pc.Close()
		if svc.Metrics != nil {
			svc.Metrics.Count(503)
		}
		return
	}
	if pp := svc.ProxyProtocol(); pp == 1 || pp == 2 {
		if err := proxyproto.WriteHeader(stream, proxyproto.Version(pp), pc.RemoteAddr(), pc.LocalAddr()); err != nil {
			e.log().Debug("passthrough proxy header", "service", svc.Name, "err", err)
			stream.Close()
			pc.Close()
			return
		}
	}
	idle := e.PassthroughIdle
	if idle == 0 {
		idle = time.Hour
	}
	in, out := proxy.Splice(pc, stream, idle)
	svc.CountRequest()
	if svc.Metrics != nil {
		svc.Metrics.Count(0)
	}
	if e.AccessLog {
		e.log().Info("stream", "service", svc.Name, "remote", pc.RemoteAddr().String(), "sni", sni,
			"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond).String())
	}
}

var (
	// TLS 1.2-framed fatal alerts: unrecognized_name (112) and internal_error (80).
	alertUnrecognizedName = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112}
	alertInternalError    = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80}
)

type clientHello struct {
	serverName string
	protos     []string
}

var errHelloRead = errors.New("client hello read")

// peekClientHello reads the TLS ClientHello from r with crypto/tls's own
// parser (a handshake that stops at GetConfigForClient) and returns its SNI
// and ALPN list and every byte read, to be replayed.
func peekClientHello(r io.Reader) (*clientHello, []byte, error) {
	var buf bytes.Buffer
	var hello *clientHello
	err := tls.Server(readOnlyConn{r: io.TeeReader(r, &buf)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = &clientHello{serverName: h.ServerName, protos: slices.Clone(h.SupportedProtos)}
			return nil, errHelloRead
		},
	}).Handshake()
	if hello == nil {
		if err == nil {
			err = errors.New("no client hello")
		}
		return nil, nil, err
	}
	return hello, buf.Bytes(), nil
}

// readOnlyConn lets crypto/tls read a ClientHello and swallows its answer.
type readOnlyConn struct{ r io.Reader }

func (c readOnlyConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c readOnlyConn) Write(p []byte) (int, error)        { return 0, io.ErrClosedPipe }
func (c readOnlyConn) Close() error                       { return nil }
func (c readOnlyConn) LocalAddr() net.Addr                { return nil }
func (c readOnlyConn) RemoteAddr() net.Addr               { return nil }
func (c readOnlyConn) SetDeadline(t time.Time) error      { return nil }
func (c readOnlyConn) SetReadDeadline(t time.Time) error  { return nil }
func (c readOnlyConn) SetWriteDeadline(t time.Time) error { return nil }

// prefixConn replays bytes already read from Conn before reading more.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // let the ClientHello's bytes go
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying TCP connection.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// chanListener hands terminated TLS connections to an http.Server.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// clientAddr is the client's "ip:port" for the stream header, without an IPv6
// zone (which can make it longer than the header allows).
func clientAddr(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return netip.AddrPortFrom(ta.AddrPort().Addr().WithZone("").Unmap(), uint16(ta.Port)).String()
	}
	s := a.String()
	if len(s) > 64 {
		return ""
	}
	return s
}
