package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// noAgentEnv clears the environment variables expose reads, so the
// developer's own settings do not leak into a test.
func noAgentEnv(t *testing.T) {
	for _, env := range []string{"WEBGW_GATEWAY", "WEBGW_CA", "WEBGW_TOKEN", "WEBGW_DATA_DIR", "WEBGW_FINGERPRINT"} {
		t.Setenv(env, "")
	}
}

func TestExposeUsage(t *testing.T) {
	noAgentEnv(t)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--port", "2222", "http://127.0.0.1:3000"}, "--port: only for tcp:// and udp:// targets, not http://127.0.0.1:3000"},
		{[]string{"--port", "443", "https://127.0.0.1:8443"}, "--port: only for tcp:// and udp://"},
		{[]string{"--port", "9000", "h2c://127.0.0.1:50051"}, "--port: only for tcp:// and udp://"},
		{[]string{"--port", "0", "tcp://127.0.0.1:22"}, "--port: 0 not accepted; use 1-65535"},
		{[]string{"--port", "65536", "udp://127.0.0.1:53"}, "--port: 65536 not accepted; use 1-65535"},
		{[]string{"--port", "-1", "tcp://127.0.0.1:22"}, "--port: -1 not accepted"},
		{[]string{"--port", "ssh", "tcp://127.0.0.1:22"}, `"ssh" for "--port"`},
		{[]string{"--acme-http", "http://127.0.0.1:80", "http://127.0.0.1:3000"}, "--acme-http: \"http://127.0.0.1:80\"; want http://HOST:PORT, for an https:// TARGET only"},
		{[]string{"--acme-http", "udp://127.0.0.1:80", "https://127.0.0.1:8443"}, "--acme-http:"},
		{[]string{"--proxy-protocol", "3", "tcp://127.0.0.1:22"}, `--proxy-protocol: "3" not accepted; use 1 or 2`},
		{[]string{"--proxy-protocol", "v2", "udp://127.0.0.1:53"}, "--proxy-protocol: not available for udp://"},
		{[]string{"tcp://127.0.0.1"}, "TARGET: target \"tcp://127.0.0.1\": no port; want tcp://HOST:PORT"},
		{[]string{"udp://127.0.0.1:0"}, `port "0" not accepted`},
		{[]string{"ftp://127.0.0.1:21"}, "tcp://HOST:PORT or udp://HOST:PORT"},
		{[]string{"--port", "2222", "--weight", "0", "tcp://127.0.0.1:22"}, "--weight"},
		{[]string{"--max-gateways", "-1", "http://127.0.0.1:3000"}, "--max-gateways: -1 not accepted; use 1 or more (0 means all"},
		{[]string{"--max-gateways", "all", "http://127.0.0.1:3000"}, `"all" for "--max-gateways"`},
	}
	for _, tt := range tests {
		args := append([]string{"expose", "--gateway", "127.0.0.1:1"}, tt.args...)
		stdout, stderr, code := execute(t, args...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("webgw %s: exit %d, stderr %q; want 2 and %q", strings.Join(args, " "), code, stderr, tt.want)
		}
		if stdout != "" {
			t.Errorf("webgw %s: stdout %q, want nothing", strings.Join(args, " "), stdout)
		}
	}
}

func TestAgentMaxGatewaysUsage(t *testing.T) {
	t.Setenv("WEBGW_AGENT_CONFIG", "")
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	const base = "gateways: [{addr: '127.0.0.1:1'}]\nservices: [{target: 'http://127.0.0.1:3000'}]\n"
	for path, body := range map[string]string{good: base, bad: base + "max_gateways: -3\n"} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--config", good, "--max-gateways", "-1"}, "--max-gateways: -1 not accepted; use 1 or more"},
		{[]string{"agent", "--config", bad}, "max_gateways: -3 not accepted"},
	}
	for _, tt := range tests {
		stdout, stderr, code := execute(t, tt.args...)
		if code != 2 || !strings.Contains(stderr, tt.want) || stdout != "" {
			t.Errorf("webgw %s: exit %d, stdout %q, stderr %q; want 2, nothing, and %q", strings.Join(tt.args, " "), code, stdout, stderr, tt.want)
		}
	}
}

