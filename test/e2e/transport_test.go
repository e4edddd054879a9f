package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// transports returns the transports of service's sessions.
func (g *gateway) transports(t testing.TB, service string) []string {
	var out []string
	for _, a := range g.sessionsOf(t, service) {
		out = append(out, a.Transport)
	}
	return out
}

func allAre(list []string, want string, n int) bool {
	if len(list) != n {
		return false
	}
	for _, s := range list {
		if s != want {
			return false
		}
	}
	return true
}

// TestQUICTransport: an agent told to use QUIC tunnels over the gateway's
// UDP port (the one HTTP/3 uses) and serves through it.
func TestQUICTransport(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	backend := textBackend(t, "over quic\n")
	_, url := g.expose(t, "--transport", "quic", "--name", "q", backend)
	if body := mustCurl(t, "--max-time", "10", "--cacert", g.caFile, url+"/"); body != "over quic\n" {
		t.Errorf("body through a QUIC tunnel = %q", body)
	}
	var got []string
	if !poll(10*time.Second, func() bool { got = g.transports(t, "q"); return allAre(got, "quic", 2) }) {
		t.Errorf("sessions' transports %v, want 2 quic", got)
	}
	// A bigger body, both ways.
	big := strings.Repeat("x", 3<<20)
	echoURL := startBackend(t, http.HandlerFunc(echoHandler))
	_, url2 := g.expose(t, "--transport", "quic", "--name", "qecho", echoURL)
	file := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(file, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	r := curl(t, "--max-time", "20", "--cacert", g.caFile, "--data-binary", "@"+file, url2+"/up")
	if r.code != 0 || decodeEcho(t, r.stdout).BodyLen != int64(len(big)) {
		t.Errorf("3 MiB POST through a QUIC tunnel: exit %d, %s %.200s", r.code, r.stderr, r.stdout)
	}
}

// TestTransportAutoFallback: with UDP blocked (the gateway has nothing on
// its UDP port), an agent on --transport auto falls back to TCP and serves;
// with UDP open on a clean link it keeps TCP, the faster here.
func TestTransportAutoFallback(t *testing.T) {
	t.Parallel()
	g := startGateway(t, "--http3=false")
	backend := textBackend(t, "fallback\n")
	start := time.Now()
	_, url := g.expose(t, "--transport", "auto", "--name", "fb", backend)
	t.Logf("auto with UDP blocked served after %v", time.Since(start).Round(time.Millisecond))
	if body := mustCurl(t, "--max-time", "10", "--cacert", g.caFile, url+"/"); body != "fallback\n" {
		t.Errorf("body = %q", body)
	}
	var got []string
	if !poll(10*time.Second, func() bool { got = g.transports(t, "fb"); return allAre(got, "tcp", 2) }) {
		t.Errorf("sessions' transports %v, want 2 tcp", got)
	}

	g2 := startGateway(t)
	_, url2 := g2.expose(t, "--transport", "auto", "--name", "fb", backend)
	if body := mustCurl(t, "--max-time", "10", "--cacert", g2.caFile, url2+"/"); body != "fallback\n" {
		t.Errorf("body = %q", body)
	}
	if !poll(10*time.Second, func() bool { got = g2.transports(t, "fb"); return allAre(got, "tcp", 2) }) {
		t.Errorf("auto on a clean link: transports %v, want 2 tcp (faster here, see bench/README.md)", got)
	}
}
