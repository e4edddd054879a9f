package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// balancedTransport is the ReverseProxy path's RoundTripper (h2c services,
// and upgrades arriving over HTTP/2): it picks an upstream per request, as
// the HTTP/1.1 path does, and sends the request through that upstream's own
// http.Transport. One Transport per upstream matters for HTTP/2: a single
// shared Transport would multiplex every request onto the first upstream's
// connection, so replicas would not share the load and a draining agent
// would keep getting new requests until its connection went idle.
type balancedTransport struct {
	svc  *route.Service
	hdr  *tunnel.Header
	base func() *http.Transport // a new Transport with the settings; DialContext is set per upstream

	mu  sync.Mutex
	per map[*route.Upstream]*http.Transport // guarded by mu
}

// errDial marks a failure to reach the upstream: no byte of the request
// was sent, so it may go to another upstream whatever its method.
var errDial = errors.New("dial upstream")

func (b *balancedTransport) transportFor(u *route.Upstream) *http.Transport {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t := b.per[u]; t != nil {
		return t
	}
	b.sweepLocked()
	t := b.base()
	t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		// The request that asked for the connection names its PROXY
		// client; its URL host keeps the connection for that client.
		cl := ppFromContext(ctx)
		if cl != nil {
			if err := checkPP(cl, u); err != nil {
				return nil, fmt.Errorf("%w %s: %w", errDial, u, err)
			}
		}
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		c, err := u.Dial(dctx, b.hdr)
		if err == nil && cl != nil {
			if _, err = c.Write(cl.hdr); err != nil {
				c.Close()
			}
		}
		if err != nil {
			if !errors.Is(err, route.ErrBusy) {
				u.Report(false)
			}
			return nil, fmt.Errorf("%w %s: %w", errDial, u, err)
		}
		return c, nil
	}
	if b.per == nil {
		b.per = map[*route.Upstream]*http.Transport{}
	}
	b.per[u] = t
	return t
}

// sweepLocked forgets the Transports of upstreams that are gone, closing
// their idle connections.
func (b *balancedTransport) sweepLocked() {
	for u, t := range b.per {
		if u.Gone() {
			t.CloseIdleConnections()
			delete(b.per, u)
		}
	}
}

// closeIdle closes idle connections: all of them, or with drainingOnly
// those of draining or gone upstreams (whose in-use ones close as their
// requests end, through later calls).
func (b *balancedTransport) closeIdle(drainingOnly bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for u, t := range b.per {
		if !drainingOnly || u.Draining() || u.Gone() {
			t.CloseIdleConnections()
		}
	}
	b.sweepLocked()
}

func (b *balancedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// Rewrite set X-Forwarded-For to the client's address alone.
	clientIP := lastHop(req.Header.Get("X-Forwarded-For"))
	var (
		tried   []*route.Upstream
		lastErr error
	)
	if req.Body != nil && req.Body != http.NoBody {
		// http.Transport closes the body when it cannot get a connection;
		// keep it open so the request can go to another upstream. The
		// server closes the real body when the handler returns.
		r := new(http.Request)
		*r = *req
		r.Body = noClose{req.Body}
		req = r
	}
	if v := b.svc.ProxyProtocol(); v != 0 {
		// Connections start with a header naming this client: the URL
		// host gives them a pool of their own, the context tells the
		// dialer what to send. The Host header is req.Host, unchanged.
		cl, err := ppClientOf(v, req)
		if err != nil {
			return nil, fmt.Errorf("proxy protocol: %w", err)
		}
		u := *req.URL
		u.Host = cl.poolHost(b.svc.Name)
		req = req.WithContext(context.WithValue(req.Context(), ppCtxKey{}, cl))
		req.URL = &u
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		u := b.svc.Pick(clientIP, tried...)
		if u == nil {
			break
		}
		tried = append(tried, u)
		u.Begin()
		resp, err := b.transportFor(u).RoundTrip(req)
		if err == nil {
			u.ReportStatus(resp.StatusCode)
			resp.Body = &endBody{ReadCloser: resp.Body, end: u.End}
			return resp, nil
		}
		u.End()
		lastErr = err
		if req.Context().Err() != nil {
			return nil, err
		}
		if !errors.Is(err, errDial) {
			u.Report(false)
			// http.Transport already retried what it could on a fresh
			// connection; only a request that never left may go elsewhere,
			// or one that is safe to send twice and has no body to replay.
			if !(replayable(req) && bodyless(req)) {
				return nil, err
			}
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("%w: %w", route.ErrNoUpstream, lastErr)
	}
	return nil, route.ErrNoUpstream
}

// lastHop is the last address of an X-Forwarded-For list: the one the
// gateway added, the client's.
func lastHop(xff string) string {
	if i := strings.LastIndexByte(xff, ','); i >= 0 {
		xff = xff[i+1:]
	}
	return strings.TrimSpace(xff)
}

// endBody calls end once, when the body is closed: the request is no longer
// outstanding at its upstream.
type endBody struct {
	io.ReadCloser
	end  func()
	done atomic.Bool
}

func (b *endBody) Close() error {
	if b.done.CompareAndSwap(false, true) {
		b.end()
	}
	return b.ReadCloser.Close()
}

// Write passes through for a 101 answer, whose body is the upgraded connection.
func (b *endBody) Write(p []byte) (int, error) {
	if w, ok := b.ReadCloser.(io.Writer); ok {
		return w.Write(p)
	}
	return 0, errors.ErrUnsupported
}

// noClose is a request body whose Close does nothing.
type noClose struct{ io.ReadCloser }

func (noClose) Close() error { return nil }

var _ http.RoundTripper = (*balancedTransport)(nil)
