package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/webgw/webgw/internal/tunnel"
)

// The UDP side of the HTTPS port: one QUIC listener for HTTP/3 (ALPN h3) and
// for agents on the tunnel's QUIC transport (ALPN tunnel.ALPN), told apart
// by the protocol negotiated in the handshake.
//
// Names follow the TCP side: a name outside the domain, and a passthrough
// (tls) service's name, are refused in the handshake with unrecognized_name
// (QUIC cannot be passed through, and the gateway holds no certificate for a
// passthrough name), so a browser falls back to TCP; no SNI gets the domain's
// certificate and then answers by :authority, like the TCP side.

// CodeTunnelRefused is the QUIC application error code that closes an agent
// connection when the edge has no TunnelQUIC hook.
const CodeTunnelRefused quic.ApplicationErrorCode = 0x1

// AltSvc returns the Alt-Svc header value that advertises HTTP/3 on port
// (the public HTTPS port, where the UDP side listens).
func AltSvc(port string) string {
	return `h3=":` + port + `"; ma=86400`
}

// udpState is the QUIC side's state, guarded by HTTPS.mu.
type udpState struct {
	pc     net.PacketConn
	tr     *quic.Transport
	ln     *quic.Listener
	h3     *http3.Server
	closed bool // set by CloseUDP
}

// ServeUDP serves QUIC on pc, a UDP socket at the HTTPS port's address:
// HTTP/3 into Proxy for terminated services, and agent connections to
// TunnelQUIC. It returns when ctx ends, Shutdown is called or accepting
// fails, having stopped accepting. It owns pc: open QUIC connections keep
// using it until CloseUDP closes it.
func (e *HTTPS) ServeUDP(ctx context.Context, pc net.PacketConn) error {
	tunnel.QuietQUICBufferWarning()
	idle := e.IdleTimeout
	if idle == 0 {
		idle = 120 * time.Second
	}
	mhb := e.MaxHeaderBytes
	if mhb == 0 {
		mhb = 64 << 10
	}
	srv := &http3.Server{
		Handler:        e.Proxy,
		MaxHeaderBytes: mhb,
		IdleTimeout:    idle,
		Logger:         e.log(),
	}
	qc := e.QUIC
	if qc == nil {
		hs := e.HelloTimeout
		if hs == 0 {
			hs = 10 * time.Second
		}
		qc = &quic.Config{HandshakeIdleTimeout: hs / 2} // quic-go aborts after twice this
	}
	tr := &quic.Transport{Conn: pc}
	e.mu.Lock()
	if e.shutdown || e.udp.closed {
		e.mu.Unlock()
		pc.Close()
		return nil
	}
	ln, err := tr.Listen(e.quicTLSConfig(), qc)
	if err != nil {
		e.mu.Unlock()
		tr.Close()
		pc.Close()
		return fmt.Errorf("listen quic on %s: %w", pc.LocalAddr(), err)
	}
	e.udp = udpState{pc: pc, tr: tr, ln: ln, h3: srv}
	e.mu.Unlock()
	e.checkUDPBuffers(pc)

	defer ln.Close()
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, quic.ErrTransportClosed) {
				return nil
			}
			return fmt.Errorf("accept quic: %w", err)
		}
		e.serveQUIC(ctx, c, srv)
	}
}

// serveQUIC hands a handshaken connection to its server by ALPN.
func (e *HTTPS) serveQUIC(ctx context.Context, c *quic.Conn, srv *http3.Server) {
	switch alpn := c.ConnectionState().TLS.NegotiatedProtocol; alpn {
	case tunnel.ALPN:
		if e.TunnelQUIC == nil {
			c.CloseWithError(CodeTunnelRefused, "agent tunnels over quic are not served here")
			return
		}
		// The hook owns c and this goroutine, as Tunnel does on the TCP side.
		go e.TunnelQUIC(ctx, c)
	case http3.NextProtoH3:
		ip := remoteIP(c.RemoteAddr())
		if !e.h3Admit(ip) {
			e.log().Debug("http3 connection refused: too many from this address", "remote", c.RemoteAddr().String())
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeExcessiveLoad), "too many connections")
			return
		}
		if _, ok := e.h1Begin(); !ok {
			e.h3Release(ip)
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			return
		}
		go func() {
			defer e.h1wg.Done()
			defer e.h3Release(ip)
			if err := srv.ServeQUICConn(c); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.log().Debug("http3 connection", "remote", c.RemoteAddr().String(), "err", err)
			}
			// ServeQUICConn leaves closing to its caller.
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		}()
	default:
		// crypto/tls refuses a handshake without a common protocol.
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeGeneralProtocolError), "unexpected alpn "+alpn)
	}
}

