package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
)

// The HTTP/1.1 fast path. For a client that negotiated HTTP/1.1 with a plain
// http service, the edge hands the terminated connection to ServeH1, which
// proxies each request on the connection's own goroutine: it parses the
// request head (net/http's parser), writes a re-framed head with the
// X-Forwarded-* headers to a pooled tunnel stream, parses the response head
// and copies the body back. Compared with net/http's server plus
// httputil.ReverseProxy and http.Transport this saves two goroutine
// hand-offs, the request clone and most allocations per request, which is
// most of the gateway's CPU per request. Re-framing every message (the body
// length is decided from the parsed head, never copied through) keeps request
// smuggling out. HTTP/2 clients and h2c services keep the net/http path.

// ConnLimits bound what a client connection on the fast path may send.
type ConnLimits struct {
	// ReadHeaderTimeout bounds reading a request head; 0 means 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a connection idle between requests; 0 means 120 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request head; 0 means 64 KiB.
	MaxHeaderBytes int
}

const h1BufSize = 4 << 10

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1BufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1BufSize) }}
)

// h1conn is one client connection on the fast path, owned by ServeH1's goroutine.
type h1conn struct {
	p        *HTTP
	c        net.Conn
	lim      ConnLimits
	remote   string
	clientIP string

	first    [1]byte // the byte read while idle, replayed to the parser
	hasFirst bool
	budget   int // bytes the parser may still read for a head; <0 unlimited

	br   *bufio.Reader // nil while idle with nothing buffered
	idle atomic.Bool   // waiting for the next request; set by the owner, read by shutdown

	// For services with the PROXY protocol: the header's client, made on
	// the first such request, and the services whose pools hold upstream
	// connections made for this connection (closed when it ends).
	pp     *ppClient
	ppUsed []*svcProxy
}

var errHeadTooLarge = errors.New("request head too large")

// Read feeds the request parser: the byte read while idle first, then the
// connection, within the head budget.
func (h *h1conn) Read(p []byte) (int, error) {
	if h.hasFirst {
		if len(p) == 0 {
			return 0, nil
		}
		p[0] = h.first[0]
		h.hasFirst = false
		if h.budget > 0 {
			h.budget--
		}
		return 1, nil
	}
	if h.budget == 0 {
		return 0, errHeadTooLarge
	}
	if h.budget > 0 && len(p) > h.budget {
		p = p[:h.budget]
	}
	n, err := h.c.Read(p)
	if h.budget > 0 {
		h.budget -= n
	}
	return n, err
}

