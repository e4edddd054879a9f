package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestGatewayBanner: a gateway started with port 0 everywhere prints its
// chosen addresses, the CA file, the key fingerprint and a ready-to-paste
// expose line, and its API answers /healthz.
func TestGatewayBanner(t *testing.T) {
	t.Parallel()
	g := startGateway(t)

	if want := filepath.Join(g.dataDir, "ca.pem"); g.caFile != want {
		t.Errorf("banner ca = %q, want %q", g.caFile, want)
	}
	if st, err := os.Stat(g.caFile); err != nil || st.Size() == 0 {
		t.Errorf("CA file from the banner: %v", err)
	} else {
		caPool(t, g.caFile) // holds a PEM certificate
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(g.fingerprint) {
		t.Errorf("banner fingerprint = %q, want sha256:<64 hex>", g.fingerprint)
	}
	for _, a := range []string{g.httpsAddr, g.httpAddr, g.apiAddr} {
		if !regexp.MustCompile(`^127\.0\.0\.1:[1-9]\d*$`).MatchString(a) {
			t.Errorf("banner address %q: want 127.0.0.1:PORT with the chosen port", a)
		}
	}
	wantExpose := "webgw expose --gateway 127.0.0.1:" + g.httpsPort() + " --ca " + g.caFile + " "
	if !strings.HasPrefix(g.exposeLine, wantExpose) {
		t.Errorf("banner expose line = %q, want it to start with %q", g.exposeLine, wantExpose)
	}
	if body := mustCurl(t, "http://"+g.apiAddr+"/healthz"); strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz = %q, want ok", body)
	}
}

// TestNamesRedirectAndUnknown: --name gives the asked name; plain HTTP
// redirects to HTTPS with a 308 keeping path and query; an unknown name gets a
// 404 page; a name outside the gateway domain fails the TLS handshake.
func TestNamesRedirectAndUnknown(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	_, url := g.expose(t, "--name", "shop", textBackend(t, "shop says hi\n"))
	if want := "https://shop.localhost:" + g.httpsPort(); url != want {
		t.Fatalf("expose --name shop printed %q, want %q", url, want)
	}
	if body := mustCurl(t, "--cacert", g.caFile, url+"/"); body != "shop says hi\n" {
		t.Errorf("GET %s = %q", url, body)
	}

	t.Run("redirect", func(t *testing.T) {
		out := mustCurl(t, "-i", "http://shop.localhost:"+portOf(g.httpAddr)+"/x?y=1")
		if !regexp.MustCompile(`^HTTP/1\.1 308 `).MatchString(out) {
			t.Errorf("plain http status line: want 308, got:\n%s", out)
		}
		want := "https://shop.localhost:" + g.httpsPort() + "/x?y=1"
		if m := regexp.MustCompile(`(?mi)^location: (\S+)\r?$`).FindStringSubmatch(out); m == nil || m[1] != want {
			t.Errorf("Location: want %q, got response:\n%s", want, out)
		}
	})

	t.Run("unknown-name-404", func(t *testing.T) {
		out := mustCurl(t, "-i", "--cacert", g.caFile, "https://nosuchname.localhost:"+g.httpsPort()+"/")
		if !regexp.MustCompile(`^HTTP/\S+ 404`).MatchString(out) {
			t.Errorf("unknown name: want 404, got:\n%s", out)
		}
		if !regexp.MustCompile(`(?mi)^content-type: text/html`).MatchString(out) || !strings.Contains(out, "404") {
			t.Errorf("unknown name: want an HTML 404 page, got:\n%s", out)
		}
	})

	t.Run("foreign-sni", func(t *testing.T) {
		r := curl(t, "--cacert", g.caFile, "--resolve", "other.example:"+g.httpsPort()+":127.0.0.1",
			"https://other.example:"+g.httpsPort()+"/")
		if r.code != 35 {
			t.Errorf("SNI outside the domain: want curl exit 35 (TLS handshake failed), got %d: %s%s", r.code, r.stderr, r.stdout)
		}
	})
}

// TestBadUsage: bad flags, values and config keys exit 2 with a message
// naming what is wrong.
func TestBadUsage(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "gw.yaml")
	if err := os.WriteFile(cfg, []byte("domain: localhost\ncolour: blue\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Every gateway gets free ports and its own data dir, so a case the
	// product wrongly accepts cannot touch the defaults; it is stopped by the
	// timeout of run and fails.
	safe := func(extra ...string) []string {
		args := []string{"gateway", "--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0",
			"--https-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"}
		return append(args, extra...)
	}
	cases := []struct {
		name string
		args []string
		want string // regexp the message must match
	}{
		{"bad-domain", safe("--domain", "bad domain"), `domain.*bad domain`},
		{"unknown-flag", safe("--no-such-flag"), `no-such-flag`},
		{"bad-https-addr", safe("--https-addr", "nonsense"), `https[-_]addr.*nonsense`},
		{"expose-ftp", []string{"expose", "--gateway", freeAddr(t), "ftp://x:1"}, `ftp`},
		{"config-unknown-key", safe("--config", cfg), `colour`},
		{"unknown-command", []string{"bogus"}, `unknown command "bogus"`},
		{"unknown-subcommand", []string{"tenant", "remov", "x"}, `unknown command "remov"`},
		{"missing-subcommand", []string{"tenant"}, `subcommand`},
		{"bad-log-level", []string{"expose", "--log-level", "loud", "--gateway", freeAddr(t), "http://127.0.0.1:1"}, `log-level.*loud`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, code := run(t, 10*time.Second, c.args...)
			if code != 2 {
				t.Errorf("webgw %s: exit %d, want 2\nstdout:\n%s\nstderr:\n%s", strings.Join(c.args, " "), code, out, errOut)
			}
			if !regexp.MustCompile(c.want).MatchString(errOut) {
				t.Errorf("webgw %s: stderr %q does not name the problem (want match %q)", strings.Join(c.args, " "), errOut, c.want)
			}
		})
	}
}
