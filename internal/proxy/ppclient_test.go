package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// ppBackend is an HTTP/1.1 and h2c backend whose connections may start
// with a PROXY header (read with go-proxyproto). Every answer says which of
// its connections served it and what that connection's header named:
// "CONN|HEADER|XFF", HEADER being "v1 SRC>DST" or "none". An upgrade is
// answered with 101 and that line, then its lines are echoed upper-cased.
type ppBackend struct {
	srv  *http.Server
	next atomic.Int64

	mu      sync.Mutex
	clients map[int64]map[string]bool // X-Client values each connection served; guarded by mu
	closed  map[int64]bool            // connections that ended; guarded by mu
	ids     map[net.Conn]int64        // guarded by mu
}

type ppConnKey struct{}

type ppConnInfo struct {
	id int64
	c  *ppConn
}

// ppConn reads an optional PROXY header (go-proxyproto's parser) before
// the data; a second header would be data, which the HTTP server refuses.
type ppConn struct {
	net.Conn
	once sync.Once
	br   *bufio.Reader
	hdr  *pp.Header
	err  error
}

func newPPConn(c net.Conn) *ppConn { return &ppConn{Conn: c, br: bufio.NewReader(c)} }

func (c *ppConn) header() (*pp.Header, error) {
	c.once.Do(func() {
		b, err := c.br.Peek(5)
		if err != nil {
			c.err = err
			return
		}
		if string(b) == "PROXY" || string(b) == "\r\n\r\n\x00" {
			c.hdr, c.err = pp.Read(c.br)
		}
	})
	return c.hdr, c.err
}

func (c *ppConn) Read(p []byte) (int, error) {
	if _, err := c.header(); err != nil {
		return 0, err
	}
	return c.br.Read(p)
}

// ppListener wraps accepted connections in ppConn.
type ppListener struct{ net.Listener }

func (l ppListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newPPConn(c), nil
}

func newPPBackend() *ppBackend {
	b := &ppBackend{clients: map[int64]map[string]bool{}, closed: map[int64]bool{}, ids: map[net.Conn]int64{}}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	b.srv = &http.Server{
		Protocols: &protos,
		Handler:   http.HandlerFunc(b.serve),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			id := b.next.Add(1)
			b.mu.Lock()
			b.ids[c] = id
			b.mu.Unlock()
			return context.WithValue(ctx, ppConnKey{}, &ppConnInfo{id: id, c: c.(*ppConn)})
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				b.mu.Lock()
				b.closed[b.ids[c]] = true
				b.mu.Unlock()
			}
		},
	}
	return b
}

func (b *ppBackend) serve(w http.ResponseWriter, r *http.Request) {
	info := r.Context().Value(ppConnKey{}).(*ppConnInfo)
	desc := "none"
	if h, _ := info.c.header(); h != nil {
		desc = fmt.Sprintf("v%d %s>%s", h.Version, h.SourceAddr, h.DestinationAddr)
	}
	b.mu.Lock()
	if b.clients[info.id] == nil {
		b.clients[info.id] = map[string]bool{}
	}
	b.clients[info.id][r.Header.Get("X-Client")] = true
	b.mu.Unlock()
	line := fmt.Sprintf("%d|%s|%s", info.id, desc, r.Header.Get("X-Forwarded-For"))
	if r.Header.Get("Upgrade") == "" {
		io.WriteString(w, line)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n" + line + "\n")
	brw.Flush()
	for {
		s, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		brw.WriteString(strings.ToUpper(s))
		brw.Flush()
	}
}

// checkNotShared checks that no backend connection served two clients.
func (b *ppBackend) checkNotShared(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, cl := range b.clients {
		if len(cl) > 1 {
			t.Errorf("backend connection %d served clients %v", id, cl)
		}
	}
}

func (b *ppBackend) isClosed(id int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed[id]
}

// addPPService configures svc (proto, PROXY protocol version v) with one
// upstream served by b: an agent's tunnel, or with direct a direct upstream
// on loopback TCP.
func addPPService(t *testing.T, e *env, proto model.Protocol, v int, direct bool, b *ppBackend) *route.Service {
	t.Helper()
	sv := model.Service{Name: "svc", Tenant: "t", Protocol: proto, ProxyProtocol: v}
	if direct {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			b.srv.Serve(ppListener{ln})
		}()
		t.Cleanup(func() {
			b.srv.Close()
			<-served
		})
		e.table.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", u.HostPort())
		}
		scheme := "http"
		if proto == model.ProtoH2C {
			scheme = "h2c"
		}
		sv.Upstreams = []model.Upstream{{URL: scheme + "://" + ln.Addr().String()}}
		return e.table.Configure(sv)
	}
	e.table.Configure(sv)
	inner := serveHTTP(t, b.srv)
	fa := newFakeAgent(t, "agent", func(h *tunnel.Header, c net.Conn) { inner(h, newPPConn(c)) })
	if err := e.table.Attach("svc", fa.agent); err != nil {
		t.Fatal(err)
	}
	return e.table.Lookup("svc")
}