// ServeH1 serves HTTP/1.1 requests on c, a terminated TLS connection, until
// the client closes it, a request asks to close, an error happens, or ctx
// ends while the connection is idle. It closes c.
func (p *HTTP) ServeH1(ctx context.Context, c net.Conn, lim ConnLimits) {
	if lim.ReadHeaderTimeout == 0 {
		lim.ReadHeaderTimeout = 10 * time.Second
	}
	if lim.IdleTimeout == 0 {
		lim.IdleTimeout = 120 * time.Second
	}
	if lim.MaxHeaderBytes == 0 {
		lim.MaxHeaderBytes = 64 << 10
	}
	h := &h1conn{p: p, c: c, lim: lim, remote: c.RemoteAddr().String()}
	h.clientIP, _, _ = net.SplitHostPort(h.remote)
	stop := context.AfterFunc(ctx, func() {
		if h.idle.Load() {
			c.SetReadDeadline(time.Now())
		}
	})
	defer func() {
		stop()
		for _, sp := range h.ppUsed {
			sp.closeClient(h)
		}
		if h.br != nil {
			h.br.Reset(nil)
			readerPool.Put(h.br)
		}
		c.Close()
	}()
	for {
		if h.br == nil || h.br.Buffered() == 0 {
			// Wait for the next request holding no buffer: a held idle
			// connection costs only its TLS state and this goroutine.
			if h.br != nil {
				h.br.Reset(nil)
				readerPool.Put(h.br)
				h.br = nil
			}
			h.idle.Store(true)
			c.SetReadDeadline(time.Now().Add(lim.IdleTimeout))
			if ctx.Err() != nil {
				return
			}
			n, _ := c.Read(h.first[:])
			h.idle.Store(false)
			if n == 0 {
				return
			}
			h.hasFirst = true
			h.br = readerPool.Get().(*bufio.Reader)
			h.br.Reset(h)
		}
		c.SetReadDeadline(time.Now().Add(lim.ReadHeaderTimeout))
		h.budget = lim.MaxHeaderBytes + h1BufSize
		skipBlankLines(h.br)
		req, err := http.ReadRequest(h.br)
		over := h.budget == 0
		h.budget = -1
		if err != nil {
			switch {
			case over || errors.Is(err, errHeadTooLarge):
				h.writeError(nil, http.StatusRequestHeaderFieldsTooLarge, "The request head is larger than this gateway accepts.", false)
			case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed):
			default:
				var ne net.Error
				if !errors.As(err, &ne) {
					h.writeError(nil, http.StatusBadRequest, "The request could not be parsed: "+err.Error(), false)
				}
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		req.RemoteAddr = h.remote // for the access log, as net/http sets it
		if !h.serve(req) {
			return
		}
	}
}

// skipBlankLines drops the empty lines a client may send before a request
// (RFC 9112 section 2.2: a server SHOULD ignore at least one), as net/http does.
func skipBlankLines(br *bufio.Reader) {
	for i := 0; i < 8; i++ {
		b, err := br.Peek(1)
		if err != nil || (b[0] != '\r' && b[0] != '\n') {
			return
		}
		br.Discard(1)
	}
}

// serve proxies one request and reports whether the connection may carry another.
func (h *h1conn) serve(req *http.Request) bool {
	start := time.Now()
	host := HostName(req.Host)
	keep := !req.Close
	switch {
	case req.ProtoMajor != 1:
		h.writeError(req, http.StatusHTTPVersionNotSupported, "Only HTTP/1.x is accepted on this connection.", false)
		return false
	case req.Host == "":
		h.writeError(req, http.StatusBadRequest, "The request has no Host header.", false)
		return false
	case req.Method == http.MethodConnect:
		h.writeError(req, http.StatusMethodNotAllowed, "This gateway is not a forward proxy.", false)
		return false
	case !validTarget(req):
		h.writeError(req, http.StatusBadRequest, "The request target is malformed.", false)
		return false
	case !validHeaderNames(req.Header):
		// The parser lets "Name : value" through; net/http's server refuses
		// it, and a backend that trims the space could frame the message
		// differently (RFC 9112 section 5.1).
		h.writeError(req, http.StatusBadRequest, "The request has a malformed header name.", false)
		return false
	}
	svc := h.p.Lookup(host)
	if svc == nil {
		h.writeError(req, http.StatusNotFound, "No service is registered under the name "+host+".", keep && bodyless(req))
		h.p.logAccess(req, host, "", http.StatusNotFound, 0, start)
		return keep && bodyless(req)
	}
	if svc.Protocol != model.ProtoHTTP {
		// An h2c or passthrough name reached over another name's connection.
		h.writeError(req, http.StatusMisdirectedRequest, "This connection cannot serve "+host+"; open a new connection for it.", keep && bodyless(req))
		h.p.logAccess(req, host, svc.Name, http.StatusMisdirectedRequest, 0, start)
		return keep && bodyless(req)
	}
	status, n, keep := h.proxy(req, svc)
	svc.CountRequest()
	if svc.Metrics != nil {
		svc.Metrics.Count(status)
	}
	h.p.logAccess(req, host, svc.Name, status, n, start)
	return keep
}

// validTarget reports whether a request target can be sent on as is or in
// origin form: origin form ("/path"), "*", or absolute form with a host
// (RFC 9112 section 3.2). The parser also takes "host:port" or "a:b" for
// a URL with an opaque part, whose RequestURI is no request target.
func validTarget(req *http.Request) bool {
	u := req.RequestURI
	return strings.HasPrefix(u, "/") || u == "*" || (req.URL.Host != "" && req.URL.Opaque == "")
}

// validHeaderNames reports whether no header name holds whitespace, the
// one non-token byte the parser accepts in names.
func validHeaderNames(hdr http.Header) bool {
	for k := range hdr {
		if strings.ContainsAny(k, " \t") {
			return false
		}
	}
	return true
}

func bodyless(req *http.Request) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	return req.ContentLength == 0 && len(req.TransferEncoding) == 0
}

// chunked reports whether a request body has no declared length (chunked
// from an HTTP/1.1 client, or an HTTP/2 body without content-length).
func chunked(req *http.Request) bool {
	return !bodyless(req) && (len(req.TransferEncoding) > 0 || req.ContentLength < 0)
}

