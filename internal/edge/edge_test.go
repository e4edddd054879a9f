package edge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// waitTimeout bounds every wait; reaching it means the behaviour is broken.
const waitTimeout = 5 * time.Second

const domain = "gw.test"

// selfSigned returns a throwaway certificate for name.
func selfSigned(t testing.TB, name string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// newCA returns a local CA kept in a bolt store in a temporary directory.
func newCA(t *testing.T) *certs.LocalCA {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := certs.LoadOrCreateCA(context.Background(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// fakeAgent is a tunnel session over net.Pipe whose agent side reads each
// stream's header and hands the stream to serve, which owns it.
type fakeAgent struct {
	gw, ag  *tunnel.Session
	agent   *route.Agent
	headers chan *tunnel.Header
	wg      sync.WaitGroup
}

func newFakeAgent(t *testing.T, serve func(*tunnel.Header, net.Conn)) *fakeAgent {
	t.Helper()
	c1, c2 := net.Pipe()
	gw, err := tunnel.Server(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := tunnel.Client(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{gw: gw, ag: ag, headers: make(chan *tunnel.Header, 64)}
	fa.agent = &route.Agent{ID: "fake", Session: gw, Connected: time.Now()}
	fa.wg.Add(1)
	go func() {
		defer fa.wg.Done()
		for {
			st, err := ag.Accept()
			if err != nil {
				return
			}
			fa.wg.Add(1)
			go func() {
				defer fa.wg.Done()
				h, err := tunnel.ReadHeader(st)
				if err != nil {
					st.Close()
					return
				}
				select {
				case fa.headers <- h:
				default:
				}
				serve(h, st)
			}()
		}
	}()
	t.Cleanup(func() {
		gw.Close()
		ag.Close()
		fa.wg.Wait()
	})
	return fa
}

// serveHandler returns a serve function that serves h with HTTP/1.1.
func serveHandler(t *testing.T, h http.Handler) func(*tunnel.Header, net.Conn) {
	t.Helper()
	ln := &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{Handler: h}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return func(_ *tunnel.Header, c net.Conn) {
		if !ln.deliver(c) {
			c.Close()
		}
	}
}

// edgeEnv is an HTTPS edge serving on a loopback port.
type edgeEnv struct {
	addr    string
	ca      *certs.LocalCA
	table   *route.Table
	https   *HTTPS
	tunnels chan net.Conn
	stop    func()
}

func newEdge(t *testing.T, configure func(*HTTPS)) *edgeEnv {
	t.Helper()
	ca := newCA(t)
	tunnelCert, err := ca.ServerIdentity(context.Background(), []string{domain}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tab := route.NewTable(route.NewMetrics(prometheus.NewRegistry()))
	names := &Names{Domain: domain, Table: tab}
	env := &edgeEnv{ca: ca, table: tab, tunnels: make(chan net.Conn, 4)}
	env.https = &HTTPS{
		Names:      names,
		Certs:      ca,
		TunnelCert: tunnelCert,
		Tunnel: func(_ context.Context, c net.Conn) {
			env.tunnels <- c
		},
		Proxy:             &proxy.HTTP{Lookup: names.Lookup},
		Log:               slog.New(slog.DiscardHandler),
		HelloTimeout:      waitTimeout,
		ReadHeaderTimeout: waitTimeout,
	}
	if configure != nil {
		configure(env.https)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- env.https.Serve(ctx, ln) }()
	var once sync.Once
	env.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
			sctx, scancel := context.WithTimeout(context.Background(), waitTimeout)
			defer scancel()
			if err := env.https.Shutdown(sctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
	t.Cleanup(env.stop)
	return env
}

// addService adds a service with one fake agent serving its streams.
func (env *edgeEnv) addService(t *testing.T, name string, proto model.Protocol, serve func(*tunnel.Header, net.Conn)) *fakeAgent {
	t.Helper()
	env.table.Upsert(name, "", proto, false)
	fa := newFakeAgent(t, serve)
	if err := env.table.Attach(name, fa.agent); err != nil {
		t.Fatal(err)
	}
	return fa
}

// client returns an HTTPS client that trusts the gateway CA and dials the
// edge whatever the URL's host; h2 offers HTTP/2.
func (env *edgeEnv) client(t *testing.T, h2 bool) *http.Client {
	t.Helper()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(h2)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: env.ca.Pool()},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", env.addr)
		},
		Protocols: &protos,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: waitTimeout}
}

// dialTLS opens a TLS connection to the edge with cfg.
func (env *edgeEnv) dialTLS(cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: waitTimeout}
	c, err := tls.DialWithDialer(d, "tcp", env.addr, cfg)
	if err == nil {
		c.SetDeadline(time.Now().Add(waitTimeout))
	}
	return c, err
}

// readToEnd reads c until it ends and returns how long that took; a read
// that times out (waitTimeout) fails the test.
func readToEnd(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(waitTimeout))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatalf("the server kept the connection open for %v", time.Since(start))
	}
	return time.Since(start)
}

func TestHTTPSTunnel(t *testing.T) {
	env := newEdge(t, nil)
	tests := []struct {
		name    string
		cfg     *tls.Config
		wantErr bool
	}{
		{"tls 1.3", &tls.Config{ServerName: domain, NextProtos: []string{tunnel.ALPN}}, false},
		{"by IP without SNI", &tls.Config{ServerName: "127.0.0.1", NextProtos: []string{tunnel.ALPN}}, false},
		{"tunnel alpn among others", &tls.Config{ServerName: domain, NextProtos: []string{"h2", tunnel.ALPN}}, false},
		{"tls 1.2 refused", &tls.Config{ServerName: domain, NextProtos: []string{tunnel.ALPN}, MaxVersion: tls.VersionTLS12}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg.Clone()
			cfg.RootCAs = env.ca.Pool()
			c, err := env.dialTLS(cfg)
			if tt.wantErr {
				if err == nil {
					c.Close()
					t.Fatal("handshake succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if p := c.ConnectionState().NegotiatedProtocol; p != tunnel.ALPN {
				t.Errorf("client negotiated %q", p)
			}
			var sc net.Conn
			select {
			case sc = <-env.tunnels:
			case <-time.After(waitTimeout):
				t.Fatal("the Tunnel callback was not called")
			}
			defer sc.Close()
			tc, ok := sc.(*tls.Conn)
			if !ok {
				t.Fatalf("Tunnel got a %T, want *tls.Conn", sc)
			}
			st := tc.ConnectionState()
			if !st.HandshakeComplete || st.NegotiatedProtocol != tunnel.ALPN || st.Version != tls.VersionTLS13 {
				t.Errorf("server state: complete %v, alpn %q, version %x", st.HandshakeComplete, st.NegotiatedProtocol, st.Version)
			}
			if _, err := c.Write([]byte("hello gateway")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 13)
			sc.SetReadDeadline(time.Now().Add(waitTimeout))
			if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hello gateway" {
				t.Fatalf("server read %q %v", buf, err)
			}
		})
	}
}

func TestHTTPSTerminate(t *testing.T) {
	env := newEdge(t, nil)
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s xff=%s proto=%s", r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	})))
	tests := []struct {
		name      string
		url       string
		h2        bool
		wantMajor int
		wantCode  int
		wantBody  string
	}{
		{"h2 client", "https://shop.gw.test/", true, 2, 200, "host=shop.gw.test xff=127.0.0.1 proto=https"},
		{"http/1.1 client", "https://shop.gw.test/", false, 1, 200, "host=shop.gw.test xff=127.0.0.1 proto=https"},
		{"upper-case name", "https://SHOP.GW.TEST/", true, 2, 200, "host=SHOP.GW.TEST xff=127.0.0.1 proto=https"},
		{"unknown label", "https://nope.gw.test/", true, 2, 404, "nope.gw.test"},
		{"apex", "https://gw.test/", false, 1, 404, "gw.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := env.client(t, tt.h2).Get(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantCode || !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
			if resp.ProtoMajor != tt.wantMajor {
				t.Errorf("protocol %s, want major %d", resp.Proto, tt.wantMajor)
			}
			// The transport verified the chain against the CA; check the name too.
			leaf := resp.TLS.PeerCertificates[0]
			host := strings.ToLower(strings.TrimPrefix(strings.TrimSuffix(tt.url, "/"), "https://"))
			if err := leaf.VerifyHostname(host); err != nil {
				t.Errorf("certificate: %v", err)
			}
			want := host
			if tt.name == "unknown label" {
				// Unknown names share one wildcard: no signing per random name.
				want = "*.gw.test"
			}
			if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != want {
				t.Errorf("certificate names %v, want exactly %s", leaf.DNSNames, want)
			}
		})
	}
}

func TestHTTPSNoSNI(t *testing.T) {
	env := newEdge(t, nil)
	// A client without SNI gets the domain's certificate and the 404 page.
	c, err := env.dialTLS(&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if names := c.ConnectionState().PeerCertificates[0].DNSNames; !slices.Equal(names, []string{domain}) {
		t.Errorf("certificate names %v, want [%s]", names, domain)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("status %d, want 404", resp.StatusCode)
	}
}

func TestHTTPSUnknownSNI(t *testing.T) {
	env := newEdge(t, nil)
	for _, name := range []string{"other.example", "a.shop.gw.test", "gw.test.evil.example", "xgw.test"} {
		t.Run(name, func(t *testing.T) {
			c, err := env.dialTLS(&tls.Config{ServerName: name, RootCAs: env.ca.Pool()})
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
			if !strings.Contains(err.Error(), "unrecognized name") {
				t.Errorf("handshake error %q, want an unrecognized_name alert", err)
			}
		})
	}
}

// recordConn records the bytes read from (and written to) a connection.
type recordConn struct {
	net.Conn
	mu      sync.Mutex
	read    bytes.Buffer // guarded by mu
	written bytes.Buffer // guarded by mu
}

func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recordConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.written.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recordConn) snapshot() (read, written []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.read.Bytes()), bytes.Clone(c.written.Bytes())
}