// setPP changes the service's PROXY protocol version, as the store would.
func setPP(e *env, svc *route.Service, v int) {
	sv := svc.Spec()
	sv.ProxyProtocol = v
	e.table.Configure(sv)
}

// ppAnswer is a parsed ppBackend answer.
type ppAnswer struct {
	conn int64
	hdr  string
	xff  string
}

func parsePPAnswer(t *testing.T, s string) ppAnswer {
	t.Helper()
	parts := strings.Split(strings.TrimSuffix(s, "\n"), "|")
	if len(parts) != 3 {
		t.Fatalf("backend answer %q", s)
	}
	id, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		t.Fatalf("backend answer %q", s)
	}
	return ppAnswer{conn: id, hdr: parts[1], xff: parts[2]}
}

// wantHeader is the header description ppBackend gives for version v from
// a client at src connected to dst.
func wantHeader(v int, src, dst net.Addr) string {
	if v == 0 {
		return "none"
	}
	return fmt.Sprintf("v%d %s>%s", v, src, dst)
}

// upstreamKinds runs f for a tunnel and a direct upstream.
func upstreamKinds(t *testing.T, f func(t *testing.T, direct bool)) {
	for _, direct := range []bool{false, true} {
		name := "tunnel"
		if direct {
			name = "direct"
		}
		t.Run(name, func(t *testing.T) { f(t, direct) })
	}
}

// TestPPH1 has two clients of the HTTP/1.1 fast path take turns: with the
// PROXY protocol each has its own upstream connection, kept alive for it,
// whose header names it; without, they share one and no header is sent.
func TestPPH1(t *testing.T) {
	for _, v := range []int{0, 1, 2} {
		t.Run("v"+strconv.Itoa(v), func(t *testing.T) {
			upstreamKinds(t, func(t *testing.T, direct bool) {
				e := newH1Env(t)
				b := newPPBackend()
				addPPService(t, e, model.ProtoHTTP, v, direct, b)
				clients := []*h1Client{
					startH1(t, e.p, context.Background(), ConnLimits{}),
					startH1(t, e.p, context.Background(), ConnLimits{}),
				}
				conns := map[int]int64{}
				for round := 0; round < 3; round++ {
					for i, cl := range clients {
						cl.send("GET / HTTP/1.1\r\nHost: svc.gw.test\r\nX-Client: " + strconv.Itoa(i) + "\r\n\r\n")
						resp, body := cl.response("GET")
						if resp.StatusCode != 200 {
							t.Fatalf("client %d: status %d: %s", i, resp.StatusCode, body)
						}
						a := parsePPAnswer(t, body)
						if want := wantHeader(v, cl.c.LocalAddr(), cl.c.RemoteAddr()); a.hdr != want {
							t.Errorf("client %d: backend saw header %q, want %q", i, a.hdr, want)
						}
						if a.xff != "127.0.0.1" {
							t.Errorf("client %d: X-Forwarded-For %q", i, a.xff)
						}
						// A client connection's requests are sequential, so
						// its upstream connection is back in the pool for
						// its next one. (Without the PROXY protocol the
						// other client may take it first.)
						if round == 0 {
							conns[i] = a.conn
						} else if v != 0 && a.conn != conns[i] {
							t.Errorf("client %d: request %d on backend connection %d, the first on %d (no keep-alive)", i, round, a.conn, conns[i])
						}
					}
				}
				if v != 0 && conns[0] == conns[1] {
					t.Errorf("both clients used backend connection %d", conns[0])
				}
				if v != 0 {
					b.checkNotShared(t)
					// A client connection's upstream connections end with it.
					clients[0].c.Close()
					clients[0].wait()
					eventually(t, "the first client's upstream connection to close", func() bool { return b.isClosed(conns[0]) })
					if b.isClosed(conns[1]) {
						t.Error("the second client's upstream connection closed with the first client")
					}
				}
			})
		})
	}
}

