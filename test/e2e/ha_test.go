package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// statusAgent is one agent session as `webgw status --json` lists it.
type statusAgent struct {
	ID        string   `json:"id"`
	Services  []string `json:"services"`
	Draining  bool     `json:"draining"`
	Transport string   `json:"transport"`
}

// sessionsOf returns the agent sessions that serve service, per `webgw status --json`.
func (g *gateway) sessionsOf(t testing.TB, service string) []statusAgent {
	t.Helper()
	out, errOut, code := run(t, 20*time.Second, append([]string{"status", "--json"}, g.admin()...)...)
	if code != 0 {
		t.Fatalf("webgw status --json: exit %d: %s", code, errOut)
	}
	var st struct {
		Agents []statusAgent `json:"agents"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("webgw status --json: %v\n%s", err, out)
	}
	var got []statusAgent
	for _, a := range st.Agents {
		if slices.Contains(a.Services, service) {
			got = append(got, a)
		}
	}
	return got
}

// waitSessions waits until service has n sessions, all of one agent id, and returns that id.
func (g *gateway) waitSessions(t testing.TB, service string, n int) string {
	t.Helper()
	var got []statusAgent
	ok := poll(20*time.Second, func() bool {
		got = g.sessionsOf(t, service)
		if len(got) != n {
			return false
		}
		for _, a := range got {
			if a.ID != got[0].ID || a.Draining {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("%s: sessions %+v, want %d live sessions of one agent", service, got, n)
	}
	return got[0].ID
}

// wsEcho starts a WebSocket echo backend.
func wsEcho(t testing.TB) string {
	up := websocket.Upgrader{}
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			w.Write([]byte("ha ok\n"))
			return
		}
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
}

func (g *gateway) dialWS(t testing.TB, url string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{
		TLSClientConfig: &tls.Config{RootCAs: caPool(t, g.caFile)},
		NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", g.httpsAddr)
		},
		HandshakeTimeout: 10 * time.Second,
	}
	c, _, err := d.Dial("wss://"+strings.TrimPrefix(url, "https://")+"/ws", nil)
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	return c
}

func wsRoundTrip(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("websocket write %q: %v", msg, err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
		t.Fatalf("websocket echo of %q: %q %v", msg, got, err)
	}
}

// TestHAConnections: an agent with --connections 2 holds two sessions at
// the gateway; after a gateway restart it comes back with both; on SIGTERM
// both drain together, a WebSocket keeps running until it ends, and the
// agent exits 0.
func TestHAConnections(t *testing.T) {
	t.Parallel()
	addrs := freeAddrs(t, 3)
	args := []string{"gateway", "--https-addr", addrs[0], "--http-addr", addrs[1], "--api-addr", addrs[2], "--data-dir", t.TempDir()}
	g := startGatewayArgs(t, args...)
	tok := g.addTenant(t, "acme")
	a, url := g.expose(t, "--token", tok, "--name", "ha", "--connections", "2", "--drain-timeout", "30s", wsEcho(t))
	id := g.waitSessions(t, "ha", 2)
	if code, body := status(t, g.caFile, url); code != "200" || body != "ha ok\n" {
		t.Fatalf("GET %s = %s %q", url, code, body)
	}

	g.signal(t, syscall.SIGTERM)
	if code := g.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("gateway exit code after SIGTERM = %d, want 0", code)
	}
	g = startGatewayArgs(t, args...)
	if got := g.waitSessions(t, "ha", 2); got != id {
		t.Errorf("after the gateway restart the sessions are agent %s's, want the same agent %s", got, id)
	}
	waitFor(t, 10*time.Second, url+" to serve again", func() bool {
		code, body := status(t, g.caFile, url)
		return code == "200" && body == "ha ok\n"
	})
	if n := strings.Count(a.stderr.String(), "tunnel down, reconnecting"); n < 2 {
		t.Errorf("the agent logged %d reconnects, want one per connection at least:\n%s", n, tail(a.stderr.String(), 3000))
	}
	if !strings.Contains(a.stderr.String(), "reason=") {
		t.Errorf("the agent's reconnect logs give no reason:\n%s", tail(a.stderr.String(), 3000))
	}

	ws := g.dialWS(t, url)
	defer ws.Close()
	wsRoundTrip(t, ws, "before the drain")
	a.signal(t, syscall.SIGTERM)
	// Both connections drain; the one without the WebSocket may end at
	// once (its idle pooled streams are closed by the gateway).
	waitFor(t, 10*time.Second, "both connections to drain", func() bool {
		return strings.Count(a.stderr.String(), "msg=draining") == 2
	})
	var sess []statusAgent
	if !poll(10*time.Second, func() bool {
		sess = g.sessionsOf(t, "ha")
		for _, s := range sess {
			if !s.Draining {
				return false
			}
		}
		return len(sess) >= 1
	}) {
		t.Fatalf("sessions %+v, want the WebSocket's session there and draining", sess)
	}
	wsRoundTrip(t, ws, "during the drain")
	if !a.running() {
		t.Fatalf("the agent exited (%v) with a WebSocket open", a.state)
	}
	closed := time.Now()
	ws.Close()
	if code := a.wait(t, 15*time.Second); code != 0 {
		t.Errorf("agent exit code after SIGTERM = %d, want 0", code)
	}
	if d := time.Since(closed); d > 10*time.Second {
		t.Errorf("the agent exited %v after its last stream ended, want promptly", d)
	}
}

// TestHAExposeTwoGateways: `expose --gateway A --gateway B` serves through
// both, and B keeps serving when A dies.
func TestHAExposeTwoGateways(t *testing.T) {
	t.Parallel()
	ga, gb := startGateway(t), startGateway(t)
	// One CA file for both gateways: a PEM bundle of the two local CAs.
	var bundle []byte
	for _, f := range []string{ga.caFile, gb.caFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, b...)
	}
	caFile := filepath.Join(t.TempDir(), "cas.pem")
	if err := os.WriteFile(caFile, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	a := startProc(t, "expose", "expose", "--gateway", ga.httpsAddr, "--gateway", gb.httpsAddr, "--ca", caFile,
		"--name", "duo", textBackend(t, "duo ok\n"))
	waitURL(t, a)
	urlA := "https://duo.localhost:" + ga.httpsPort()
	urlB := "https://duo.localhost:" + gb.httpsPort()
	idA := ga.waitSessions(t, "duo", 2)
	idB := gb.waitSessions(t, "duo", 2)
	if idA == idB {
		t.Errorf("both gateways see agent id %s; want one id per gateway entry", idA)
	}
	for _, u := range []struct {
		g   *gateway
		url string
	}{{ga, urlA}, {gb, urlB}} {
		if code, body := status(t, u.g.caFile, u.url); code != "200" || body != "duo ok\n" {
			t.Errorf("GET %s = %s %q", u.url, code, body)
		}
	}

	ga.kill(t)
	for range 5 {
		if code, body := status(t, gb.caFile, urlB); code != "200" || body != "duo ok\n" {
			t.Errorf("with gateway A dead, GET %s = %s %q", urlB, code, body)
		}
	}
	if !a.running() {
		t.Fatalf("the agent exited (%v) when one of its gateways died", a.state)
	}
	a.signal(t, syscall.SIGTERM)
	if code := a.wait(t, 15*time.Second); code != 0 {
		t.Errorf("agent exit code after SIGTERM = %d, want 0", code)
	}
}

// TestHAFlags: bad values of the new flags and keys exit 2 naming them.
func TestHAFlags(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"expose", "--connections", "17", "http://127.0.0.1:1"}, "--connections: 17 not accepted; use 1-16"},
		{[]string{"expose", "--connections", "0", "http://127.0.0.1:1"}, "--connections"},
		{[]string{"expose", "--weight", "1001", "http://127.0.0.1:1"}, "--weight: 1001 not accepted; use 1-1000"},
		{[]string{"expose", "--transport", "udp", "http://127.0.0.1:1"}, `--transport: "udp" not accepted; use auto, tcp or quic`},
		{[]string{"expose", "--gateway", "127.0.0.1:1", "--gateway", "nope", "http://127.0.0.1:1"}, `--gateway: "nope" is not HOST:PORT`},
		{[]string{"agent", "--config", cfg}, "connections: 20 not accepted"},
	} {
		if err := os.WriteFile(cfg, []byte("connections: 20\ngateways: [{addr: '127.0.0.1:1'}]\nservices: [{target: 'http://127.0.0.1:1'}]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := run(t, 20*time.Second, tt.args...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("webgw %s: exit %d, stderr %q; want exit 2 naming %q", strings.Join(tt.args, " "), code, errOut, tt.want)
		}
	}
}