func TestHTTPSPassthrough(t *testing.T) {
	env := newEdge(t, nil)
	backendCA := newCA(t) // the backend's own certificate, unknown to the gateway
	backendCert, err := backendCA.ForName("pass.gw.test")
	if err != nil {
		t.Fatal(err)
	}
	type handshake struct {
		read []byte
		err  error
	}
	handshakes := make(chan handshake, 1)
	fa := env.addService(t, "pass", model.ProtoTLS, func(_ *tunnel.Header, c net.Conn) {
		defer c.Close()
		rc := &recordConn{Conn: c}
		tc := tls.Server(rc, &tls.Config{Certificates: []tls.Certificate{*backendCert}})
		err := tc.Handshake()
		read, _ := rc.snapshot()
		handshakes <- handshake{read, err}
		if err != nil {
			return
		}
		io.Copy(tc, tc) // echo
		tc.CloseWrite()
	})

	raw, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(waitTimeout))
	rc := &recordConn{Conn: raw}
	c := tls.Client(rc, &tls.Config{ServerName: "pass.gw.test", RootCAs: backendCA.Pool()})
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake through the gateway: %v", err)
	}
	if got := c.ConnectionState().PeerCertificates[0]; !bytes.Equal(got.Raw, backendCert.Leaf.Raw) {
		t.Errorf("client saw certificate %q, not the backend's", got.Subject)
	}
	var hs handshake
	select {
	case hs = <-handshakes:
	case <-time.After(waitTimeout):
		t.Fatal("the backend handshake did not finish")
	}
	if hs.err != nil {
		t.Fatalf("backend handshake: %v", hs.err)
	}
	_, written := rc.snapshot()
	if len(hs.read) == 0 || hs.read[0] != 0x16 {
		t.Fatalf("the agent's stream does not start with a TLS handshake record")
	}
	if !bytes.Equal(hs.read, written) {
		t.Errorf("the agent read %d bytes, the client wrote %d; the stream must carry them verbatim", len(hs.read), len(written))
	}

	h := <-fa.headers
	want := tunnel.Header{Kind: tunnel.KindTLS, Service: "pass", Client: raw.LocalAddr().String(), Host: "pass.gw.test"}
	if *h != want {
		t.Errorf("stream header %+v, want %+v", *h, want)
	}

	if _, err := io.WriteString(c, "through the tunnel"); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "through the tunnel" {
		t.Fatalf("echo %q %v", got, err)
	}
	raw.Close() // close_notify is not the end of the TCP stream; this is
	svc := env.table.Lookup("pass")
	deadline := time.Now().Add(waitTimeout)
	for svc.Requests() != 1 || fa.agent.Streams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the stream ended: %d requests counted, %d streams open", svc.Requests(), fa.agent.Streams())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHTTPSPassthroughNoAgent(t *testing.T) {
	env := newEdge(t, nil)
	env.table.Upsert("pass", "", model.ProtoTLS, false)
	start := time.Now()
	c, err := env.dialTLS(&tls.Config{ServerName: "pass.gw.test", InsecureSkipVerify: true})
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded without an agent")
	}
	if !strings.Contains(err.Error(), "internal error") {
		t.Errorf("handshake error %q, want an internal_error alert", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %v; it must come at once", d)
	}
}

func TestHTTPSReadHeaderTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	env := newEdge(t, func(e *HTTPS) { e.ReadHeaderTimeout = timeout })
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.NotFoundHandler()))
	c, err := env.dialTLS(&tls.Config{ServerName: "shop.gw.test", RootCAs: env.ca.Pool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A slowloris client: part of a request head, then nothing.
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: shop.gw.test\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	if d := readToEnd(t, c); d > timeout+2*time.Second {
		t.Errorf("closed after %v, want about %v", d, timeout)
	}
}

func TestHTTPSHelloTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	env := newEdge(t, func(e *HTTPS) { e.HelloTimeout = timeout })
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.NotFoundHandler()))
	hello := captureHello(t, &tls.Config{ServerName: "shop.gw.test", NextProtos: []string{"http/1.1"}})
	tests := []struct {
		name  string
		send  []byte
		quick bool // refused at once rather than at the timeout
	}{
		{"nothing", nil, false},
		{"part of a record header", []byte{0x16, 0x03}, false},
		{"part of a hello", hello[:len(hello)/2], false},
		{"a hello, then no handshake", hello, false},
		{"plain http", []byte("GET / HTTP/1.1\r\nHost: shop.gw.test\r\n\r\n"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", env.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			d := readToEnd(t, c)
			if tt.quick && d >= timeout {
				t.Errorf("closed after %v, want at once", d)
			}
			if d > timeout+2*time.Second {
				t.Errorf("closed after %v, want about %v", d, timeout)
			}
		})
	}

	// The timeout covers only the hello and handshake: a tunnel stays open.
	c, err := env.dialTLS(&tls.Config{ServerName: domain, RootCAs: env.ca.Pool(), NextProtos: []string{tunnel.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-env.tunnels
	defer sc.Close()
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 5)
		_, err := io.ReadFull(sc, buf)
		got <- err
	}()
	<-time.After(2 * timeout) // let the hello deadline pass
	if _, err := io.WriteString(c, "later"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("tunnel read after the hello timeout: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("tunnel read did not return")
	}
}

func TestHTTPSShutdown(t *testing.T) {
	env := newEdge(t, nil)
	block := make(chan struct{})
	started := make(chan struct{})
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-block
		io.WriteString(w, "finished")
	})))
	client := env.client(t, false)
	res := getAsync(client, "https://shop.gw.test/")
	<-started
	stopped := make(chan struct{})
	go func() {
		env.stop()
		close(stopped)
	}()
	// Shutdown waits for the request in flight.
	select {
	case <-stopped:
		t.Fatal("Shutdown returned with a request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(block)
	r := <-res
	if r.err != nil || r.body != "finished" {
		t.Errorf("request in flight: %q %v", r.body, r.err)
	}
	<-stopped
	if c, err := net.DialTimeout("tcp", env.addr, time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts after stop")
	}
}

// TestHTTPSShutdownRace: Shutdown may run before or while Serve starts.
func TestHTTPSShutdownRace(t *testing.T) {
	ca := newCA(t)
	for i := 0; i < 20; i++ {
		e := &HTTPS{Names: &Names{Domain: domain, Table: route.NewTable(nil)}, Certs: ca, Proxy: http.NotFoundHandler()}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- e.Serve(ctx, ln) }()
		if err := e.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("Serve did not return")
		}
		e.Shutdown(context.Background())
	}
}

