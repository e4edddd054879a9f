package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestAdminCLI: the tenant, service and status commands and /metrics show
// what is running; bad tenant names are refused with the rule.
func TestAdminCLI(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	adm := func(args ...string) string {
		t.Helper()
		return mustRun(t, append(args, g.admin()...)...)
	}
	tok := g.addTenant(t, "acme")
	if !strings.HasPrefix(tok, "wgw_") {
		t.Errorf("tenant token %q does not start with wgw_", tok)
	}
	if out := adm("tenant", "list"); !regexp.MustCompile(`(?m)^acme\s`).MatchString(out) {
		t.Errorf("tenant list has no acme row:\n%s", out)
	}

	_, url := g.expose(t, "--token", tok, "--name", "shopx", textBackend(t, "ok\n"))
	for range 3 {
		if code, _ := status(t, g.caFile, url); code != "200" {
			t.Fatalf("GET %s = %s", url, code)
		}
	}

	if out := adm("service", "list"); !regexp.MustCompile(`(?m)^shopx\s+acme\s`).MatchString(out) {
		t.Errorf("service list has no row for shopx of tenant acme:\n%s", out)
	}
	out := adm("status")
	if !regexp.MustCompile(`(?m)^SERVICE\s`).MatchString(out) || !regexp.MustCompile(`(?m)^shopx\s+acme\s`).MatchString(out) {
		t.Errorf("status has no services table with shopx:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^AGENT\s`).MatchString(out) || !regexp.MustCompile(`(?m)^\S+\s+acme\s+127\.0\.0\.1:\d+\s+shopx\s`).MatchString(out) {
		t.Errorf("status has no agents table with acme's agent serving shopx:\n%s", out)
	}

	metrics := mustCurl(t, "http://"+g.apiAddr+"/metrics")
	if !regexp.MustCompile(`(?m)^webgw_requests_total\{[^}]*service="shopx"[^}]*\} [1-9]`).MatchString(metrics) {
		t.Errorf("/metrics has no webgw_requests_total sample for service shopx:\n%s", grepLines(metrics, "webgw_"))
	}
	if !regexp.MustCompile(`(?m)^webgw_connected_agents(\{[^}]*\})? [1-9]`).MatchString(metrics) {
		t.Errorf("/metrics has no webgw_connected_agents sample counting the agent:\n%s", grepLines(metrics, "webgw_"))
	}

	stdout, stderr, code := run(t, 20*time.Second, append([]string{"tenant", "add", "Bad_Name"}, g.admin()...)...)
	if code != 2 {
		t.Errorf("tenant add Bad_Name: exit %d, want 2\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "Bad_Name") || !regexp.MustCompile(`a-z`).MatchString(stderr) {
		t.Errorf("tenant add Bad_Name: stderr does not name the name and the rule (a-z, 0-9, '-'):\n%s", stderr)
	}

	adm("tenant", "remove", "acme")
	if out := adm("tenant", "list"); regexp.MustCompile(`(?m)^acme\s`).MatchString(out) {
		t.Errorf("tenant list still shows acme after tenant remove:\n%s", out)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