// upConn is a pooled connection carrying HTTP/1.1 to an upstream: a tunnel
// stream to an agent, or a connection to a direct upstream.
type upConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
	// stop ends the watch that closes the stream when the client's request
	// context ends; it reports false when that already happened. Nil when
	// nothing watches.
	stop func() bool
	// idleSince is when the stream went back to the pool; set by putUp.
	idleSince time.Time
	// up is the upstream at the other end; a draining, gone or unhealthy
	// one gets no more requests.
	up *route.Upstream
	// pooled is set when the connection was taken from the pool (it may
	// have been closed by the other side meanwhile: not the upstream's fault).
	pooled bool
	// pp is the client named by the PROXY header the connection started
	// with; nil when none. Such a connection is pooled for that client only.
	pp *ppClient
}

// close ends the stream. A stream's Close only ends our sending side; the
// deadline also ends reading, so an abandoned response body is not drained
// (resp.Body.Close reads to its end) and a read waiting for an answer returns.
func (u *upConn) close() {
	u.c.SetDeadline(aLongTimeAgo)
	u.c.Close()
}

// getUp returns a connection to the upstream the balancer picks for this
// request (not one of *tried, unless no other is left; those it cannot
// reach are added to *tried): one of its pooled
// connections when a live one is there, else a new one (to the next
// upstream when that one cannot be reached). Picking per request, not per
// connection, spreads requests over replicas even when one would do.
// With cl set (the PROXY protocol), only connections made for cl are taken
// from the pool, and a new one starts with cl's header.
func (sp *svcProxy) getUp(ctx context.Context, svc *route.Service, clientIP string, triedp *[]*route.Upstream, cl *ppClient) (*upConn, error) {
	var lastErr error
	busy := false
	for range 8 {
		tried := *triedp
		up := svc.Pick(clientIP, tried...)
		if up == nil && len(tried) > 0 && lastErr == nil && !busy {
			// Every upstream was tried once already (a stale pooled
			// connection, say): a fresh connection may still work.
			up = svc.Pick(clientIP)
		}
		if up == nil {
			break
		}
		if cl != nil {
			if err := checkPP(cl, up); err != nil {
				lastErr = err
				*triedp = append(*triedp, up)
				continue
			}
		}
		for {
			u := sp.takeIdle(up, cl)
			if u == nil {
				break
			}
			// A connection idle only briefly is taken as is (a failure
			// then is retried); one idle longer is checked, as its
			// backend may have closed its keep-alive connection.
			if !up.Draining() && !up.Gone() && (time.Since(u.idleSince) < freshIdle || u.alive()) {
				u.pooled = true
				return u, nil
			}
			u.close()
		}
		dctx := ctx
		if dctx == nil {
			dctx = context.Background()
		}
		dctx, cancel := context.WithTimeout(dctx, dialTimeout)
		c, err := up.Dial(dctx, sp.hdr)
		cancel()
		if err == nil {
			u := newUpConn(c, up)
			if cl != nil {
				// Sent with the request head, in one write.
				u.pp = cl
				u.bw.Write(cl.hdr)
			}
			return u, nil
		}
		if errors.Is(err, route.ErrBusy) {
			busy = true
		} else {
			up.Report(false)
			lastErr = err
		}
		// Recorded for the request's later attempts too: an upstream that
		// could not be reached is not dialled again for it.
		*triedp = append(*triedp, up)
		if ctx != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	switch {
	case lastErr != nil:
		return nil, fmt.Errorf("%w: %w", route.ErrNoUpstream, lastErr)
	case busy:
		return nil, route.ErrBusy
	}
	return nil, route.ErrNoUpstream
}

// takeIdle takes the most recently pooled connection to up (made for cl
// when cl is set), or returns nil.
func (sp *svcProxy) takeIdle(up *route.Upstream, cl *ppClient) *upConn {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if cl != nil {
		k := cl.key(up)
		list := sp.ppIdle[k]
		n := len(list)
		if n == 0 {
			return nil
		}
		u := list[n-1]
		list[n-1] = nil
		// The empty list stays for the connection's return (no
		// allocation per request); sweepLocked drops it when aged.
		sp.ppIdle[k] = list[:n-1]
		sp.nidle--
		return u
	}
	list := sp.idle[up]
	n := len(list)
	if n == 0 {
		return nil
	}
	u := list[n-1]
	list[n-1] = nil
	sp.idle[up] = list[:n-1]
	sp.nidle--
	return u
}

// dialTimeout bounds connecting to one upstream.
const dialTimeout = 10 * time.Second

func newUpConn(c net.Conn, up *route.Upstream) *upConn {
	return &upConn{c: c, br: bufio.NewReaderSize(c, h1BufSize), bw: bufio.NewWriterSize(c, h1BufSize), up: up}
}

// alive reports whether an idle stream still looks usable: nothing has
// arrived on it (not closed by the agent, no stray bytes).
func (u *upConn) alive() bool {
	if u.br.Buffered() > 0 {
		return false
	}
	u.c.SetReadDeadline(aLongTimeAgo)
	_, err := u.br.Peek(1)
	u.c.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var aLongTimeAgo = time.Unix(1, 0)

// freshIdle is how long a pooled stream is used without a liveness check.
const freshIdle = 100 * time.Millisecond

func (sp *svcProxy) putUp(u *upConn) {
	u.idleSince = time.Now()
	u.pooled = false
	a := u.up
	sp.mu.Lock()
	// A draining agent's streams are closed as their exchanges end, so it
	// gets no new request and its drain completes.
	if u.pp != nil && sp.nidle < sp.maxIdle && !a.Draining() && !a.Gone() {
		if sp.ppIdle == nil {
			sp.ppIdle = make(map[ppKey][]*upConn)
		}
		k := u.pp.key(a)
		sp.ppIdle[k] = append(sp.ppIdle[k], u)
		sp.nidle++
		sp.sweepLocked(false)
		sp.mu.Unlock()
		return
	}
	if u.pp == nil && sp.nidle < sp.maxIdle && !a.Draining() && !a.Gone() {
		if sp.idle == nil {
			sp.idle = make(map[*route.Upstream][]*upConn)
		}
		sp.idle[a] = append(sp.idle[a], u)
		sp.nidle++
		sp.sweepLocked(false)
		sp.mu.Unlock()
		return
	}
	sp.mu.Unlock()
	u.close()
}

// sweepLocked drops the pooled connections of upstreams that are gone or
// draining (the balancer no longer picks them). Connections pooled per
// PROXY client are looked at only now and then (they are many, and
// getUp does not take one of a gone upstream), or when all is set.
func (sp *svcProxy) sweepLocked(all bool) {
	now := time.Now()
	// Now and then, also close connections idle longer than idleTimeout
	// (a direct upstream's socket would otherwise wait in the pool).
	aged := sp.idleTimeout > 0 && now.Sub(sp.swept) > sp.idleTimeout/4
	if aged {
		sp.swept = now
	}
	for a, list := range sp.idle {
		if len(list) == 0 || a.Gone() || a.Draining() {
			for _, u := range list {
				u.close()
			}
			sp.nidle -= len(list)
			delete(sp.idle, a)
			continue
		}
		if aged {
			// Most recently used last: the stale ones are at the front.
			n := 0
			for n < len(list) && now.Sub(list[n].idleSince) > sp.idleTimeout {
				list[n].close()
				n++
			}
			if n > 0 {
				sp.idle[a] = append(list[:0], list[n:]...)
				sp.nidle -= n
			}
		}
	}
	if !aged && !all {
		return
	}
	for k, list := range sp.ppIdle {
		n := 0
		if k.up.Gone() || k.up.Draining() {
			n = len(list)
		}
		for sp.idleTimeout > 0 && n < len(list) && now.Sub(list[n].idleSince) > sp.idleTimeout {
			n++
		}
		for _, u := range list[:n] {
			u.close()
		}
		sp.nidle -= n
		if n == len(list) {
			delete(sp.ppIdle, k)
		} else if n > 0 {
			sp.ppIdle[k] = append(list[:0], list[n:]...)
		}
	}
}

func (sp *svcProxy) closeIdle() {
	sp.mu.Lock()
	idle, ppIdle := sp.idle, sp.ppIdle
	sp.idle, sp.ppIdle, sp.nidle = nil, nil, 0
	sp.mu.Unlock()
	for _, list := range idle {
		for _, u := range list {
			u.close()
		}
	}
	for _, list := range ppIdle {
		for _, u := range list {
			u.close()
		}
	}
}

// proxy runs one exchange with the service. It returns the status sent, the
// body bytes sent and whether the client connection may carry another request.
func (h *h1conn) proxy(req *http.Request, svc *route.Service) (int, int64, bool) {
	keep := !req.Close
	if !svc.Reachable() {
		h.writeError(req, http.StatusServiceUnavailable, "No agent is connected and no upstream is available for this service right now.", keep && bodyless(req))
		return http.StatusServiceUnavailable, 0, keep && bodyless(req)
	}
	sp := h.p.proxyFor(svc)
	var cl *ppClient
	if v := svc.ProxyProtocol(); v != 0 {
		var err error
		if cl, err = h.ppClient(sp, v); err != nil {
			h.writeError(req, http.StatusBadGateway, "The client's address cannot be sent to the service.", false)
			return http.StatusBadGateway, 0, false
		}
	}
	u, resp, werrc, err := sp.roundTrip(nil, svc, req, h.clientIP, h.writeInformational, cl)
	if err == nil {
		defer u.up.End()
	}
	if err != nil {
		status, msg := upstreamError(err)
		ok := keep && bodyless(req) && status == http.StatusServiceUnavailable
		h.writeError(req, status, msg, ok)
		return status, 0, ok
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return h.upgrade(req, resp, u, werrc)
	}
	n, clientOK, upOK := h.writeResponse(req, resp)
	// A client body still not read a second after the answer ends the
	// connection (the client may have stopped sending it when the answer
	// came); the deadline ends the body writer's read.
	stopBody := func() { h.c.SetReadDeadline(aLongTimeAgo) }
	if !sp.finish(u, resp, werrc, upOK, stopBody) {
		keep = false // the request body was not fully read from the client
	}
	return resp.StatusCode, n, keep && clientOK
}

// roundTrip sends req to the service on a pooled (or new) stream and reads
// the final answer, handing 1xx informational answers to info. On success
// the caller owns u and must call finish. A failed exchange is tried again,
// up to maxAttempts times, on another stream (and through Dial, another
// agent when its own is gone): for any method when no byte of the request
// can have reached the agent (its head could not be sent), and for a
// replayable request without a body also when the stream broke before the
// answer (an agent killed with the request in flight, or a pooled stream the
// agent closed just as it was taken).
// When ctx is not nil, its end closes the stream (a client that went away).
// With cl set, the upstream connection is one made for cl (getUp).
func (sp *svcProxy) roundTrip(ctx context.Context, svc *route.Service, req *http.Request, clientIP string, info func(*http.Response) error, cl *ppClient) (*upConn, *http.Response, chan error, error) {
	var tried []*route.Upstream
	for attempt := 1; ; attempt++ {
		u, err := sp.getUp(ctx, svc, clientIP, &tried, cl)
		if err != nil {
			return nil, nil, nil, err
		}
		u.up.Begin()
		if ctx != nil {
			c := u.c
			// A stream's Close only ends our sending side; the deadline
			// also ends a read that waits for the answer.
			u.stop = context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo); c.Close() })
		}
		var werrc chan error
		sent := false // whether bytes of the request may have reached the agent
		if err = writeHead(u.bw, req, clientIP); err == nil {
			// The head goes out on its own first: if the stream is already
			// dead, nothing of the request (its body least of all) is used
			// up, and it can go to another agent whatever its method.
			err = u.bw.Flush()
			sent = err == nil
			if err == nil && !bodyless(req) {
				// Send the body while reading the answer: a backend may
				// answer (or refuse) before it has read the whole body.
				// A body that breaks off (the client went away, or sent
				// bad chunks) ends the stream, so the answer is not
				// awaited from a backend that waits for the rest.
				werrc = make(chan error, 1)
				go func() {
					err := writeBody(u.bw, req)
					if err != nil {
						u.close()
					}
					werrc <- err
				}()
			}
		}
		var resp *http.Response
		if err == nil {
			resp, err = readResponse(u.br, req, info)
		}
		if err == nil {
			u.up.ReportStatus(resp.StatusCode)
			return u, resp, werrc, nil
		}
		u.up.End()
		u.close()
		if u.stop != nil {
			u.stop()
		}
		if ctx != nil && ctx.Err() != nil {
			return nil, nil, nil, ctx.Err()
		}
		if werrc != nil {
			<-werrc
		}
		// A fresh connection that broke is the upstream's failure; a pooled
		// one may just have been closed by its backend meanwhile. Either
		// way the next try prefers another upstream (another agent: its
		// process may have died and its other tunnels not be seen dead
		// yet); getUp comes back to this one when there is no other.
		if !u.pooled && !u.up.Gone() {
			u.up.Report(false)
		}
		tried = append(tried, u.up)
		retry := !sent || (werrc == nil && replayable(req))
		if !retry || attempt >= maxAttempts {
			return nil, nil, nil, fmt.Errorf("exchange with upstream: %w", err)
		}
	}
}