// h2Client is one HTTP/2 client connection to an h2Front.
type h2Client struct {
	f     *h2Front
	c     *http.Client
	local net.Addr // the connection's local address, once used
}

func (f *h2Front) newClient(t *testing.T) *h2Client {
	tr := f.srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig = tr.TLSClientConfig.Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &h2Client{f: f, c: &http.Client{Transport: tr}}
}

// get sends a GET for / to svc.gw.test marked as client id and returns the
// backend's answer.
func (hc *h2Client) get(t *testing.T, id string) ppAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		hc.local = i.Conn.LocalAddr()
	}})
	req := hc.f.request(t, ctx, "GET", "svc", "/", nil)
	req.Header.Set("X-Client", id)
	resp, err := hc.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := readBody(t, resp)
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("status %d over %s: %s", resp.StatusCode, resp.Proto, body)
	}
	return parsePPAnswer(t, body)
}

// TestPPH2Clients is TestPPH1 for HTTP/2 clients (serveDirect) of an http
// service, and for an h2c service (balancedTransport, where upstream
// connections are multiplexed: per client then).
func TestPPH2Clients(t *testing.T) {
	for _, proto := range []model.Protocol{model.ProtoHTTP, model.ProtoH2C} {
		for _, v := range []int{0, 1, 2} {
			t.Run(string(proto)+"/v"+strconv.Itoa(v), func(t *testing.T) {
				upstreamKinds(t, func(t *testing.T, direct bool) {
					e := newH1Env(t)
					b := newPPBackend()
					addPPService(t, e, proto, v, direct, b)
					f := newH2Front(t, e)
					clients := []*h2Client{f.newClient(t), f.newClient(t)}
					dst := f.srv.Listener.Addr()
					// The backend connections each client used. Its next
					// request may come before the last one's connection
					// is back in the pool, so it may use more than one.
					conns := map[int]map[int64]bool{0: {}, 1: {}}
					for round := 0; round < 3; round++ {
						for i, hc := range clients {
							a := hc.get(t, strconv.Itoa(i))
							if want := wantHeader(v, hc.local, dst); a.hdr != want {
								t.Errorf("client %d: backend saw header %q, want %q", i, a.hdr, want)
							}
							if a.xff != "127.0.0.1" {
								t.Errorf("client %d: X-Forwarded-For %q", i, a.xff)
							}
							conns[i][a.conn] = true
						}
					}
					if v != 0 {
						for c := range conns[0] {
							if conns[1][c] {
								t.Errorf("both clients used backend connection %d", c)
							}
						}
						b.checkNotShared(t)
						if proto == model.ProtoH2C && (len(conns[0]) != 1 || len(conns[1]) != 1) {
							t.Errorf("h2c: the clients used backend connections %v and %v, want one each, multiplexed", conns[0], conns[1])
						}
					}
				})
			})
		}
	}
}

