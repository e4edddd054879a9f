package main

import (
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// TestGatewayYggFlags: bad --ygg-* values exit 2 naming the flag, before
// anything starts.
func TestGatewayYggFlags(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		contains string
	}{
		{[]string{"--ygg-listen", "udp://0.0.0.0:9001"}, `ygg_listen (--ygg-listen): "udp://0.0.0.0:9001": scheme "udp" not accepted`},
		{[]string{"--ygg-peer", "tls://peer.example.net"}, "ygg_peer (--ygg-peer)"},
		{[]string{"--ygg-listen", "tls://0.0.0.0:9001", "--ygg-allow-key", "abc"}, "ygg_allow_key (--ygg-allow-key)"},
		{[]string{"--ygg-password", "x"}, "need ygg_listen, ygg_peer or ygg_tun"},
		{[]string{"--ygg-tun", "bad/name"}, "ygg_tun (--ygg-tun)"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append([]string{"gateway", "--data-dir", t.TempDir()}, tt.args...)
			_, stderr, code := execute(t, args...)
			if code != 2 || !strings.Contains(stderr, tt.contains) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.contains)
			}
		})
	}
}

// yggAPIServer runs the admin API with a node's status (nil: the node off).
func yggAPIServer(t *testing.T, st func() api.YggStatus) string {
	t.Helper()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	srv := &api.Server{Store: b, Table: route.NewTable(nil), AdminToken: "admin-secret", Ygg: st}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return ts.URL
}

func TestYggStatusCLI(t *testing.T) {
	addr := yggAPIServer(t, func() api.YggStatus {
		return api.YggStatus{Addr: "200:1234::1", Subnet: "300:1234::/64", PublicKey: strings.Repeat("ab", 32), Peers: []api.YggPeer{
			{URI: "tls://192.0.2.1:9001", Up: true, PublicKey: strings.Repeat("cd", 32), RxBytes: 2048, TxBytes: 10, Uptime: 90},
			{URI: "tcp://[2001:db8::2]:9002", Inbound: true, LastError: "connection refused"},
		}}
	})
	out, errOut, code := execute(t, "ygg", "status", "--api-addr", addr, "--token", "admin-secret")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"address     200:1234::1\n", "subnet      300:1234::/64\n", "public key  " + strings.Repeat("ab", 32) + "\n",
		"URI", "DIRECTION", "KEY", "UPTIME",
		"tls://192.0.2.1:9001", "out", "yes", "cdcdcdcdcdcdcdcd…", "2.0 KiB", "1m30s",
		"tcp://[2001:db8::2]:9002", "in", "no (connection refused)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, code = execute(t, "ygg", "status", "--json", "--api-addr", addr, "--token", "admin-secret")
	var st api.YggStatus
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Addr != "200:1234::1" || len(st.Peers) != 2 || st.Peers[0].RxBytes != 2048 {
		t.Errorf("--json: exit %d, %q", code, out)
	}

	off := yggAPIServer(t, nil)
	_, errOut, code = execute(t, "ygg", "status", "--api-addr", off, "--token", "admin-secret")
	if code == 0 || !strings.Contains(errOut, "yggdrasil node is off") {
		t.Errorf("node off: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = execute(t, "ygg", "status", "extra", "--api-addr", off, "--token", "admin-secret")
	if code != 2 {
		t.Errorf("extra argument: exit %d, stderr %q; want 2", code, errOut)
	}
}

// TestServiceYggFlag: service add|set --ygg stores the option; --ygg=false
// takes it back; tcp and udp services refuse it (exit 2).
func TestServiceYggFlag(t *testing.T) {
	addr, acme, st := apiServer(t, nil)
	as := []string{"--api-addr", addr, "--token", acme}
	ygg := func(name string) bool {
		t.Helper()
		sv, _, err := store.GetService(t.Context(), st, name)
		if err != nil {
			t.Fatal(err)
		}
		return sv.Ygg
	}
	if _, errOut, code := execute(t, append([]string{"service", "add", "shop", "--ygg"}, as...)...); code != 0 || !ygg("shop") {
		t.Fatalf("add --ygg: exit %d, %q", code, errOut)
	}
	if out, _, code := execute(t, append([]string{"service", "show", "shop"}, as...)...); code != 0 || !strings.Contains(out, "yggdrasil") {
		t.Errorf("show: exit %d, %q", code, out)
	}
	if _, errOut, code := execute(t, append([]string{"service", "set", "shop", "--lb", "ip_hash"}, as...)...); code != 0 || !ygg("shop") {
		t.Errorf("set without --ygg dropped it: exit %d, %q", code, errOut)
	}
	if _, errOut, code := execute(t, append([]string{"service", "set", "shop", "--ygg=false"}, as...)...); code != 0 || ygg("shop") {
		t.Errorf("set --ygg=false: exit %d, %q", code, errOut)
	}
}
