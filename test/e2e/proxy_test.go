package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestExposeCurl: a quick tunnel prints its URL, and curl over HTTP/1.1 and
// HTTP/2 reaches the backend with trustworthy X-Forwarded-* headers and
// intact bodies.
func TestExposeCurl(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	_, url := g.expose(t, startBackend(t, http.HandlerFunc(echoHandler)))
	host := strings.TrimPrefix(url, "https://")
	name := hostOf(url)

	check := func(t *testing.T, e echo, method, uri string) {
		t.Helper()
		if e.Method != method || e.URI != uri {
			t.Errorf("backend saw %s %s, want %s %s", e.Method, e.URI, method, uri)
		}
		if e.Host != host {
			t.Errorf("backend saw Host %q, want %q", e.Host, host)
		}
		if !slices.Equal(e.XForwardedFor, []string{"127.0.0.1"}) {
			t.Errorf("backend saw X-Forwarded-For %q, want exactly [127.0.0.1] (the client's 6.6.6.6 must not pass)", e.XForwardedFor)
		}
		if !slices.Equal(e.XForwardedProt, []string{"https"}) {
			t.Errorf("backend saw X-Forwarded-Proto %q, want [https]", e.XForwardedProt)
		}
		if len(e.XForwardedHost) != 1 || (e.XForwardedHost[0] != host && e.XForwardedHost[0] != name) {
			t.Errorf("backend saw X-Forwarded-Host %q, want [%s]", e.XForwardedHost, host)
		}
	}
	spoof := []string{"-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Forwarded-Proto: gopher", "-H", "X-Forwarded-Host: evil.example"}

	for _, c := range []struct{ flag, version string }{{"--http1.1", "1.1"}, {"--http2", "2"}} {
		t.Run("http"+c.version, func(t *testing.T) {
			args := append([]string{c.flag, "--cacert", g.caFile, "-w", "\n%{http_code} %{http_version}"}, spoof...)
			out := mustCurl(t, append(args, url+"/some/path?q=1")...)
			body, meta, _ := strings.Cut(out, "\n200 ")
			if meta != c.version {
				t.Fatalf("curl %s: want status 200 over HTTP/%s, got %q", c.flag, c.version, out)
			}
			check(t, decodeEcho(t, body), "GET", "/some/path?q=1")
		})
	}

	t.Run("resolve", func(t *testing.T) {
		out := mustCurl(t, "--cacert", g.caFile, "--resolve", name+":"+g.httpsPort()+":127.0.0.1", url+"/via-resolve")
		check(t, decodeEcho(t, out), "GET", "/via-resolve")
	})

	t.Run("post-1MiB", func(t *testing.T) {
		body := make([]byte, 1<<20)
		rand.Read(body)
		sum := sha256.Sum256(body)
		file := filepath.Join(t.TempDir(), "body.bin")
		if err := os.WriteFile(file, body, 0o600); err != nil {
			t.Fatal(err)
		}
		out := mustCurl(t, "--cacert", g.caFile, "-H", "Content-Type: application/octet-stream",
			"--data-binary", "@"+file, url+"/upload")
		e := decodeEcho(t, out)
		check(t, e, "POST", "/upload")
		if e.BodyLen != 1<<20 || e.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("backend got %d bytes with sha256 %s, want %d bytes with %x", e.BodyLen, e.BodySHA256, 1<<20, sum)
		}
	})
}

