package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/tunnel"
)

// h3Env is an edge serving TCP and, on its own loopback UDP port, QUIC. Its
// proxy advertises that UDP port in Alt-Svc, and the HTTP/1.1 fast path is on.
type h3Env struct {
	*edgeEnv
	udpAddr string
	altSvc  string
}

func newH3Edge(t *testing.T, configure func(*HTTPS)) *h3Env {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpAddr := pc.LocalAddr().String()
	_, port, _ := net.SplitHostPort(udpAddr)
	alt := AltSvc(port)
	env := newEdge(t, func(e *HTTPS) {
		px := &proxy.HTTP{Lookup: e.Names.Lookup, AltSvc: alt}
		e.Proxy = px
		e.H1 = func(ctx context.Context, c net.Conn) { px.ServeH1(ctx, c, proxy.ConnLimits{}) }
		if configure != nil {
			configure(e)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- env.https.ServeUDP(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("ServeUDP: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Error("ServeUDP did not return")
		}
		env.stop()
		if err := env.https.CloseUDP(); err != nil {
			t.Errorf("CloseUDP: %v", err)
		}
	})
	return &h3Env{edgeEnv: env, udpAddr: udpAddr, altSvc: alt}
}

// serveH2C returns a serve function that serves h with HTTP/2 over
// cleartext (prior knowledge), as an h2c service's agent does.
func serveH2C(t *testing.T, h http.Handler) func(*tunnel.Header, net.Conn) {
	t.Helper()
	ln := &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos}
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

// h3Client returns an HTTP/3 client that trusts the gateway CA and dials
// the edge's UDP port whatever the URL's host.
func (env *h3Env) h3Client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: env.ca.Pool()},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, env.udpAddr, tlsCfg, cfg)
		},
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr, Timeout: waitTimeout}
}

// dialQUIC opens a QUIC connection to the edge.
func (env *h3Env) dialQUIC(cfg *tls.Config) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	return quic.DialAddr(ctx, env.udpAddr, cfg, nil)
}

func TestH3Terminate(t *testing.T) {
	env := newH3Edge(t, nil)
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s host=%s xff=%s proto=%s body=%q", r.Method, r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), body)
	})))
	env.addService(t, "grpc", model.ProtoH2C, serveH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "h2c service %s", r.Proto)
	})))
	tests := []struct {
		name     string
		method   string
		url      string
		body     string
		wantCode int
		wantBody string
	}{
		{"get", "GET", "https://shop.gw.test/", "", 200, `GET host=shop.gw.test xff=127.0.0.1 proto=https body=""`},
		{"post with body", "POST", "https://shop.gw.test/up", "payload", 200, `POST host=shop.gw.test xff=127.0.0.1 proto=https body="payload"`},
		{"upper-case name", "GET", "https://SHOP.GW.TEST/", "", 200, "host=SHOP.GW.TEST"},
		{"unknown label", "GET", "https://nope.gw.test/", "", 404, "nope.gw.test"},
		{"apex", "GET", "https://gw.test/", "", 404, "gw.test"},
		{"h2c service", "GET", "https://grpc.gw.test/", "", 200, "h2c service HTTP/2.0"},
	}
	client := env.h3Client(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.url, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
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
			if resp.ProtoMajor != 3 {
				t.Errorf("protocol %s, want HTTP/3", resp.Proto)
			}
			if got := resp.Header.Values("Alt-Svc"); len(got) != 1 || got[0] != env.altSvc {
				t.Errorf("Alt-Svc %q, want [%s]", got, env.altSvc)
			}
			leaf := resp.TLS.PeerCertificates[0]
			host := strings.ToLower(strings.TrimPrefix(strings.TrimSuffix(tt.url, "/up"), "https://"))
			host = strings.TrimSuffix(host, "/")
			if err := leaf.VerifyHostname(host); err != nil {
				t.Errorf("certificate: %v", err)
			}
		})
	}
}

func TestH3RefusedNames(t *testing.T) {
	env := newH3Edge(t, nil)
	env.addService(t, "pass", model.ProtoTLS, func(_ *tunnel.Header, c net.Conn) { c.Close() })
	// Passthrough names cannot be served over QUIC, and names outside the
	// domain are not ours: both are refused in the handshake, as the TCP
	// side refuses foreign names, so browsers use TCP.
	for _, name := range []string{"pass.gw.test", "other.example", "a.shop.gw.test", "xgw.test"} {
		t.Run(name, func(t *testing.T) {
			c, err := env.dialQUIC(&tls.Config{ServerName: name, RootCAs: env.ca.Pool(), NextProtos: []string{http3.NextProtoH3}})
			if err == nil {
				c.CloseWithError(0, "")
				t.Fatal("handshake succeeded")
			}
			if !strings.Contains(err.Error(), "unrecognized name") {
				t.Errorf("handshake error %q, want an unrecognized_name alert", err)
			}
		})
	}
	t.Run("other alpn", func(t *testing.T) {
		c, err := env.dialQUIC(&tls.Config{ServerName: "shop.gw.test", RootCAs: env.ca.Pool(), NextProtos: []string{"h3-29"}})
		if err == nil {
			c.CloseWithError(0, "")
			t.Fatal("handshake succeeded")
		}
		if !strings.Contains(err.Error(), "no application protocol") {
			t.Errorf("handshake error %q, want no_application_protocol", err)
		}
	})
}

func TestH3NoSNI(t *testing.T) {
	env := newH3Edge(t, nil)
	// Without SNI the domain's certificate is shown; the name then comes from :authority.
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			tlsCfg = tlsCfg.Clone()
			tlsCfg.ServerName = ""
			return quic.DialAddr(ctx, env.udpAddr, tlsCfg, cfg)
		},
	}
	defer tr.Close()
	resp, err := (&http.Client{Transport: tr, Timeout: waitTimeout}).Get("https://127.0.0.1/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if names := resp.TLS.PeerCertificates[0].DNSNames; len(names) != 1 || names[0] != domain {
		t.Errorf("certificate names %v, want [%s]", names, domain)
	}
	if resp.StatusCode != 404 {
		t.Errorf("status %d, want 404", resp.StatusCode)
	}
}

