// Package proxy carries public traffic to a service's upstreams: an HTTP
// reverse proxy whose transport opens tunnel streams (HTTP/1.1, WebSocket,
// h2c for gRPC, streaming without buffering), and a byte splicer for
// passthrough streams.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// Lookup finds the service for a request's host (lower case, no port);
// edge.Names.Lookup is the gateway's.
type Lookup func(host string) *route.Service

// HTTP is the reverse proxy handler for terminated HTTPS traffic.
type HTTP struct {
	// Lookup maps a Host header (port stripped, lower case) to a service.
	Lookup Lookup
	// Log receives access-log lines and errors; nil discards.
	Log *slog.Logger
	// AccessLog writes one line per request when true.
	AccessLog bool
	// IdleConnTimeout closes pooled idle tunnel streams; 0 means 90 s.
	IdleConnTimeout time.Duration
	// MaxIdlePerService bounds pooled idle streams per service; 0 means 256.
	MaxIdlePerService int
	// AltSvc is sent as the Alt-Svc header of every response (HTTP/3
	// advertisement), unless the service sends its own; "" sends none.
	AltSvc string

	altSvcOnce sync.Once
	altSvc     []string // AltSvc as a header value; set once
}

type svcProxy struct {
	rp        *httputil.ReverseProxy
	transport *balancedTransport

	// The HTTP/1.1 fast path's stream pool (h1.go).
	hdr     *tunnel.Header
	maxIdle int
	mu      sync.Mutex
	idle    map[*route.Upstream][]*upConn // pooled connections per upstream, most recently used last; guarded by mu
	// ppIdle pools the connections that start with a PROXY header, per
	// client connection and upstream (ppclient.go); guarded by mu.
	ppIdle map[ppKey][]*upConn
	nidle  int       // streams in idle and ppIdle; guarded by mu
	swept  time.Time // last sweep for age; guarded by mu
	// idleTimeout closes pooled connections idle this long (swept as
	// connections come back to the pool); read-only.
	idleTimeout time.Duration
}

type ctxKey struct{}

func (p *HTTP) proxyFor(svc *route.Service) *svcProxy {
	return svc.Ext(func() any { return p.newSvcProxy(svc) }).(*svcProxy)
}

func (p *HTTP) newSvcProxy(svc *route.Service) *svcProxy {
	kind := tunnel.KindHTTP
	if svc.Protocol == model.ProtoH2C {
		kind = tunnel.KindH2C
	}
	hdr := &tunnel.Header{Kind: kind, Service: svc.Name}
	idle := p.IdleConnTimeout
	if idle == 0 {
		idle = 90 * time.Second
	}
	maxIdle := p.MaxIdlePerService
	if maxIdle == 0 {
		maxIdle = 256
	}
	base := func() *http.Transport {
		tr := &http.Transport{
			MaxIdleConns:          maxIdle,
			MaxIdleConnsPerHost:   maxIdle,
			IdleConnTimeout:       idle,
			DisableCompression:    true,
			ExpectContinueTimeout: time.Second,
			ResponseHeaderTimeout: 0, // a backend may think long; the client decides
			WriteBufferSize:       16 << 10,
			ReadBufferSize:        16 << 10,
		}
		if kind == tunnel.KindH2C {
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			tr.Protocols = &protos
		}
		return tr
	}
	bt := &balancedTransport{svc: svc, hdr: hdr, base: base}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = svc.Name
			pr.Out.Host = pr.In.Host
			// Rewrite starts from headers with X-Forwarded-* removed, so
			// client-supplied values are replaced, never trusted.
			pr.SetXForwarded()
			pr.Out.Header.Set("X-Forwarded-Proto", "https")
		},
		Transport:     bt,
		FlushInterval: 0, // ReverseProxy still flushes at once for SSE and unknown-length (chunked) bodies
		BufferPool:    bufPool{},
		ErrorHandler:  p.errorHandler,
		ErrorLog:      nil,
	}
	return &svcProxy{rp: rp, transport: bt, hdr: hdr, maxIdle: maxIdle, idleTimeout: idle}
}

// CloseIdle closes every pooled idle connection of svc.
func (p *HTTP) CloseIdle(svc *route.Service) {
	sp := p.proxyFor(svc)
	sp.transport.closeIdle(false)
	sp.closeIdle()
}

// Retire closes every pooled idle connection of a service entry the table
// no longer routes to (removed, or replaced); route.Table.OnRetire.
func (p *HTTP) Retire(svc *route.Service) {
	if v, ok := svc.ExtLoaded(); ok {
		sp := v.(*svcProxy)
		sp.transport.closeIdle(false)
		sp.closeIdle()
	}
}