// ppClient returns the connection's PROXY client for version v, noting
// that sp will pool upstream connections for it.
func (h *h1conn) ppClient(sp *svcProxy, v int) (*ppClient, error) {
	if h.pp == nil || int(h.pp.v) != v {
		cl, err := newPPClient(v, h.c.RemoteAddr(), h.c.LocalAddr(), h)
		if err != nil {
			return nil, err
		}
		h.pp = cl
	}
	for _, s := range h.ppUsed {
		if s == sp {
			return h.pp, nil
		}
	}
	h.ppUsed = append(h.ppUsed, sp)
	return h.pp, nil
}

// maxAttempts bounds the tries of one request (see roundTrip).
const maxAttempts = 4

// replayable reports whether a request may be sent twice (as net/http's
// Transport decides): a safe method, or one carrying an idempotency key.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// finish ends an exchange: it waits for the request body to be sent (a body
// still being sent after the answer is complete ends with the stream, and
// stopBody, when not nil, ends reading it from a client that stalled), and
// pools the stream when the exchange left it clean. It reports whether the
// request body was sent whole.
func (sp *svcProxy) finish(u *upConn, resp *http.Response, werrc chan error, upOK bool, stopBody func()) bool {
	bodyOK := true
	if werrc != nil {
		t := time.NewTimer(time.Second)
		var err error
		select {
		case err = <-werrc:
		case <-t.C:
			u.close()
			if stopBody != nil {
				stopBody()
			}
			err = <-werrc
		}
		t.Stop()
		if err != nil {
			upOK, bodyOK = false, false
		}
	}
	if u.stop != nil {
		if !u.stop() {
			upOK = false // the client went away and the stream was closed
		}
		u.stop = nil
	}
	// Bytes already read past the answer mean the backend broke framing:
	// the next exchange would take them for its answer.
	if upOK && !resp.Close && u.br.Buffered() == 0 {
		sp.putUp(u)
	} else {
		u.close()
	}
	resp.Body.Close()
	return bodyOK
}

