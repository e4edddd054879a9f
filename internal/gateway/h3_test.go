package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/webgw/webgw/internal/gateway"
)

func caPoolOf(t *testing.T, g *gateway.Gateway) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(g.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("ca.pem holds no certificate")
	}
	return pool
}

// getTCP fetches url over TLS from the gateway's HTTPS port.
func getTCP(t *testing.T, g *gateway.Gateway, url string) *http.Response {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: caPoolOf(t, g)},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.HTTPSAddr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestHTTP3(t *testing.T) {
	g := start(t, testConfig(t.TempDir()))
	defer stop(t, g)
	port := portOf(g.HTTPSAddr)
	if g.H3Addr != g.HTTPSAddr {
		t.Errorf("H3Addr %q, want the HTTPS address %q (udp)", g.H3Addr, g.HTTPSAddr)
	}
	var buf bytes.Buffer
	g.Banner(&buf)
	if !strings.Contains(buf.String(), "http/3        udp/"+port+" ") {
		t.Errorf("banner does not mention HTTP/3 on udp/%s:\n%s", port, buf.String())
	}

	resp := getTCP(t, g, "https://nope.localhost/")
	if want := `h3=":` + port + `"; ma=86400`; resp.Header.Get("Alt-Svc") != want {
		t.Errorf("TCP response Alt-Svc %q, want %q", resp.Header.Get("Alt-Svc"), want)
	}

	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: caPoolOf(t, g)},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, g.H3Addr, tlsCfg, cfg)
		},
	}
	defer tr.Close()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://nope.localhost/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 3 || resp.StatusCode != 404 || !strings.Contains(string(body), "nope.localhost") {
		t.Errorf("HTTP/3 answer %s %d %q, want HTTP/3 404 naming nope.localhost", resp.Proto, resp.StatusCode, body)
	}
}

func TestHTTP3Off(t *testing.T) {
	cfg := testConfig(t.TempDir())
	off := false
	cfg.HTTP3 = &off
	g := start(t, cfg)
	defer stop(t, g)
	if g.H3Addr != "" {
		t.Errorf("H3Addr %q with http3 off", g.H3Addr)
	}
	var buf bytes.Buffer
	g.Banner(&buf)
	if strings.Contains(buf.String(), "http/3") {
		t.Errorf("banner mentions HTTP/3 with http3 off:\n%s", buf.String())
	}
	if resp := getTCP(t, g, "https://nope.localhost/"); resp.Header.Get("Alt-Svc") != "" {
		t.Errorf("Alt-Svc %q with http3 off", resp.Header.Get("Alt-Svc"))
	}
	// Nothing listens on the UDP port: it can be bound.
	pc, err := net.ListenPacket("udp", g.HTTPSAddr)
	if err != nil {
		t.Errorf("udp %s is bound with http3 off: %v", g.HTTPSAddr, err)
	} else {
		pc.Close()
	}
}

func TestHTTP3PortTaken(t *testing.T) {
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := testConfig(t.TempDir())
	cfg.HTTPSAddr = busy.LocalAddr().String()
	g, err := gateway.Start(t.Context(), cfg, nil)
	if err == nil {
		stop(t, g)
		t.Fatal("Start succeeded with the UDP port taken")
	}
	if !strings.Contains(err.Error(), "udp") {
		t.Skipf("the TCP port was taken too (%v); nothing to check", err)
	}
	if !gateway.IsConfigError(err) || !strings.Contains(err.Error(), "https_addr") || !strings.Contains(err.Error(), "http3") {
		t.Errorf("Start: %v, want a config error naming https_addr and http3", err)
	}
}
