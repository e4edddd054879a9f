package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// TestPortFlagErrors: bad usage of the port commands and of the service
// flags for tcp and udp exits 2 naming the flag or argument, before any API
// call (nothing listens at the API address).
func TestPortFlagErrors(t *testing.T) {
	noAPI := []string{"--api-addr", "127.0.0.1:1", "--token", "x"}
	tests := []struct {
		args     []string
		contains string
	}{
		{[]string{"port", "add", "sctp", "--service", "db"}, `PROTO: "sctp" not accepted; use tcp or udp`},
		{[]string{"port", "add", "tcp"}, "--service: name the service the port forwards to, or give --sni (tcp only)"},
		{[]string{"port", "add", "udp", "--sni"}, "--sni: only a tcp port can be an SNI port, not udp"},
		{[]string{"port", "add", "tcp", "--sni", "--service", "db"}, "--sni and --service"},
		{[]string{"port", "add", "tcp", "--service", "Bad_Name"}, `--service: invalid name "Bad_Name"`},
		{[]string{"port", "add", "tcp", "--service", "db", "--port", "70000"}, "--port: 70000 not accepted"},
		{[]string{"port", "add", "tcp", "--service", "db", "--port", "x"}, `invalid argument "x" for "--port"`},
		{[]string{"port", "add"}, "accepts 1 arg"},
		{[]string{"port", "list", "x"}, "unknown command"},
		{[]string{"port", "remove"}, "accepts between 1 and 2 arg"},
		{[]string{"port", "remove", "tcp"}, `PORT: "tcp"; use PROTO/NUMBER such as tcp/20000, or PROTO NUMBER`},
		{[]string{"port", "remove", "sctp/20000"}, `PROTO: "sctp" not accepted`},
		{[]string{"port", "remove", "tcp/x"}, `NUMBER: "x" not accepted; use 1-65535`},
		{[]string{"port", "remove", "udp", "0"}, `NUMBER: "0" not accepted`},
		{[]string{"service", "add", "db", "--protocol", "tcp", "--proxy-protocol", "3"}, "--proxy-protocol: 3 not accepted; use 1 or 2 (0: none)"},
		{[]string{"service", "add", "db", "--protocol", "udp", "--proxy-protocol", "1"}, "--proxy-protocol: not available for udp services"},
		{[]string{"service", "add", "db", "--port", "20000"}, "--port: only tcp and udp services have a public port; give --protocol tcp or udp (not http)"},
		{[]string{"service", "add", "db", "--protocol", "tcp", "--port", "-1"}, "--port: -1 not accepted"},
		{[]string{"service", "add", "db", "--protocol", "tcp", "--upstream", "udp://10.0.0.1:53"}, `--upstream: upstream URL "udp://10.0.0.1:53"`},
		{[]string{"service", "set", "db", "--port", "20000"}, "unknown flag: --port"},
		{[]string{"service", "set", "db", "--proxy-protocol", "-1"}, "--proxy-protocol: -1 not accepted"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, stderr, code := execute(t, append(tt.args, noAPI...)...)
			if code != 2 || !strings.Contains(stderr, tt.contains) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.contains)
			}
			if strings.Contains(stderr, "reach the gateway API") {
				t.Errorf("the API was called: %s", stderr)
			}
		})
	}
}