func upstreamError(err error) (int, string) {
	switch {
	case errors.Is(err, errPPOverTLS):
		return http.StatusBadGateway, "The service sends the PROXY protocol, which its https upstreams cannot be given."
	case errors.Is(err, route.ErrBusy):
		return http.StatusServiceUnavailable, "Every agent of this service is at its stream limit."
	case errors.Is(err, route.ErrNoUpstream):
		return http.StatusServiceUnavailable, "No agent is connected and no upstream is available for this service right now."
	}
	return http.StatusBadGateway, "The service's upstream could not be reached or closed the connection."
}

// hopHeaders are dropped in both directions (RFC 9110 section 7.6.1), with
// the framing headers, which are written anew.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Content-Length": true,
}

// connectionTokens returns the headers a message names in Connection, which
// are hop-by-hop too.
func connectionTokens(hdr http.Header) map[string]bool {
	var m map[string]bool
	for _, v := range hdr["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				if m == nil {
					m = map[string]bool{}
				}
				m[textproto.CanonicalMIMEHeaderKey(tok)] = true
			}
		}
	}
	return m
}

func isUpgrade(hdr http.Header) (string, bool) {
	up := hdr.Get("Upgrade")
	if up == "" {
		return "", false
	}
	for _, v := range hdr["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return up, true
			}
		}
	}
	return "", false
}