// h3Admit counts a new HTTP/3 connection from ip, or reports false when ip
// already holds MaxH3ConnsPerIP.
func (e *HTTPS) h3Admit(ip string) bool {
	limit := e.MaxH3ConnsPerIP
	if limit == 0 {
		limit = 64
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.h3PerIP[ip] >= limit {
		return false
	}
	if e.h3PerIP == nil {
		e.h3PerIP = map[string]int{}
	}
	e.h3PerIP[ip]++
	return true
}

func (e *HTTPS) h3Release(ip string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.h3PerIP[ip]--; e.h3PerIP[ip] <= 0 {
		delete(e.h3PerIP, ip)
	}
}

func remoteIP(a net.Addr) string {
	if u, ok := a.(*net.UDPAddr); ok {
		return u.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// quicTLSConfig picks the TLS config for each QUIC ClientHello: the tunnel
// identity for agents; the terminated certificates (termConfig's choice) for
// h3; none, hence an unrecognized_name alert, for names not served over h3.
func (e *HTTPS) quicTLSConfig() *tls.Config {
	refuse := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{http3.NextProtoH3}}
	h3 := http3.ConfigureTLSConfig(&tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: e.termConfig().GetCertificate,
	})
	agent := refuse
	if e.TunnelCert != nil {
		agent = &tls.Config{
			Certificates: []tls.Certificate{*e.TunnelCert},
			NextProtos:   []string{tunnel.ALPN},
			MinVersion:   tls.VersionTLS13,
		}
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{http3.NextProtoH3, tunnel.ALPN},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Contains(h.SupportedProtos, tunnel.ALPN) {
				return agent, nil
			}
			_, ours, svc := e.Names.Resolve(h.ServerName)
			if (!ours && h.ServerName != "") || (svc != nil && !svc.Protocol.Terminates()) {
				e.log().Debug("quic handshake refused", "sni", h.ServerName)
				return refuse, nil
			}
			return h3, nil
		},
	}
}

// shutdownUDP stops accepting on the UDP side and starts the HTTP/3 drain
// (GOAWAY, then requests in flight finish until ctx ends); the returned
// function waits for it. Agent connections are the TunnelQUIC owner's.
func (e *HTTPS) shutdownUDP(ctx context.Context) (wait func() error) {
	e.mu.Lock()
	u := e.udp
	e.mu.Unlock()
	if u.ln == nil {
		return func() error { return nil }
	}
	u.ln.Close()
	done := make(chan error, 1)
	go func() { done <- u.h3.Shutdown(ctx) }()
	return func() error { return <-done }
}

// CloseUDP releases the UDP socket. Call it last: after Shutdown, and after
// TunnelQUIC's owner has closed its agent connections; QUIC connections
// still open end abruptly. It may be called before or without ServeUDP.
func (e *HTTPS) CloseUDP() error {
	e.mu.Lock()
	u := e.udp
	e.udp.closed = true
	e.mu.Unlock()
	if u.closed || u.tr == nil {
		return nil
	}
	u.h3.Close()
	err := u.tr.Close()
	if cerr := u.pc.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("close udp: %w", err)
	}
	return nil
}

// quicWantBuffer is the UDP buffer size quic-go asks for (7 MiB).
const quicWantBuffer = 7 << 20

// checkUDPBuffers logs once per socket when quic-go could not get the UDP
// buffers it wants (it tries when the listener starts).
func (e *HTTPS) checkUDPBuffers(pc net.PacketConn) {
	rcv, snd, err := udpBufferSizes(pc)
	if err != nil {
		e.log().Debug("udp buffer sizes", "err", err)
		return
	}
	if rcv < quicWantBuffer || snd < quicWantBuffer {
		e.log().Warn("udp buffers smaller than quic wants; raise net.core.rmem_max and wmem_max (see https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes)",
			"receive", rcv, "send", snd, "want", quicWantBuffer, "addr", pc.LocalAddr().String())
	}
}