// lineWriter hands each line written to it to a channel.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte // guarded by mu
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines <- string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// grantingGateway listens for agents with TLS, grants every service asked
// for (tcp and udp on 127.0.0.1 at the port asked, else 40000), and sends
// each hello on the channel. It returns its address and CA file.
func grantingGateway(t *testing.T) (addr, caFile string, hellos <-chan *tunnel.Hello) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := certs.LoadOrCreateCA(t.Context(), st, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerIdentity(t.Context(), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan *tunnel.Hello, 16)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		sesss []*tunnel.Session // guarded by mu
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, s := range sesss {
			s.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sess, err := tunnel.Server(c, nil)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			sesss = append(sesss, sess)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctrl, err := sess.Accept()
				if err != nil {
					return
				}
				m, err := tunnel.ReadMessage(ctrl)
				if err != nil || m.Type != tunnel.MsgHello {
					sess.Close()
					return
				}
				w := &tunnel.Welcome{}
				for _, s := range m.Hello.Services {
					gr := tunnel.ServiceGrant{Name: s.Name, Protocol: s.Protocol, URL: "https://" + s.Name + ".localhost"}
					if s.Protocol == "tcp" || s.Protocol == "udp" {
						gr.Port = s.Port
						if gr.Port == 0 {
							gr.Port = 40000
						}
						gr.URL = fmt.Sprintf("127.0.0.1:%d", gr.Port)
					}
					w.Services = append(w.Services, gr)
				}
				tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgWelcome, Welcome: w})
				out <- m.Hello
			}()
		}
	}()
	return ln.Addr().String(), caFile, out
}

// expose prints the grant's URL as its one stdout line: a URL for http, the
// public HOST:PORT for tcp and udp.
func TestExposePrintsAddress(t *testing.T) {
	noAgentEnv(t)
	addr, caFile, hellos := grantingGateway(t)
	tests := []struct {
		args     []string
		proto    string
		port     int
		wantLine string
	}{
		{[]string{"http://127.0.0.1:3000"}, "http", 0, "https://web.localhost"},
		{[]string{"--port", "2222", "tcp://127.0.0.1:22"}, "tcp", 2222, "127.0.0.1:2222"},
		{[]string{"udp://127.0.0.1:53"}, "udp", 0, "127.0.0.1:40000"},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithCancel(t.Context())
		root := newRoot()
		out := &lineWriter{lines: make(chan string, 4)}
		root.SetOut(out)
		root.SetErr(out)
		root.SetArgs(append([]string{"expose", "--gateway", addr, "--ca", caFile, "--name", "web",
			"--connections", "1", "--transport", "tcp", "--log-level", "error"}, tt.args...))
		done := make(chan error, 1)
		go func() { done <- root.ExecuteContext(ctx) }()

		select {
		case h := <-hellos:
			if len(h.Services) != 1 || h.Services[0].Protocol != tt.proto || h.Services[0].Port != tt.port {
				t.Errorf("%v: hello services %+v, want protocol %s port %d", tt.args, h.Services, tt.proto, tt.port)
			}
		case err := <-done:
			t.Fatalf("%v: expose ended before its hello: %v", tt.args, err)
		case <-time.After(15 * time.Second):
			t.Fatalf("%v: no hello", tt.args)
		}
		select {
		case line := <-out.lines:
			if line != tt.wantLine {
				t.Errorf("%v: printed %q, want %q", tt.args, line, tt.wantLine)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("%v: printed nothing", tt.args)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%v: expose ended with %v, want nil after cancel", tt.args, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%v: expose did not stop after cancel", tt.args)
		}
	}
}