// TestWebSocket: a WebSocket echo works through the gateway.
func TestWebSocket(t *testing.T) {
	t.Parallel()
	up := websocket.Upgrader{}
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	}))
	g := startGateway(t)
	_, url := g.expose(t, backend)

	d := websocket.Dialer{
		TLSClientConfig: &tls.Config{RootCAs: caPool(t, g.caFile)},
		NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.httpsAddr)
		},
		HandshakeTimeout: 10 * time.Second,
	}
	wsURL := "wss://" + strings.TrimPrefix(url, "https://") + "/ws"
	c, resp, err := d.Dial(wsURL, nil)
	if err != nil {
		if resp != nil {
			t.Fatalf("dial %s: %v (status %s)", wsURL, err, resp.Status)
		}
		t.Fatalf("dial %s: %v", wsURL, err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range 5 {
		want := fmt.Sprintf("message %d %s", i, strings.Repeat("x", i*1000))
		if err := c.WriteMessage(websocket.TextMessage, []byte(want)); err != nil {
			t.Fatalf("write message %d: %v", i, err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read echo %d: %v", i, err)
		}
		if typ != websocket.TextMessage || string(got) != want {
			t.Fatalf("echo %d = (%d) %.40q, want (text) %.40q", i, typ, got, want)
		}
	}
	bin := []byte{0, 1, 2, 255}
	if err := c.WriteMessage(websocket.BinaryMessage, bin); err != nil {
		t.Fatal(err)
	}
	if typ, got, err := c.ReadMessage(); err != nil || typ != websocket.BinaryMessage || !bytes.Equal(got, bin) {
		t.Fatalf("binary echo = (%d) %v, %v", typ, got, err)
	}
}

// TestSSEIncremental: a server-sent event reaches the client while the
// backend still holds the response open; a buffering gateway fails the deadline.
func TestSSEIncremental(t *testing.T) {
	t.Parallel()
	gotOne := make(chan struct{})
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-gotOne:
		case <-r.Context().Done():
			return
		case <-time.After(20 * time.Second):
			return
		}
		io.WriteString(w, "data: two\n\n")
	}))
	g := startGateway(t)
	_, url := g.expose(t, backend)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/events", nil)
	resp, err := g.client(t, caPool(t, g.caFile)).Do(req)
	if err != nil {
		t.Fatalf("GET %s/events: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /events: status %s", resp.Status)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if l := sc.Text(); l != "" {
				select {
				case lines <- l:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	next := func(want string) {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok || l != want {
				t.Fatalf("event line = %q (stream open %v), want %q", l, ok, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %q within 5 s: the gateway buffers the event stream", want)
		}
	}
	next("data: one")
	close(gotOne)
	next("data: two")
}

// selfSigned makes a self-signed certificate for name (its own trust anchor).
func selfSigned(t testing.TB, name string) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"e2e backend"}},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, der
}

// TestTLSPassthrough: an https:// target keeps its own certificate; the
// client sees exactly the backend's certificate and body.
func TestTLSPassthrough(t *testing.T) {
	t.Parallel()
	cert, der := selfSigned(t, "pt.localhost")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the TLS backend\n")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	certFile := filepath.Join(t.TempDir(), "backend.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))

	g := startGateway(t)
	_, url := g.expose(t, "--name", "pt", srv.URL) // srv.URL is https://127.0.0.1:P
	if want := "https://pt.localhost:" + g.httpsPort(); url != want {
		t.Fatalf("expose printed %q, want %q", url, want)
	}

	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", g.httpsAddr,
		&tls.Config{ServerName: "pt.localhost", RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS to the gateway as pt.localhost, trusting only the backend certificate: %v", err)
	}
	peer := conn.ConnectionState().PeerCertificates
	conn.Close()
	if len(peer) != 1 || !bytes.Equal(peer[0].Raw, der) {
		var subjects []string
		for _, c := range peer {
			subjects = append(subjects, c.Subject.String())
		}
		t.Fatalf("client saw certificates %q, want exactly the backend's", subjects)
	}

	resp, err := g.client(t, roots).Get(url + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from the TLS backend\n" {
		t.Errorf("GET %s = %s %q", url, resp.Status, body)
	}

	if out := mustCurl(t, "--cacert", certFile, url+"/"); out != "hello from the TLS backend\n" {
		t.Errorf("curl --cacert backend.pem %s = %q", url, out)
	}
}
