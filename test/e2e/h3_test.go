package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

var reH3 = regexp.MustCompile(`(?m)^  http/3 +udp/(\d+) on (\S+) `)

// h3Client is an HTTP/3 client that dials udpAddr for every URL and trusts roots.
func h3Client(t testing.TB, udpAddr string, roots *x509.CertPool) *http.Client {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, udpAddr, tlsCfg, cfg)
		},
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// h3Addr reads the HTTP/3 line of the gateway's banner and checks that it
// names the HTTPS port.
func (g *gateway) h3Addr(t testing.TB) string {
	t.Helper()
	m := reH3.FindStringSubmatch(g.stdout.String())
	if m == nil {
		t.Fatalf("gateway banner has no http/3 line (%q):\n%s", reH3, g.stdout.String())
	}
	if m[1] != g.httpsPort() || m[2] != g.httpsAddr {
		t.Fatalf("banner: HTTP/3 on udp/%s %s, want the HTTPS address %s", m[1], m[2], g.httpsAddr)
	}
	return m[2]
}

// TestH3Expose: an exposed service answers over HTTP/3 on the gateway's UDP
// port (the HTTPS port), and TCP answers advertise it with Alt-Svc.
func TestH3Expose(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	udpAddr := g.h3Addr(t)
	_, url := g.expose(t, startBackend(t, http.HandlerFunc(echoHandler)))
	host := strings.TrimPrefix(url, "https://")
	roots := caPool(t, g.caFile)
	altSvc := `h3=":` + g.httpsPort() + `"; ma=86400`

	t.Run("get", func(t *testing.T) {
		req, _ := http.NewRequest("GET", url+"/over/h3?q=1", nil)
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		resp, err := h3Client(t, udpAddr, roots).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.ProtoMajor != 3 {
			t.Fatalf("%s %d: %s", resp.Proto, resp.StatusCode, body)
		}
		e := decodeEcho(t, string(body))
		if e.Method != "GET" || e.URI != "/over/h3?q=1" || e.Host != host {
			t.Errorf("backend saw %s %s Host %s, want GET /over/h3?q=1 Host %s", e.Method, e.URI, e.Host, host)
		}
		if !slices.Equal(e.XForwardedFor, []string{"127.0.0.1"}) || !slices.Equal(e.XForwardedProt, []string{"https"}) {
			t.Errorf("backend saw X-Forwarded-For %q, X-Forwarded-Proto %q", e.XForwardedFor, e.XForwardedProt)
		}
	})

	t.Run("post", func(t *testing.T) {
		payload := strings.Repeat("webgw over quic ", 64<<10) // 1 MiB
		resp, err := h3Client(t, udpAddr, roots).Post(url+"/upload", "text/plain", strings.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%d: %s", resp.StatusCode, body)
		}
		sum := sha256.Sum256([]byte(payload))
		if e := decodeEcho(t, string(body)); e.BodyLen != int64(len(payload)) || e.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("backend got %d bytes (sha %s), want %d", e.BodyLen, e.BodySHA256, len(payload))
		}
	})

	t.Run("alt-svc over tcp", func(t *testing.T) {
		resp, err := g.client(t, roots).Get(url + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := resp.Header.Values("Alt-Svc"); !slices.Equal(got, []string{altSvc}) {
			t.Errorf("%s response Alt-Svc %q, want [%s]", resp.Proto, got, altSvc)
		}
		// And with curl, HTTP/1.1 (the gateway's own fast path) and HTTP/2.
		for _, flag := range []string{"--http1.1", "--http2"} {
			out := mustCurl(t, flag, "--cacert", g.caFile, "-o", "/dev/null", "-D", "-", url+"/")
			if !strings.Contains(strings.ToLower(out), "alt-svc: "+strings.ToLower(altSvc)+"\r\n") {
				t.Errorf("curl %s: no Alt-Svc %s in\n%s", flag, altSvc, out)
			}
		}
	})

	t.Run("curl http3", func(t *testing.T) {
		if curlErr != nil {
			t.Fatal(curlErr)
		}
		v, _ := exec.Command("curl", "--version").Output()
		if !strings.Contains(strings.ToLower(string(v)), "http3") {
			t.Skip("the installed curl has no HTTP/3 support; the Go client above covers it")
		}
		out := mustCurl(t, "--http3-only", "--cacert", g.caFile, "-w", "\n%{http_version}", url+"/curl")
		body, ver, _ := strings.Cut(out, "\n")
		if ver != "3" || decodeEcho(t, body).URI != "/curl" {
			t.Errorf("curl --http3-only: %q", out)
		}
	})
}

// TestH3Drain: an HTTP/3 request in flight when the gateway is told to stop
// finishes, and the gateway then exits 0.
func TestH3Drain(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	udpAddr := g.h3Addr(t)
	arrived := make(chan struct{})
	release := make(chan struct{})
	_, url := g.expose(t, startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "finished")
	})))
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	client := h3Client(t, udpAddr, caPool(t, g.caFile))
	go func() {
		resp, err := client.Get(url + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{string(b), err}
	}()
	select {
	case <-arrived:
	case r := <-res:
		t.Fatalf("request ended before reaching the backend: %q %v", r.body, r.err)
	case <-time.After(15 * time.Second):
		t.Fatal("the request did not reach the backend")
	}
	g.signal(t, syscall.SIGTERM)
	waitFor(t, 10*time.Second, "the gateway to start draining", func() bool {
		return strings.Contains(g.stderr.String(), "draining")
	})
	close(release)
	r := <-res
	if r.err != nil || r.body != "finished" {
		t.Errorf("request in flight during the drain: %q %v", r.body, r.err)
	}
	if code := g.wait(t, 20*time.Second); code != 0 {
		t.Errorf("gateway exit code %d, want 0", code)
	}
}

// TestH3Off: with --http3=false nothing is advertised or served on UDP.
func TestH3Off(t *testing.T) {
	t.Parallel()
	g := startGateway(t, "--http3=false")
	if strings.Contains(g.stdout.String(), "http/3") {
		t.Errorf("banner mentions HTTP/3 with --http3=false:\n%s", g.stdout.String())
	}
	_, url := g.expose(t, textBackend(t, "tcp only"))
	out := mustCurl(t, "--cacert", g.caFile, "-D", "-", url+"/")
	if strings.Contains(strings.ToLower(out), "alt-svc") || !strings.HasSuffix(out, "tcp only") {
		t.Errorf("curl with http3 off:\n%s", out)
	}
}