func TestH3Tunnel(t *testing.T) {
	conns := make(chan *quic.Conn, 1)
	env := newH3Edge(t, func(e *HTTPS) {
		e.TunnelQUIC = func(_ context.Context, c *quic.Conn) { conns <- c }
	})
	c, err := env.dialQUIC(&tls.Config{ServerName: domain, RootCAs: env.ca.Pool(), NextProtos: []string{"h3", tunnel.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	st := c.ConnectionState().TLS
	if st.NegotiatedProtocol != tunnel.ALPN {
		t.Errorf("client negotiated %q", st.NegotiatedProtocol)
	}
	if !st.PeerCertificates[0].Equal(env.https.TunnelCert.Leaf) {
		t.Errorf("the agent saw %q, not the gateway's tunnel certificate", st.PeerCertificates[0].Subject)
	}
	var sc *quic.Conn
	select {
	case sc = <-conns:
	case <-time.After(waitTimeout):
		t.Fatal("the TunnelQUIC hook was not called")
	}
	defer sc.CloseWithError(0, "")
	if p := sc.ConnectionState().TLS.NegotiatedProtocol; p != tunnel.ALPN {
		t.Errorf("server side negotiated %q", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(s, "hello gateway")
	s.Close()
	ss, err := sc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(ss)
	if err != nil || string(got) != "hello gateway" {
		t.Fatalf("server read %q %v", got, err)
	}
}

func TestH3TunnelWithoutHook(t *testing.T) {
	env := newH3Edge(t, nil)
	c, err := env.dialQUIC(&tls.Config{ServerName: domain, RootCAs: env.ca.Pool(), NextProtos: []string{tunnel.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Context().Done():
	case <-time.After(waitTimeout):
		t.Fatal("the connection was not closed")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(c.Context()); !errors.As(err, &ae) || ae.ErrorCode != CodeTunnelRefused || !ae.Remote {
		t.Errorf("closed with %v, want remote application error %d", err, CodeTunnelRefused)
	}
}

func TestAltSvcTCP(t *testing.T) {
	env := newH3Edge(t, nil)
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/own" {
			w.Header().Set("Alt-Svc", "clear")
		}
		io.WriteString(w, "shop")
	})))
	env.table.Upsert("idle", "", model.ProtoHTTP, false) // no agent: 503
	tests := []struct {
		url      string
		wantCode int
		want     string
	}{
		{"https://shop.gw.test/", 200, env.altSvc},
		{"https://nope.gw.test/", 404, env.altSvc},
		{"https://idle.gw.test/", 503, env.altSvc},
		{"https://shop.gw.test/own", 200, "clear"}, // the service's own wins
	}
	for _, h2 := range []bool{false, true} {
		client := env.client(t, h2)
		for _, tt := range tests {
			t.Run(fmt.Sprintf("h2=%v %s", h2, tt.url), func(t *testing.T) {
				resp, err := client.Get(tt.url)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if wantMajor := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != wantMajor {
					t.Errorf("protocol %s", resp.Proto)
				}
				if resp.StatusCode != tt.wantCode {
					t.Errorf("status %d, want %d", resp.StatusCode, tt.wantCode)
				}
				if got := resp.Header.Values("Alt-Svc"); len(got) != 1 || got[0] != tt.want {
					t.Errorf("Alt-Svc %q, want [%s]", got, tt.want)
				}
			})
		}
	}
}

func TestH3Shutdown(t *testing.T) {
	block := make(chan struct{})
	started := make(chan struct{})
	env := newH3Edge(t, nil)
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-block
		io.WriteString(w, "finished")
	})))
	client := env.h3Client(t)
	res := getAsync(client, "https://shop.gw.test/")
	<-started
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		stopped <- env.https.Shutdown(ctx)
	}()
	// Shutdown waits for the request in flight; new connections are not accepted.
	select {
	case <-stopped:
		t.Fatal("Shutdown returned with an HTTP/3 request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer dcancel()
	if c, err := quic.DialAddr(dctx, env.udpAddr, &tls.Config{ServerName: "shop.gw.test", RootCAs: env.ca.Pool(), NextProtos: []string{http3.NextProtoH3}}, nil); err == nil {
		c.CloseWithError(0, "")
		t.Error("a new QUIC connection was accepted during shutdown")
	}
	close(block)
	r := <-res
	if r.err != nil || r.body != "finished" {
		t.Errorf("request in flight: %q %v", r.body, r.err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Shutdown did not return after the request finished")
	}
}

// TestH3ConnsPerIP: one address holds at most MaxH3ConnsPerIP HTTP/3
// connections; a connection over the limit is closed at once, and a slot
// freed by a closed connection is taken again.
func TestH3ConnsPerIP(t *testing.T) {
	env := newH3Edge(t, func(e *HTTPS) { e.MaxH3ConnsPerIP = 2 })
	env.addService(t, "shop", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	})))
	// get makes a request on a new client, whose connection stays open.
	get := func() (*http3.Transport, error) {
		c := env.h3Client(t)
		resp, err := c.Get("https://shop.gw.test/")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		return c.Transport.(*http3.Transport), nil
	}
	first, err := get()
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	if _, err := get(); err != nil {
		t.Fatalf("second connection: %v", err)
	}
	if _, err := get(); err == nil {
		t.Fatal("a third connection from the same address was served")
	}
	first.Close()
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := get()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of the two closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