// getResult is what getAsync's GET brought.
type getResult struct {
	body string
	err  error
}

// getAsync GETs url with client in a goroutine and delivers the whole body.
func getAsync(client *http.Client, url string) <-chan getResult {
	res := make(chan getResult, 1)
	go func() {
		resp, err := client.Get(url)
		if err != nil {
			res <- getResult{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- getResult{string(b), err}
	}()
	return res
}

// TestHTTPSPeer: a ClientHello offering the peer ALPN goes to the Peer
// callback after a TLS 1.3 handshake with the tunnel certificate; without
// a Peer callback such a connection is closed.
func TestHTTPSPeer(t *testing.T) {
	peers := make(chan net.Conn, 1)
	env := newEdge(t, func(h *HTTPS) {
		h.Peer = func(_ context.Context, c net.Conn) { peers <- c }
	})
	c, err := env.dialTLS(&tls.Config{RootCAs: env.ca.Pool(), ServerName: "127.0.0.1", NextProtos: []string{tunnel.PeerALPN}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != tunnel.PeerALPN {
		t.Errorf("client negotiated %q", p)
	}
	var sc net.Conn
	select {
	case sc = <-peers:
	case sc = <-env.tunnels:
		t.Fatal("a peer session went to the agents' Tunnel callback")
	case <-time.After(waitTimeout):
		t.Fatal("the Peer callback was not called")
	}
	defer sc.Close()
	st := sc.(*tls.Conn).ConnectionState()
	if st.NegotiatedProtocol != tunnel.PeerALPN || st.Version != tls.VersionTLS13 {
		t.Errorf("server state: alpn %q, version %x", st.NegotiatedProtocol, st.Version)
	}
	if _, err := c.Write([]byte("peer")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	sc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "peer" {
		t.Fatalf("server read %q %v", buf, err)
	}

	off := newEdge(t, nil)
	if c, err := off.dialTLS(&tls.Config{RootCAs: off.ca.Pool(), ServerName: "127.0.0.1", NextProtos: []string{tunnel.PeerALPN}}); err == nil {
		c.Close()
		t.Fatal("peer handshake succeeded on an edge that serves no peers")
	}
}