func writeHeaderLines(bw *bufio.Writer, hdr http.Header, skip map[string]bool, extra map[string]bool) {
	for k, vv := range hdr {
		if skip[k] || extra[k] {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// forwardedHeaders are set by the gateway; the client's own are dropped.
var forwardedHeaders = map[string]bool{
	"X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true, "Forwarded": true,
}

func mergeSkip(a, b map[string]bool) map[string]bool {
	if len(b) == 0 {
		return a
	}
	m := make(map[string]bool, len(a)+len(b))
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

// writeHead writes the request head for the backend: origin-form target,
// the client's headers less hop-by-hop and forwarding ones, the gateway's
// X-Forwarded-*, and framing decided from the parsed request.
func writeHead(bw *bufio.Writer, req *http.Request, clientIP string) error {
	uri := req.RequestURI
	if uri == "" || (uri[0] != '/' && uri != "*") {
		uri = req.URL.RequestURI()
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	writeHeaderLines(bw, req.Header, mergeSkip(hopHeaders, connectionTokens(req.Header)), forwardedHeaders)
	if te := req.Header.Get("Te"); strings.EqualFold(strings.TrimSpace(te), "trailers") {
		bw.WriteString("Te: trailers\r\n")
	}
	if up, ok := isUpgrade(req.Header); ok {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(up)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-For: ")
	bw.WriteString(clientIP)
	bw.WriteString("\r\nX-Forwarded-Host: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\nX-Forwarded-Proto: https\r\n")
	switch {
	case chunked(req):
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case req.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(req.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// writeBody sends the request body with the framing writeHead announced.
// The head goes first on its own when the client waits for 100 Continue
// before it sends the body or the body is a stream (of unknown length; each
// piece goes out as it comes), as net/http's Transport does.
func writeBody(bw *bufio.Writer, req *http.Request) error {
	if chunked(req) || strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		if err := bw.Flush(); err != nil {
			return err
		}
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	if chunked(req) {
		cw := httputil.NewChunkedWriter(bw)
		if _, err := io.CopyBuffer(flushWriter{cw, bw}, struct{ io.Reader }{req.Body}, *bp); err != nil {
			return err
		}
		cw.Close()
		for k, vv := range req.Trailer {
			for _, v := range vv {
				fmt.Fprintf(bw, "%s: %s\r\n", k, v)
			}
		}
		bw.WriteString("\r\n")
	} else if _, err := io.CopyBuffer(bw, struct{ io.Reader }{req.Body}, *bp); err != nil {
		return err
	}
	return bw.Flush()
}

// flushWriter flushes bw after each write to w.
type flushWriter struct {
	w  io.Writer
	bw *bufio.Writer
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.bw.Flush()
	}
	return n, err
}

// readResponse reads the backend's answer, handing 1xx informational heads
// (100 Continue, 103 Early Hints) to info until the final one.
func readResponse(br *bufio.Reader, req *http.Request, info func(*http.Response) error) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if err := info(resp); err != nil {
			return nil, err
		}
	}
}

// writeInformational relays a 1xx head to the client, unless the client
// speaks HTTP/1.0, which has no 1xx (RFC 9110 section 15.2).
func (h *h1conn) writeInformational(resp *http.Response) error {
	if resp.Request != nil && !resp.Request.ProtoAtLeast(1, 1) {
		return nil
	}
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(h.c)
	writeStatusLine(bw, resp.StatusCode, resp.Status)
	writeHeaderLines(bw, resp.Header, hopHeaders, nil)
	bw.WriteString("\r\n")
	err := bw.Flush()
	bw.Reset(nil)
	writerPool.Put(bw)
	return err
}

func writeStatusLine(bw *bufio.Writer, code int, status string) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	// resp.Status is "200 OK"; keep the backend's reason phrase.
	if _, reason, ok := strings.Cut(status, " "); ok && reason != "" {
		bw.WriteString(reason)
	} else {
		bw.WriteString(http.StatusText(code))
	}
	bw.WriteString("\r\n")
}

// writeResponse sends resp to the client, re-framed. It returns the body
// bytes sent, whether the client connection is still usable, and whether
// the upstream stream was read to the end of the response.
func (h *h1conn) writeResponse(req *http.Request, resp *http.Response) (int64, bool, bool) {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(h.c)
	defer func() {
		bw.Reset(nil)
		writerPool.Put(bw)
	}()
	code := resp.StatusCode
	noBody := req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	chunked, closeDelimited := false, false
	writeStatusLine(bw, code, resp.Status)
	writeHeaderLines(bw, resp.Header, mergeSkip(hopHeaders, connectionTokens(resp.Header)), nil)
	if h.p.AltSvc != "" && resp.Header["Alt-Svc"] == nil {
		bw.WriteString("Alt-Svc: ")
		bw.WriteString(h.p.AltSvc)
		bw.WriteString("\r\n")
	}
	switch {
	case noBody:
		if cl := resp.Header.Get("Content-Length"); cl != "" && req.Method == http.MethodHead {
			bw.WriteString("Content-Length: ")
			bw.WriteString(cl)
			bw.WriteString("\r\n")
		}
	case resp.ContentLength >= 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(resp.ContentLength, 10))
		bw.WriteString("\r\n")
	case req.ProtoAtLeast(1, 1):
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(resp.Trailer) > 0 {
			keys := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				keys = append(keys, k)
			}
			bw.WriteString("Trailer: ")
			bw.WriteString(strings.Join(keys, ", "))
			bw.WriteString("\r\n")
		}
	default:
		closeDelimited = true
	}
	keep := !req.Close && !closeDelimited
	if !keep {
		bw.WriteString("Connection: close\r\n")
	} else if !req.ProtoAtLeast(1, 1) {
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
	if noBody {
		if err := bw.Flush(); err != nil {
			return 0, false, false
		}
		return 0, keep, true
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	var n int64
	if resp.ContentLength >= 0 {
		// Known length: let the buffer fill and flush at the end.
		m, err := io.CopyBuffer(bw, struct{ io.Reader }{resp.Body}, buf)
		n = m
		if err != nil {
			// Either side broke mid-body: a truncated body must not pass
			// for a whole one, so both connections end.
			return n, false, false
		}
		if err := bw.Flush(); err != nil {
			return n, false, true
		}
		return n, keep, true
	}
	// Unknown length (streaming, SSE): send each piece as it comes.
	if err := bw.Flush(); err != nil {
		return 0, false, false
	}
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(bw)
	}
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			n += int64(m)
			var werr error
			if chunked {
				_, werr = cw.Write(buf[:m])
			} else {
				_, werr = bw.Write(buf[:m])
			}
			if werr == nil {
				werr = bw.Flush()
			}
			if werr != nil {
				return n, false, false
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The stream broke mid-body: the client must not take a
			// truncated body as complete, so its connection is closed.
			return n, false, false
		}
	}
	if chunked {
		cw.Close()
		for k, vv := range resp.Trailer {
			for _, v := range vv {
				bw.WriteString(k)
				bw.WriteString(": ")
				bw.WriteString(v)
				bw.WriteString("\r\n")
			}
		}
		bw.WriteString("\r\n")
	}
	if err := bw.Flush(); err != nil {
		return n, false, true
	}
	return n, keep, true
}

// upgrade relays a 101 answer and then splices the two connections.
func (h *h1conn) upgrade(req *http.Request, resp *http.Response, u *upConn, werrc chan error) (int, int64, bool) {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(h.c)
	writeStatusLine(bw, resp.StatusCode, resp.Status)
	writeHeaderLines(bw, resp.Header, mergeSkip(hopHeaders, connectionTokens(resp.Header)), nil)
	if up := resp.Header.Get("Upgrade"); up != "" {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(up)
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	err := bw.Flush()
	bw.Reset(nil)
	writerPool.Put(bw)
	if werrc != nil {
		// An upgrade request has no body; the writer is done.
		<-werrc
	}
	if err != nil {
		u.close()
		return http.StatusSwitchingProtocols, 0, false
	}
	client := &bufConn{Conn: h.c, r: h.br}
	back := &bufConn{Conn: u.c, r: u.br}
	_, n := Splice(client, back, 0)
	return http.StatusSwitchingProtocols, n, false
}

// bufConn reads through a bufio.Reader that may hold bytes already read.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufConn) CloseWrite() error {
	if cw, ok := b.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// writeError answers with a small HTML page.
func (h *h1conn) writeError(req *http.Request, status int, msg string, keep bool) {
	body := fmt.Sprintf("<!doctype html><title>%d %s</title><h1>%d %s</h1><p>%s</p><hr><p>webgw</p>\n",
		status, http.StatusText(status), status, http.StatusText(status), html.EscapeString(msg))
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(h.c)
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n",
		status, http.StatusText(status), len(body))
	if status == http.StatusServiceUnavailable {
		bw.WriteString("Retry-After: 1\r\n")
	}
	if h.p.AltSvc != "" {
		bw.WriteString("Alt-Svc: ")
		bw.WriteString(h.p.AltSvc)
		bw.WriteString("\r\n")
	}
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if req == nil || req.Method != http.MethodHead {
		bw.WriteString(body)
	}
	bw.Flush()
	bw.Reset(nil)
	writerPool.Put(bw)
}
