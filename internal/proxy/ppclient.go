package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/webgw/webgw/internal/proxyproto"
	"github.com/webgw/webgw/internal/route"
)

// The PROXY protocol towards backends (model.Service.ProxyProtocol 1 or 2).
// Every upstream connection of such a service starts with a header naming
// one client connection, so it serves that client connection only: the
// fast path's pool keeps those connections apart, per client connection and
// upstream (ppIdle), and never hands them to the shared pool; the
// http.Transports of balancedTransport pool them under a host name made
// from the client (ppClient.poolHost). Keep-alive within one client
// connection still works. The setting is read per request, so a change
// applies to the next connection opened; a connection opened under the old
// setting still serves only the client it was opened for.

// ppClient is the client connection a PROXY header names.
type ppClient struct {
	v        proxyproto.Version
	src, dst string // the client connection's remote and local addresses
	// id tells client connections apart beyond their addresses: the
	// *h1conn on the fast path, the connection's local address value
	// (one per connection in net/http) when it is a pointer, else nil.
	id  any
	hdr []byte // the encoded header
}

// errPPOverTLS refuses a direct https upstream of a service with the PROXY
// protocol: the header must precede the TLS handshake, which the direct
// dialer performs.
var errPPOverTLS = errors.New("proxy protocol towards an https upstream is not supported")

// newPPClient returns the client for a PROXY header of version v from src
// (the client) to dst (the address it connected to).
func newPPClient(v int, src, dst net.Addr, id any) (*ppClient, error) {
	hdr, err := proxyproto.Header(proxyproto.Version(v), src, dst)
	if err != nil {
		return nil, err
	}
	return &ppClient{v: proxyproto.Version(v), src: src.String(), dst: dst.String(), id: id, hdr: hdr}, nil
}

// ppClientOf returns the PROXY client of a request served by net/http (or
// an HTTP/3 server that sets http.LocalAddrContextKey).
func ppClientOf(v int, r *http.Request) (*ppClient, error) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	var id any
	switch a := local.(type) {
	case *net.TCPAddr:
		if a != nil {
			id = a
		}
	case *net.UDPAddr:
		if a != nil {
			id = a
		}
	}
	return newPPClient(v, addrString(r.RemoteAddr), local, id)
}

// addrString is a "host:port" string as a net.Addr.
type addrString string

func (a addrString) Network() string { return "tcp" }
func (a addrString) String() string  { return string(a) }

// ppKey is the pool key of a fast-path upstream connection that starts
// with a PROXY header.
type ppKey struct {
	up       *route.Upstream
	v        proxyproto.Version
	src, dst string
	id       any
}

func (cl *ppClient) key(up *route.Upstream) ppKey {
	return ppKey{up: up, v: cl.v, src: cl.src, dst: cl.dst, id: cl.id}
}

// poolHost is the URL host under which an http.Transport pools the
// connections made for cl: one pool per client connection and version.
func (cl *ppClient) poolHost(service string) string {
	b := make([]byte, 0, 96)
	b = append(b, "pp"...)
	b = strconv.AppendInt(b, int64(cl.v), 10)
	b = append(b, '-')
	b = hex.AppendEncode(b, []byte(cl.src))
	b = append(b, '-')
	b = hex.AppendEncode(b, []byte(cl.dst))
	if cl.id != nil {
		b = fmt.Appendf(b, "-%p", cl.id)
	}
	b = append(b, '.')
	b = append(b, service...)
	return string(b)
}

// checkPP reports whether up can carry cl's header.
func checkPP(cl *ppClient, up *route.Upstream) error {
	if up.Direct != nil && up.Direct.TLS {
		return fmt.Errorf("upstream %s: %w", up, errPPOverTLS)
	}
	return nil
}

type ppCtxKey struct{}

// ppFromContext returns the PROXY client balancedTransport put in a
// request's context, or nil.
func ppFromContext(ctx context.Context) *ppClient {
	cl, _ := ctx.Value(ppCtxKey{}).(*ppClient)
	return cl
}

// closeClient closes the pooled connections made for the client connection id.
func (sp *svcProxy) closeClient(id any) {
	var closing []*upConn
	sp.mu.Lock()
	for k, list := range sp.ppIdle {
		if k.id == id {
			closing = append(closing, list...)
			sp.nidle -= len(list)
			delete(sp.ppIdle, k)
		}
	}
	sp.mu.Unlock()
	for _, u := range closing {
		u.close()
	}
}