// portAPIServer runs the admin API in-process over loopback with public
// ports 20000-20009 (opened by a stub that only announces them as
// gw.example:N), direct upstreams allowed, and tenants acme and beta.
func portAPIServer(t *testing.T) (addr, acme, beta string, st store.Store) {
	t.Helper()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	announce := func(n int) string { return "gw.example:" + strconv.Itoa(n) }
	srv := &api.Server{
		Store: b, Table: route.NewTable(nil), AdminToken: "admin-secret",
		Info:          api.GatewayInfo{Domain: "localhost", HTTPSAddr: "127.0.0.1:8443"},
		CheckUpstream: func(model.ParsedUpstream) error { return nil },
		PortRange:     model.PortRange{First: 20000, Last: 20009},
		OpenPort:      func(p model.Port) (string, error) { return announce(p.Number), nil },
		PortAddr:      announce,
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	var toks []string
	for _, name := range []string{"acme", "beta"} {
		tok := model.NewToken()
		if err := store.CreateTenant(context.Background(), b, model.Tenant{Name: name, TokenHash: model.HashToken(tok), Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	return ts.URL, toks[0], toks[1], b
}

func TestPortCommands(t *testing.T) {
	addr, acme, beta, st := portAPIServer(t)
	admin := []string{"--api-addr", addr, "--token", "admin-secret"}
	asAcme := []string{"--api-addr", addr, "--token", acme}
	asBeta := []string{"--api-addr", addr, "--token", beta}
	run := func(cl []string, args ...string) (string, string, int) {
		t.Helper()
		return execute(t, append(args, cl...)...)
	}
	ports := func() []string {
		t.Helper()
		ps, err := store.ListPorts(context.Background(), st)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}

	// service add of a tcp or udp service prints its HOST:PORT only.
	out, errOut, code := run(asAcme, "service", "add", "db", "--protocol", "tcp", "--port", "20005", "--proxy-protocol", "2", "--upstream", "tcp://[2001:db8::20]:5432")
	if code != 0 || out != "gw.example:20005\n" {
		t.Fatalf("service add tcp: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(admin, "service", "add", "resolver", "--protocol", "udp", "--tenant", "acme")
	if code != 0 || !strings.HasPrefix(out, "gw.example:200") || strings.Count(out, "\n") != 1 {
		t.Fatalf("service add udp: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code = run(asAcme, "service", "add", "pass", "--protocol", "tls"); code != 0 {
		t.Fatalf("service add tls: exit %d, %q", code, errOut)
	}
	if sv, _, err := store.GetService(context.Background(), st, "db"); err != nil || sv.ProxyProtocol != 2 || sv.Protocol != model.ProtoTCP {
		t.Fatalf("stored db %+v, %v", sv, err)
	}
	// The port asked for is taken: the API's answer, exit 1, and no service.
	_, errOut, code = run(asBeta, "service", "add", "bdb", "--protocol", "tcp", "--port", "20005")
	if code != 1 || !strings.Contains(errOut, "port taken") || !strings.Contains(errOut, "HTTP 409") {
		t.Errorf("service add on a taken port: exit %d, %q", code, errOut)
	}

	// service show lists the ports and the PROXY protocol version.
	out, errOut, code = run(asAcme, "service", "show", "db")
	for _, s := range []string{"gw.example:20005", "tcp/20005", "proxy protocol", "v2"} {
		if code != 0 || !strings.Contains(out, s) {
			t.Errorf("show: exit %d, stdout lacks %q:\n%s%s", code, s, out, errOut)
		}
	}
	// service set: --proxy-protocol changes; the protocol cannot leave tcp.
	if _, errOut, code = run(asAcme, "service", "set", "db", "--proxy-protocol", "1"); code != 0 {
		t.Errorf("set --proxy-protocol: exit %d, %q", code, errOut)
	}
	if sv, _, _ := store.GetService(context.Background(), st, "db"); sv.ProxyProtocol != 1 || len(sv.Upstreams) != 1 {
		t.Errorf("after set: %+v", sv)
	}
	for _, args := range [][]string{
		{"--protocol", "tls", "--upstream", "tls://[2001:db8::20]:443"},
		{"--protocol", "http"}, // its tcp:// upstream would not fit either; the protocol rule is named
	} {
		_, errOut, code = run(asAcme, append([]string{"service", "set", "db"}, args...)...)
		if code != 2 || !strings.Contains(errOut, "--protocol: a tcp service cannot become "+args[1]) || !strings.Contains(errOut, "remove the service and add it again") {
			t.Errorf("set %v: exit %d, %q", args, code, errOut)
		}
	}

	// port add: for a service, an SNI port; prints HOST:PORT only.
	out, errOut, code = run(asAcme, "port", "add", "tcp", "--service", "db", "--port", "20006")
	if code != 0 || out != "gw.example:20006\n" {
		t.Fatalf("port add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(admin, "port", "add", "tcp", "--sni", "--port", "20007", "--tenant", "acme")
	if code != 0 || out != "gw.example:20007\n" {
		t.Fatalf("port add --sni: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(asAcme, "port", "add", "tcp", "--service", "pass", "--json")
	var pd api.PortDetail
	if code != 0 || json.Unmarshal([]byte(out), &pd) != nil || pd.Service != "pass" || pd.Address != "gw.example:"+strconv.Itoa(pd.Number) {
		t.Fatalf("port add --json: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// API refusals: exit 1 with the API's message.
	_, errOut, code = run(admin, "port", "add", "tcp", "--sni")
	if code != 1 || !strings.Contains(errOut, "tenant: the admin token must name the tenant") {
		t.Errorf("admin port add without --tenant: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(asAcme, "port", "add", "udp", "--service", "db")
	if code != 1 || !strings.Contains(errOut, `a udp port cannot forward to service "db", a tcp service`) {
		t.Errorf("udp port for a tcp service: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(asBeta, "port", "add", "tcp", "--service", "db")
	if code != 1 || !strings.Contains(errOut, "belongs to another tenant") || !strings.Contains(errOut, "HTTP 403") {
		t.Errorf("port for another tenant's service: exit %d, %q", code, errOut)
	}

	// port list: a table, scoped by token; --json.
	out, errOut, code = run(admin, "port", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 6 || strings.Join(strings.Fields(lines[0]), " ") != "PORT SERVICE TENANT ADDRESS" {
		t.Fatalf("port list: exit %d, %q\n%s", code, errOut, out)
	}
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "tcp/20005 ") })
	if f := strings.Fields(lines[max(i, 0)]); i < 0 || len(f) != 4 || f[1] != "db" || f[2] != "acme" || f[3] != "gw.example:20005" {
		t.Errorf("port list row of tcp/20005 (line %d):\n%s", i, out)
	}
	if !strings.Contains(out, "tcp/20007  (sni: tls services)") {
		t.Errorf("port list lacks the SNI port:\n%s", out)
	}
	out, _, code = run(asBeta, "port", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 1 {
		t.Errorf("beta's port list: exit %d\n%s", code, out)
	}
	out, _, code = run(asAcme, "port", "list", "--json")
	var list []api.PortDetail
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 5 {
		t.Errorf("port list --json: exit %d\n%s", code, out)
	}

	// port remove: PROTO/NUMBER or PROTO NUMBER.
	if _, errOut, code = run(asAcme, "port", "remove", "tcp/20006"); code != 0 || !strings.Contains(errOut, "port tcp/20006 removed") {
		t.Errorf("remove tcp/20006: exit %d, %q", code, errOut)
	}
	if _, errOut, code = run(admin, "port", "remove", "tcp", "20007"); code != 0 {
		t.Errorf("remove tcp 20007: exit %d, %q", code, errOut)
	}
	if got := ports(); slices.Contains(got, "tcp/20006") || slices.Contains(got, "tcp/20007") || !slices.Contains(got, "tcp/20005") {
		t.Errorf("after remove: %v", got)
	}
	_, errOut, code = run(asAcme, "port", "remove", "tcp/20006")
	if code != 1 || !strings.Contains(errOut, "port tcp/20006 is not allocated") || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("second remove: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(asBeta, "port", "remove", "tcp/20005")
	if code != 1 || !strings.Contains(errOut, "belongs to another tenant") {
		t.Errorf("remove of another tenant's port: exit %d, %q", code, errOut)
	}

	// service remove releases its ports.
	if _, errOut, code = run(asAcme, "service", "remove", "db"); code != 0 {
		t.Fatalf("service remove: exit %d, %q", code, errOut)
	}
	if got := ports(); slices.Contains(got, "tcp/20005") || len(got) != 2 {
		t.Errorf("after service remove: %v", got)
	}
}
