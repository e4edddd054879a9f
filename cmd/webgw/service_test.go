package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// exitCode is the exit status run gives for err.
func exitCode(err error) int {
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command "):
		return 2
	}
	return 1
}

// execute runs the CLI in-process and returns its stdout, stderr and exit code.
func execute(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	if err != nil {
		errb.WriteString("webgw: " + err.Error() + "\n")
	}
	return out.String(), errb.String(), exitCode(err)
}

func TestParseUpstreamFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    model.Upstream
		wantErr string
	}{
		{in: "http://[2001:db8::10]:8080", want: model.Upstream{URL: "http://[2001:db8::10]:8080"}},
		{in: "http://10.0.0.1:80,weight=3", want: model.Upstream{URL: "http://10.0.0.1:80", Weight: 3}},
		{in: "https://app.internal:8443,insecure,server-name=app.example,weight=1000",
			want: model.Upstream{URL: "https://app.internal:8443", Weight: 1000, TLSInsecure: true, TLSServerName: "app.example"}},
		{in: " http://10.0.0.1:80 , weight=2 ", want: model.Upstream{URL: "http://10.0.0.1:80", Weight: 2}},
		{in: "", wantErr: "no URL"},
		{in: ",weight=2", wantErr: "no URL"},
		{in: "http://10.0.0.1:80,weight=0", wantErr: `weight "0" in "http://10.0.0.1:80,weight=0"; use 1-1000`},
		{in: "http://10.0.0.1:80,weight=1001", wantErr: "use 1-1000"},
		{in: "http://10.0.0.1:80,weight=x", wantErr: `weight "x"`},
		{in: "http://10.0.0.1:80,weight", wantErr: `option "weight" in`},
		{in: "http://10.0.0.1:80,insecure=yes", wantErr: `option "insecure=yes"`},
		{in: "http://10.0.0.1:80,server-name=", wantErr: `option "server-name="`},
		{in: "http://10.0.0.1:80,fast", wantErr: `option "fast" in "http://10.0.0.1:80,fast" not accepted; use weight=N, insecure or server-name=HOST`},
		{in: "http://10.0.0.1:80,", wantErr: `option ""`},
	}
	for _, tt := range tests {
		got, err := parseUpstreamFlag(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseUpstreamFlag(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseUpstreamFlag(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// TestServiceFlagErrors: bad flag values exit 2 naming the flag, before any
// API call (nothing listens at the API address).
func TestServiceFlagErrors(t *testing.T) {
	noAPI := []string{"--api-addr", "127.0.0.1:1", "--token", "x"}
	tests := []struct {
		args     []string
		contains string
	}{
		{[]string{"service", "add", "shop", "--lb", "fastest"}, `--lb: "fastest" not accepted; use round_robin, least_request or ip_hash`},
		{[]string{"service", "add", "shop", "--lb", ""}, `--lb: "" not accepted`},
		{[]string{"service", "add", "shop", "--protocol", "sctp"}, `--protocol: "sctp" not accepted; use http, h2c, tls, tcp or udp`},
		{[]string{"service", "add", "shop", "--health-type", "icmp"}, `--health-type: "icmp" not accepted; use http, tcp or none`},
		{[]string{"service", "add", "shop", "--health-type", "none", "--health-path", "/h"}, "do not combine it with --health-path"},
		{[]string{"service", "add", "shop", "--health-type", "tcp", "--health-path", "/h"}, "--health-path and --health-status apply to --health-type http only"},
		{[]string{"service", "add", "shop", "--health-path", "healthz"}, `--health-path: "healthz"; use an absolute path`},
		{[]string{"service", "add", "shop", "--health-status", "99"}, "--health-status: 99; use 100-599"},
		{[]string{"service", "add", "shop", "--health-interval", "5 parsecs"}, `"--health-interval"`},
		{[]string{"service", "add", "shop", "--health-interval", "1ms"}, "--health-interval: 1ms; use 100ms-1h"},
		{[]string{"service", "add", "shop", "--health-timeout", "2m"}, "--health-timeout: 2m0s; use 10ms-1m"},
		{[]string{"service", "add", "shop", "--healthy-threshold", "101"}, "--healthy-threshold: 101"},
		{[]string{"service", "add", "shop", "--unhealthy-threshold", "-1"}, "--unhealthy-threshold: -1"},
		{[]string{"service", "add", "shop", "--max-failures", "-2"}, "--max-failures: -2"},
		{[]string{"service", "add", "shop", "--cooldown", "2h"}, "--cooldown: 2h0m0s; use 100ms-1h"},
		{[]string{"service", "add", "shop", "--upstream", "tcp://10.0.0.1:80"}, `--upstream: upstream URL "tcp://10.0.0.1:80": scheme "tcp" not accepted for a http service`},
		{[]string{"service", "add", "shop", "--protocol", "h2c", "--upstream", "http://10.0.0.1:80"}, `--upstream: upstream URL "http://10.0.0.1:80": scheme "http" not accepted for a h2c service`},
		{[]string{"service", "add", "shop", "--upstream", "http://10.0.0.1:80,weight=5000"}, "--upstream: weight \"5000\""},
		{[]string{"service", "add", "shop", "--upstream", "http://10.0.0.1:80", "--upstream", "http://10.0.0.1:80"}, `--upstream: "http://10.0.0.1:80" is listed twice`},
		{[]string{"service", "add", "shop", "--upstream", "http://10.0.0.1:80/app"}, "--upstream: upstream URL"},
		{[]string{"service", "add", "Shop"}, `NAME: invalid name "Shop"`},
		{[]string{"service", "add", "admin"}, `NAME: invalid name "admin": reserved`},
		{[]string{"service", "add"}, "accepts 1 arg"},
		{[]string{"service", "add", "shop", "--weight", "2"}, "unknown flag: --weight"},
		{[]string{"service", "set", "shop"}, "service set: nothing to change; give at least one of --protocol"},
		{[]string{"service", "set", "shop", "--lb", "fastest"}, `--lb: "fastest" not accepted`},
		{[]string{"service", "set", "shop", "--upstream", "http://10.0.0.1:80", "--add-upstream", "http://10.0.0.2:80"}, "--upstream replaces the whole upstream list"},
		{[]string{"service", "set", "shop", "--add-upstream", "http://10.0.0.2:80,weight=-1"}, `--add-upstream: weight "-1"`},
		{[]string{"service", "set", "shop", "--tenant", "acme"}, "unknown flag: --tenant"},
		{[]string{"service", "show", "-x"}, "unknown shorthand flag"},
		{[]string{"service", "show", "Bad_Name"}, `NAME: invalid name "Bad_Name"`},
		{[]string{"service", "remove", "Bad_Name"}, `NAME: invalid name "Bad_Name"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args[1:], " "), func(t *testing.T) {
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

// apiServer runs the admin API in-process over loopback, with direct
// upstreams allowed in 2001:db8::/32 only, and tenant acme.
// wrap (nil: none) wraps its handler.
func apiServer(t *testing.T, wrap func(http.Handler, store.Store) http.Handler) (addr, acmeToken string, st store.Store) {
	t.Helper()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	allowed := netip.MustParsePrefix("2001:db8::/32")
	srv := &api.Server{
		Store: b, Table: route.NewTable(nil), AdminToken: "admin-secret",
		Info: api.GatewayInfo{Domain: "localhost", HTTPSAddr: "127.0.0.1:8443"},
		CheckUpstream: func(p model.ParsedUpstream) error {
			if !p.Addr.IsValid() || !allowed.Contains(p.Addr) {
				return fmt.Errorf("%s is not in the networks allowed by --upstream-allow (%s)", p.Host, allowed)
			}
			return nil
		},
	}
	h := srv.Handler()
	if wrap != nil {
		h = wrap(h, b)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	acmeToken = model.NewToken()
	if err := store.CreateTenant(context.Background(), b, model.Tenant{Name: "acme", TokenHash: model.HashToken(acmeToken), Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return ts.URL, acmeToken, b
}

func TestServiceCommands(t *testing.T) {
	addr, acme, st := apiServer(t, nil)
	admin := []string{"--api-addr", addr, "--token", "admin-secret"}
	asAcme := []string{"--api-addr", addr, "--token", acme}
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return execute(t, args...)
	}
	stored := func() model.Service {
		t.Helper()
		sv, _, err := store.GetService(context.Background(), st, "shop")
		if err != nil {
			t.Fatal(err)
		}
		return sv
	}

	// add: prints the public URL, and only that, on stdout.
	out, errOut, code := run(append([]string{"service", "add", "shop", "--tenant", "acme",
		"--upstream", "http://[2001:db8::10]:8080,weight=3", "--upstream", "https://[2001:db8::11]:8443,insecure,server-name=shop.internal",
		"--lb", "least_request", "--health-path", "/healthz", "--health-interval", "2s", "--max-failures", "3"}, admin...)...)
	if code != 0 || out != "https://shop.localhost:8443\n" {
		t.Fatalf("add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	want := model.Service{Name: "shop", Tenant: "acme", Protocol: model.ProtoHTTP, LB: model.LBLeastRequest,
		Upstreams: []model.Upstream{{URL: "http://[2001:db8::10]:8080", Weight: 3}, {URL: "https://[2001:db8::11]:8443", TLSInsecure: true, TLSServerName: "shop.internal"}},
		Health:    &model.HealthCheck{Path: "/healthz", Interval: model.Duration(2 * time.Second)},
		Passive:   &model.PassiveHealth{MaxFailures: 3},
	}
	got := stored()
	want.Created = got.Created
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("stored %+v\nwant   %+v", got, want)
	}

	// API errors: the API's message, exit 1.
	_, errOut, code = run(append([]string{"service", "add", "shop", "--tenant", "acme"}, admin...)...)
	if code != 1 || !strings.Contains(errOut, `service "shop" already exists`) || !strings.Contains(errOut, "HTTP 409") {
		t.Errorf("duplicate add: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(append([]string{"service", "add", "blog", "--upstream", "http://127.0.0.1:8080"}, asAcme...)...)
	if code != 1 || !strings.Contains(errOut, "upstreams[0].url: 127.0.0.1 is not in the networks allowed by --upstream-allow") {
		t.Errorf("refused upstream: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(append([]string{"service", "add", "blog"}, admin...)...)
	if code != 1 || !strings.Contains(errOut, "tenant: the admin token must name the tenant") {
		t.Errorf("admin add without --tenant: exit %d, %q", code, errOut)
	}
	// A tenant adds its own, agent-only; --json prints the answer.
	out, errOut, code = run(append([]string{"service", "add", "blog", "--protocol", "tls", "--json"}, asAcme...)...)
	var d api.ServiceDetail
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.Tenant != "acme" || d.Protocol != model.ProtoTLS {
		t.Errorf("tenant add --json: exit %d, %q %q", code, out, errOut)
	}

	// set: only the flags given change.
	_, errOut, code = run(append([]string{"service", "set", "shop", "--add-upstream", "http://[2001:db8::12]:8080",
		"--remove-upstream", "http://[2001:db8::10]:8080", "--lb", "ip_hash", "--health-timeout", "1s"}, asAcme...)...)
	if code != 0 || !strings.Contains(errOut, "service shop updated") {
		t.Fatalf("set: exit %d, %q", code, errOut)
	}
	want.Upstreams = []model.Upstream{want.Upstreams[1], {URL: "http://[2001:db8::12]:8080"}}
	want.LB = model.LBIPHash
	want.Health.Timeout = model.Duration(time.Second)
	if got := stored(); !reflect.DeepEqual(got, want) {
		t.Errorf("after set %+v\nwant      %+v", got, want)
	}
	// --add-upstream of one listed changes its options; --health-type tcp drops the http path.
	if _, errOut, code = run(append([]string{"service", "set", "shop", "--add-upstream", "http://[2001:db8::12]:8080,weight=9", "--health-type", "tcp"}, asAcme...)...); code != 0 {
		t.Fatalf("set: exit %d, %q", code, errOut)
	}
	want.Upstreams[1].Weight = 9
	want.Health = &model.HealthCheck{Type: "tcp", Interval: model.Duration(2 * time.Second), Timeout: model.Duration(time.Second)}
	if got := stored(); !reflect.DeepEqual(got, want) {
		t.Errorf("after set %+v\nwant      %+v", got, want)
	}
	// --upstream replaces the list; --health-type none removes active checks.
	if _, errOut, code = run(append([]string{"service", "set", "shop", "--upstream", "http://[2001:db8::20]:80", "--health-type", "none", "--ignore-5xx"}, admin...)...); code != 0 {
		t.Fatalf("set: exit %d, %q", code, errOut)
	}
	want.Upstreams = []model.Upstream{{URL: "http://[2001:db8::20]:80"}}
	want.Health = nil
	want.Passive = &model.PassiveHealth{MaxFailures: 3, Ignore5xx: true}
	if got := stored(); !reflect.DeepEqual(got, want) {
		t.Errorf("after set %+v\nwant      %+v", got, want)
	}
	// Errors that need the stored service: exit 2 naming the flag.
	_, errOut, code = run(append([]string{"service", "set", "shop", "--remove-upstream", "http://[2001:db8::99]:80"}, admin...)...)
	if code != 2 || !strings.Contains(errOut, `--remove-upstream: "http://[2001:db8::99]:80" is not an upstream of shop (its upstreams: http://[2001:db8::20]:80)`) {
		t.Errorf("remove of an unknown upstream: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(append([]string{"service", "set", "shop", "--protocol", "h2c"}, admin...)...)
	if code != 2 || !strings.Contains(errOut, `--upstream: upstream URL "http://[2001:db8::20]:80": scheme "http" not accepted for a h2c service`) {
		t.Errorf("protocol change leaving bad upstreams: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(append([]string{"service", "set", "nope", "--lb", "ip_hash"}, admin...)...)
	if code != 1 || !strings.Contains(errOut, `service "nope" does not exist`) {
		t.Errorf("set of a missing service: exit %d, %q", code, errOut)
	}
	if got := stored(); !reflect.DeepEqual(got, want) {
		t.Errorf("refused sets changed the service: %+v", got)
	}

	// show.
	out, errOut, code = run(append([]string{"service", "show", "shop"}, asAcme...)...)
	for _, s := range []string{"https://shop.localhost:8443", "acme", "ip_hash", "http://[2001:db8::20]:80", "health", "none", "eject after 3 connect errors"} {
		if code != 0 || !strings.Contains(out, s) {
			t.Errorf("show: exit %d, stdout lacks %q:\n%s%s", code, s, out, errOut)
		}
	}
	out, _, code = run(append([]string{"service", "show", "shop", "--json"}, asAcme...)...)
	if d = (api.ServiceDetail{}); code != 0 || json.Unmarshal([]byte(out), &d) != nil || !reflect.DeepEqual(d.Service, want) {
		t.Errorf("show --json: exit %d, %s", code, out)
	}

	// list: an UPSTREAMS column.
	out, _, code = run(append([]string{"service", "list"}, admin...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.Contains(lines[0], "UPSTREAMS") || !strings.HasPrefix(lines[2], "shop") ||
		strings.Fields(lines[2])[3] != "1" || strings.Fields(lines[1])[3] != "0" {
		t.Errorf("list: exit %d\n%s", code, out)
	}

	// remove.
	if _, errOut, code = run(append([]string{"service", "remove", "shop"}, asAcme...)...); code != 0 || !strings.Contains(errOut, "service shop removed") {
		t.Errorf("remove: exit %d, %q", code, errOut)
	}
	if _, _, err := store.GetService(context.Background(), st, "shop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after remove: %v", err)
	}
	_, errOut, code = run(append([]string{"service", "remove", "shop"}, asAcme...)...)
	if code != 1 || !strings.Contains(errOut, `service "shop" does not exist`) {
		t.Errorf("second remove: exit %d, %q", code, errOut)
	}
}

// TestServiceSetRetries: a change made by someone else between set's read
// and its write is not lost: the write is refused (If-Match), and set reads
// again and applies its flags to the new record.
func TestServiceSetRetries(t *testing.T) {
	var puts atomic.Int32
	wrap := func(h http.Handler, st store.Store) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == "PUT" && puts.Add(1) == 1 {
				_, _, err := store.UpdateService(r.Context(), st, "shop", 0, func(sv *model.Service) error {
					sv.Upstreams = append(sv.Upstreams, model.Upstream{URL: "http://[2001:db8::2]:80"})
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
			h.ServeHTTP(w, r)
		})
	}
	addr, acme, st := apiServer(t, wrap)
	cl := []string{"--api-addr", addr, "--token", acme}
	if _, errOut, code := execute(t, append([]string{"service", "add", "shop", "--upstream", "http://[2001:db8::1]:80"}, cl...)...); code != 0 {
		t.Fatalf("add: %d %s", code, errOut)
	}
	if _, errOut, code := execute(t, append([]string{"service", "set", "shop", "--lb", "ip_hash"}, cl...)...); code != 0 {
		t.Fatalf("set: %d %s", code, errOut)
	}
	sv, _, err := store.GetService(context.Background(), st, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if puts.Load() != 2 || sv.LB != model.LBIPHash || len(sv.Upstreams) != 2 {
		t.Errorf("after %d PUTs: %+v, want ip_hash and both upstreams", puts.Load(), sv)
	}
}
