package netpolicy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// listen starts a TCP listener on addr that accepts and closes
// connections until the test ends; it returns the port, or "" when addr
// cannot be bound.
func listen(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return ""
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDialer(t *testing.T) {
	port4 := listen(t, "127.0.0.1:0")
	if port4 == "" {
		t.Fatal("cannot listen on 127.0.0.1")
	}
	port6 := listen(t, "[::1]:0")
	tests := []struct {
		name  string
		allow []string
		host  string
		want  string // "" means connected; otherwise a substring of the error
	}{
		{"no allow", nil, "127.0.0.1", "no networks are allowed"},
		{"any IPv4", []string{"0.0.0.0/0"}, "127.0.0.1", "address 127.0.0.1 is loopback"},
		{"mapped", []string{"0.0.0.0/0"}, "::ffff:127.0.0.1", "address 127.0.0.1 is loopback"},
		{"explicit", []string{"127.0.0.1/32"}, "127.0.0.1", ""},
		{"loopback net", []string{"127.0.0.0/8"}, "127.0.0.1", ""},
		{"mapped explicit", []string{"127.0.0.1"}, "::ffff:127.0.0.1", ""},
		// DNS names are checked after resolution (DNS rebinding defence).
		{"localhost refused", nil, "localhost", "no networks are allowed"},
		{"localhost any", []string{"0.0.0.0/0", "::/0"}, "localhost", "loopback"},
		{"localhost allowed", []string{"127.0.0.0/8"}, "localhost", ""},
		{"ipv6 refused", []string{"::/0"}, "::1", "address ::1 is loopback"},
		{"ipv6 allowed", []string{"::1/128"}, "::1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := port4
			if tt.host == "::1" {
				if port6 == "" {
					t.Skip("cannot listen on [::1]")
				}
				port = port6
			}
			addr := net.JoinHostPort(tt.host, port)
			p := New(mustAllow(t, tt.allow...), noOwn)
			c, err := p.Dialer(5*time.Second).DialContext(ctxTimeout(t), "tcp", addr)
			if err == nil {
				c.Close()
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("dial %s with allow %q: %v", addr, tt.allow, err)
			case tt.want != "" && err == nil:
				t.Fatalf("dial %s with allow %q connected; want %q", addr, tt.allow, tt.want)
			case err != nil && (!errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("dial %s with allow %q: %v; want ErrForbidden and %q", addr, tt.allow, err, tt.want)
			}
		})
	}
}

func TestDialUpstreamTCP(t *testing.T) {
	port := listen(t, "127.0.0.1:0")
	u, err := model.ParseUpstreamURL("http://127.0.0.1:"+port, model.ProtoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(mustAllow(t, "127.0.0.1"), noOwn).DialUpstream(ctxTimeout(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("DialUpstream without TLS returned %T; want *net.TCPConn", c)
	}
	c.Close()

	_, err = New(nil, noOwn).DialUpstream(ctxTimeout(t), u, nil)
	want := "dial upstream http://127.0.0.1:" + port + ": no networks are allowed"
	if !errors.Is(err, ErrForbidden) || err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("DialUpstream with no allow = %v; want ErrForbidden and %q", err, want)
	}

	// A DNS name resolving to a refused address is refused at connect time.
	u, err = model.ParseUpstreamURL("http://localhost:"+port, model.ProtoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(mustAllow(t, "0.0.0.0/0", "::/0"), noOwn).DialUpstream(ctxTimeout(t), u, nil)
	if !errors.Is(err, ErrForbidden) || !strings.HasPrefix(err.Error(), "dial upstream http://localhost:"+port+": ") {
		t.Errorf("DialUpstream(localhost) = %v; want ErrForbidden", err)
	}

	_, err = New(mustAllow(t, "0.0.0.0/0"), noOwn).DialUpstream(ctxTimeout(t), model.ParsedUpstream{}, nil)
	if err == nil {
		t.Error("DialUpstream(zero upstream) succeeded")
	}
}

func TestDialUpstreamTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	u, err := model.ParseUpstreamURL("https://"+srv.Listener.Addr().String(), model.ProtoHTTP)
	if err != nil {
		t.Fatal(err)
	}
	p := New(mustAllow(t, "127.0.0.1"), noOwn)

	tests := []struct {
		name  string
		opts  TLSOptions
		proto string // the ALPN protocol negotiated
		want  string // "" means the handshake succeeds
	}{
		{"roots", TLSOptions{RootCAs: roots}, "", ""},
		{"server name", TLSOptions{RootCAs: roots, ServerName: "example.com"}, "", ""},
		{"alpn", TLSOptions{RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}}, "h2", ""},
		{"insecure", TLSOptions{Insecure: true}, "", ""},
		{"system roots", TLSOptions{}, "", "certificate"},
		{"wrong name", TLSOptions{RootCAs: roots, ServerName: "wrong.test"}, "", "wrong.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			c, err := p.DialUpstream(ctxTimeout(t), u, &opts)
			if tt.want != "" {
				if err == nil {
					c.Close()
					t.Fatalf("handshake succeeded; want %q", tt.want)
				}
				prefix := "tls handshake with upstream https://" + srv.Listener.Addr().String() + ": "
				if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) || errors.Is(err, ErrForbidden) {
					t.Fatalf("error %q; want %q and %q", err, prefix, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc, ok := c.(*tls.Conn)
			if !ok {
				t.Fatalf("DialUpstream with TLS returned %T; want *tls.Conn", c)
			}
			st := tc.ConnectionState()
			if st.NegotiatedProtocol != tt.proto {
				t.Errorf("ALPN %q; want %q", st.NegotiatedProtocol, tt.proto)
			}
			if st.Version < tls.VersionTLS12 {
				t.Errorf("TLS version %x; want 1.2 or later", st.Version)
			}
			if tt.proto == "h2" {
				return
			}
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "hello HTTP/1.1" {
				t.Errorf("body %q", body)
			}
		})
	}

	// TLS does not get around the policy.
	_, err = New(nil, noOwn).DialUpstream(ctxTimeout(t), u, &TLSOptions{Insecure: true})
	if !errors.Is(err, ErrForbidden) {
		t.Errorf("DialUpstream(TLS) with no allow = %v; want ErrForbidden", err)
	}
}

func TestDialUpstreamUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	u, err := model.ParseUpstreamURL("udp://127.0.0.1:"+port, model.ProtoUDP)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(mustAllow(t, "127.0.0.1"), noOwn).DialUpstream(ctxTimeout(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.UDPConn); !ok {
		t.Fatalf("DialUpstream(udp://) returned %T; want *net.UDPConn", c)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Errorf("backend read %q, %v; want the datagram", buf[:n], err)
	}
	if _, err := New(mustAllow(t, "10.0.0.0/8"), noOwn).DialUpstream(ctxTimeout(t), u, nil); !errors.Is(err, ErrForbidden) {
		t.Errorf("DialUpstream(udp) outside the allowed networks = %v; want ErrForbidden", err)
	}
}

// TestDialUpstreamVia: dial gets the checked address of an IP-literal
// upstream; a refused address never reaches it, nor does a DNS name.
func TestDialUpstreamVia(t *testing.T) {
	port := listen(t, "127.0.0.1:0")
	var got []string
	via := func(ctx context.Context, network, address string) (net.Conn, error) {
		got = append(got, network+" "+address)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", "127.0.0.1:"+port)
	}
	p := New(mustAllow(t, "200::/7"), noOwn)
	u, _ := model.ParseUpstreamURL("http://[200:abcd::5]:8080", model.ProtoHTTP)
	c, err := p.DialUpstreamVia(ctxTimeout(t), u, nil, via)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(got) != 1 || got[0] != "tcp [200:abcd::5]:8080" {
		t.Errorf("dial got %q", got)
	}
	u, _ = model.ParseUpstreamURL("http://[2001:db8::5]:8080", model.ProtoHTTP)
	if _, err := p.DialUpstreamVia(ctxTimeout(t), u, nil, via); !errors.Is(err, ErrForbidden) {
		t.Errorf("outside the allowed networks: %v; want ErrForbidden", err)
	}
	u, _ = model.ParseUpstreamURL("http://backend.example:8080", model.ProtoHTTP)
	if _, err := p.DialUpstreamVia(ctxTimeout(t), u, nil, via); err == nil || !strings.Contains(err.Error(), "must be an IP address") {
		t.Errorf("a DNS name: %v; want a refusal", err)
	}
	if len(got) != 1 {
		t.Errorf("refused upstreams reached dial: %q", got)
	}
}