// TestPPUpgrade upgrades a connection through the HTTP/1.1 fast path and
// through net/http (httputil.ReverseProxy): the backend's header names the
// client.
func TestPPUpgrade(t *testing.T) {
	for _, front := range []string{"h1", "net/http"} {
		t.Run(front, func(t *testing.T) {
			upstreamKinds(t, func(t *testing.T, direct bool) {
				e := newEnv(t)
				b := newPPBackend()
				addPPService(t, e, model.ProtoHTTP, 2, direct, b)
				var c net.Conn
				if front == "h1" {
					c = startH1(t, e.p, context.Background(), ConnLimits{}).c
				} else {
					var err error
					if c, err = net.Dial("tcp", e.srv.Listener.Addr().String()); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { c.Close() })
					c.SetDeadline(time.Now().Add(waitTimeout))
				}
				io.WriteString(c, "GET /up HTTP/1.1\r\nHost: svc.gw.test\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("status %d", resp.StatusCode)
				}
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				a := parsePPAnswer(t, line)
				if want := wantHeader(2, c.LocalAddr(), c.RemoteAddr()); a.hdr != want {
					t.Errorf("backend saw header %q, want %q", a.hdr, want)
				}
				if a.xff != "127.0.0.1" {
					t.Errorf("X-Forwarded-For %q", a.xff)
				}
				io.WriteString(c, "ping\n")
				if line, err := br.ReadString('\n'); err != nil || line != "PING\n" {
					t.Errorf("echo: %q %v", line, err)
				}
			})
		})
	}
}

// TestPPLiveChange changes the setting while clients stay connected: new
// upstream connections follow it, and one opened with a header never
// serves another client.
func TestPPLiveChange(t *testing.T) {
	upstreamKinds(t, func(t *testing.T, direct bool) {
		e := newH1Env(t)
		b := newPPBackend()
		svc := addPPService(t, e, model.ProtoHTTP, 0, direct, b)
		a := startH1(t, e.p, context.Background(), ConnLimits{})
		bc := startH1(t, e.p, context.Background(), ConnLimits{})
		get := func(cl *h1Client, id string, v int) ppAnswer {
			t.Helper()
			cl.send("GET / HTTP/1.1\r\nHost: svc.gw.test\r\nX-Client: " + id + "\r\n\r\n")
			resp, body := cl.response("GET")
			if resp.StatusCode != 200 {
				t.Fatalf("client %s: status %d: %s", id, resp.StatusCode, body)
			}
			ans := parsePPAnswer(t, body)
			if want := wantHeader(v, cl.c.LocalAddr(), cl.c.RemoteAddr()); ans.hdr != want {
				t.Errorf("client %s: backend saw header %q, want %q", id, ans.hdr, want)
			}
			return ans
		}
		plain := get(a, "a", 0).conn
		setPP(e, svc, 1)
		a1 := get(a, "a", 1).conn
		b1 := get(bc, "b", 1).conn
		if a1 == plain || b1 == plain || a1 == b1 {
			t.Errorf("connections: plain %d, a %d, b %d; want three", plain, a1, b1)
		}
		setPP(e, svc, 2)
		if a2 := get(a, "a", 2).conn; a2 == a1 || a2 == b1 || a2 == plain {
			t.Errorf("after the change to v2, client a used connection %d", a2)
		}
		setPP(e, svc, 0)
		if c := get(bc, "b", 0).conn; c != plain {
			t.Errorf("after the change back to none, client b used connection %d, want the pooled plain one %d", c, plain)
		}
		// Client b's connection may not be back in the pool yet: a may
		// get a new one, but never one with a header.
		if c := get(a, "a", 0).conn; c == a1 || c == b1 {
			t.Errorf("client a used connection %d, one made with a header", c)
		}
		b.mu.Lock()
		delete(b.clients, plain) // shared on purpose: no header
		b.mu.Unlock()
		b.checkNotShared(t)
	})
}

// TestPPOverTLSRefused: the header cannot go ahead of a TLS handshake the
// direct dialer makes, so an https upstream is not used.
func TestPPOverTLSRefused(t *testing.T) {
	e := newH1Env(t)
	dialed := make(chan struct{}, 1)
	e.table.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
		dialed <- struct{}{}
		return nil, fmt.Errorf("not dialled")
	}
	e.table.Configure(model.Service{Name: "svc", Tenant: "t", Protocol: model.ProtoHTTP, ProxyProtocol: 1,
		Upstreams: []model.Upstream{{URL: "https://127.0.0.1:1"}}})
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	cl.send("GET / HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
	if resp, body := cl.response("GET"); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "PROXY protocol") {
		t.Errorf("status %d: %s", resp.StatusCode, body)
	}
	select {
	case <-dialed:
		t.Error("the https upstream was dialled")
	default:
	}
}