// DrainIdle closes the pooled idle connections of svc's draining or gone
// upstreams, so a draining agent's streams end as their requests do (the
// control server calls it while an agent drains).
func (p *HTTP) DrainIdle(svc *route.Service) {
	sp := p.proxyFor(svc)
	sp.transport.closeIdle(true)
	sp.mu.Lock()
	sp.sweepLocked(true)
	sp.mu.Unlock()
}

func (p *HTTP) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusBadGateway
	msg := "The service's agent could not be reached or closed the connection."
	switch {
	case errors.Is(err, route.ErrNoUpstream):
		status = http.StatusServiceUnavailable
		msg = "No agent is connected and no upstream is available for this service right now."
		w.Header().Set("Retry-After", "1")
	case errors.Is(err, route.ErrBusy):
		status = http.StatusServiceUnavailable
		msg = "Every agent of this service is at its stream limit."
		w.Header().Set("Retry-After", "1")
	case errors.Is(err, context.Canceled):
		status = 499 // client went away; nothing is written
	}
	if p.Log != nil && status != 499 {
		p.Log.Debug("proxy error", "host", r.Host, "err", err)
	}
	if status == 499 {
		// Nothing is written; let the access log and metrics say why.
		if rec, ok := w.(*recorder); ok && rec.status == 0 {
			rec.status = status
		}
		return
	}
	ErrorPage(w, status, msg)
}

// ErrorPage writes a small HTML error page.
func ErrorPage(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><title>%d %s</title><h1>%d %s</h1><p>%s</p><hr><p>webgw</p>\n",
		status, http.StatusText(status), status, http.StatusText(status), html.EscapeString(msg))
}

// HostName returns the host of a Host header, lower case, port, trailing dot
// and IPv6 brackets removed.
func HostName(hostport string) string {
	h := hostport
	if strings.HasPrefix(h, "[") {
		// "[v6]" or "[v6]:port"
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	return strings.ToLower(h)
}

func (p *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if p.AltSvc != "" {
		// One shared slice, not one per request: its capacity is 1, so an
		// Add appends to a copy, and a backend's own value replaces it.
		p.altSvcOnce.Do(func() { p.altSvc = []string{p.AltSvc} })
		w.Header()["Alt-Svc"] = p.altSvc
	}
	host := HostName(r.Host)
	svc := p.Lookup(host)
	if svc == nil || !svc.Protocol.Terminates() {
		ErrorPage(w, http.StatusNotFound, "No service is registered under the name "+host+".")
		p.logAccess(r, host, "", http.StatusNotFound, 0, start)
		return
	}
	rw := &recorder{ResponseWriter: w}
	whole := true
	if !svc.Reachable() {
		w.Header().Set("Retry-After", "1")
		ErrorPage(rw, http.StatusServiceUnavailable, "No agent is connected and no upstream is available for this service right now.")
	} else if _, up := isUpgrade(r.Header); svc.Protocol == model.ProtoHTTP && !up {
		whole = p.serveDirect(rw, r, svc)
	} else {
		p.proxyFor(svc).rp.ServeHTTP(rw, r)
	}
	status := rw.status
	if status == 0 {
		status = http.StatusOK
	}
	svc.CountRequest()
	if svc.Metrics != nil {
		svc.Metrics.Count(status)
	}
	p.logAccess(r, host, svc.Name, status, rw.bytes, start)
	if !whole {
		// The body broke off: abort, so the client sees an error, not a short body.
		panic(http.ErrAbortHandler)
	}
}

func (p *HTTP) logAccess(r *http.Request, host, service string, status int, bytes int64, start time.Time) {
	if !p.AccessLog || p.Log == nil {
		return
	}
	p.Log.LogAttrs(r.Context(), slog.LevelInfo, "request",
		slog.String("service", service),
		slog.String("remote", r.RemoteAddr),
		slog.String("proto", r.Proto),
		slog.String("method", r.Method),
		slog.String("host", host),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Int64("bytes", bytes),
		slog.String("duration", strconv.FormatFloat(time.Since(start).Seconds()*1000, 'f', 3, 64)+"ms"),
	)
}

// recorder notes the status and body size of a response. It forwards
// Flush and Hijack-via-Unwrap so streaming and WebSocket upgrades keep working.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 || r.status < 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack hands over the connection for a protocol switch (WebSocket). The
// reverse proxy writes the backend's 101 straight to the connection, so it
// is recorded here.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil && r.status == 0 {
		r.status = http.StatusSwitchingProtocols
	}
	return c, brw, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
