package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"image"
	"image/color"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	goqr "github.com/piglig/go-qr"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// TestFourTo6Usage: bad usage of the 4to6 commands exits 2 naming the
// argument or flag, before any API call (nothing listens at the API address).
func TestFourTo6Usage(t *testing.T) {
	noAPI := []string{"--api-addr", "127.0.0.1:1", "--token", "x"}
	tests := []struct {
		args     []string
		contains string
	}{
		{[]string{"4to6", "add"}, "accepts 1 arg"},
		{[]string{"4to6", "add", "Laptop"}, `NAME: invalid device name "Laptop"`},
		{[]string{"4to6", "add", "laptop", "--open", "tcp/0"}, `--open: "tcp/0": port 0 is outside 1-65535`},
		{[]string{"4to6", "add", "laptop", "--open", "ssh"}, `--open: "ssh" not accepted; use tcp/PORT or udp/PORT`},
		{[]string{"4to6", "add", "laptop", "--public-key", "abc"}, "--public-key: wireguard key of 3 characters"},
		{[]string{"4to6", "add", "laptop", "--public-key", model.WGKey{}.String()}, "--public-key: the all-zero key"},
		{[]string{"4to6", "add", "laptop", "--qr", "--no-qr"}, "--qr and --no-qr"},
		{[]string{"4to6", "list", "x"}, "unknown command"},
		{[]string{"4to6", "list", "--tenant", "A"}, "--tenant: invalid tenant name"},
		{[]string{"4to6", "show"}, "accepts 1 arg"},
		{[]string{"4to6", "show", "a_b"}, "NAME: invalid device name"},
		{[]string{"4to6", "remove"}, "accepts 1 arg"},
		{[]string{"4to6", "remove", "-x"}, "unknown shorthand flag"},
		{[]string{"4to6", "open", "laptop"}, "requires at least 2 arg"},
		{[]string{"4to6", "open", "laptop", "tcp/70000"}, `PORT: "tcp/70000"`},
		{[]string{"4to6", "close", "laptop", "22"}, `PORT: "22" not accepted`},
		{[]string{"4to6", "close", "Laptop", "tcp/22"}, "NAME: invalid device name"},
		{[]string{"4to6", "frob"}, "unknown command"},
		{[]string{"4to6"}, "a subcommand is needed"},
		{[]string{"4to6", "add", "laptop", "--tenant"}, "flag needs an argument: --tenant"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := tt.args
			if len(args) > 1 && args[len(args)-1] != "--tenant" && args[1] != "frob" {
				args = append(args, noAPI...)
			}
			_, stderr, code := execute(t, args...)
			if code != 2 || !strings.Contains(stderr, tt.contains) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.contains)
			}
			if strings.Contains(stderr, "reach the gateway API") {
				t.Errorf("the API was called: %s", stderr)
			}
		})
	}
}

// recorder keeps every request the API got.
type recorder struct {
	mu   sync.Mutex
	reqs []string // "METHOD PATH?QUERY BODY"; guarded by mu
}

func (r *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs = append(r.reqs, req.Method+" "+req.URL.RequestURI()+" "+string(b))
		r.mu.Unlock()
		req.Body = io.NopCloser(bytes.NewReader(b))
		h.ServeHTTP(w, req)
	})
}

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.reqs, "\n")
}

var gwKey = func() model.WGKey {
	k, _ := model.GenerateWGKey()
	return k
}()

// deviceAPIServer runs the admin API with 4to6 on (2001:db8:100::/56, /128
// per device, endpoint 203.0.113.10:51820), recording every request, with
// tenants acme and beta.
func deviceAPIServer(t *testing.T) (addr, acme, beta string, st store.Store, rec *recorder) {
	t.Helper()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	pl, _ := model.ParseDevicePlan("2001:db8:100::/56", "")
	srv := &api.Server{
		Store: b, Table: route.NewTable(nil), AdminToken: "admin-secret",
		Info: api.GatewayInfo{Domain: "localhost", HTTPSAddr: "127.0.0.1:8443"},
		WG: &api.WG4to6{Plan: pl, PublicKey: gwKey.Public(), Endpoint: "203.0.113.10:51820",
			DNS: []netip.Addr{netip.MustParseAddr("2001:db8::53")}, MaxDevicesPerTenant: 10},
	}
	rec = &recorder{}
	ts := httptest.NewServer(rec.wrap(srv.Handler()))
	t.Cleanup(ts.Close)
	var toks []string
	for _, name := range []string{"acme", "beta"} {
		tok := model.NewToken()
		if err := store.CreateTenant(context.Background(), b, model.Tenant{Name: name, TokenHash: model.HashToken(tok), Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	return ts.URL, toks[0], toks[1], b, rec
}

var privateKeyRe = regexp.MustCompile(`(?m)^PrivateKey = (\S+)$`)

// TestFourTo6AddMakesTheKey: add without --public-key prints a complete
// config on stdout (only it), whose private key belongs to the public key
// the gateway stored, and the private key never reaches the API.
func TestFourTo6AddMakesTheKey(t *testing.T) {
	addr, acme, _, st, rec := deviceAPIServer(t)
	out, errOut, code := execute(t, "4to6", "add", "laptop", "--open", "tcp/22", "--open", "udp/60000", "--api-addr", addr, "--token", acme)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	d, _, err := store.GetDevice(context.Background(), st, "acme", "laptop")
	if err != nil {
		t.Fatal(err)
	}
	m := privateKeyRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no PrivateKey line in stdout:\n%s", out)
	}
	priv, err := model.ParseWGKey(m[1])
	if err != nil {
		t.Fatalf("PrivateKey %q: %v", m[1], err)
	}
	if priv.Public().String() != d.PublicKey {
		t.Fatalf("the config's private key belongs to %s; the gateway stored %s", priv.Public(), d.PublicKey)
	}
	want := "# webgw 4to6 device laptop of tenant acme\n[Interface]\nPrivateKey = " + priv.String() + "\nAddress = " + d.Address.String() +
		"\nDNS = 2001:db8::53\n\n[Peer]\nPublicKey = " + gwKey.Public().String() + "\nEndpoint = 203.0.113.10:51820\nAllowedIPs = ::/0\nPersistentKeepalive = 25\n"
	if out != want {
		t.Errorf("stdout:\n%s\nwant exactly the config:\n%s", out, want)
	}
	if strings.Join(d.Open, " ") != "tcp/22 udp/60000" {
		t.Errorf("stored open %q", d.Open)
	}
	sent := rec.all()
	if !strings.Contains(sent, d.PublicKey) {
		t.Fatalf("the public key was not sent? requests:\n%s", sent)
	}
	for _, form := range []string{priv.String(), hex.EncodeToString(priv[:]), strings.TrimRight(priv.String(), "=")} {
		if strings.Contains(sent, form) {
			t.Fatalf("the private key reached the API:\n%s", sent)
		}
	}
	if strings.Contains(errOut, priv.String()) || strings.Contains(errOut, "\x1b[") {
		t.Errorf("stderr holds the key or a QR code (stdout is no terminal): %q", errOut)
	}
	if !strings.Contains(errOut, "device laptop added: address "+d.Address.String()+", open tcp/22 udp/60000") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestFourTo6AddWithKey(t *testing.T) {
	addr, _, _, st, _ := deviceAPIServer(t)
	k, _ := model.GenerateWGKey()
	pub := k.Public().String()
	out, errOut, code := execute(t, "4to6", "add", "server", "--public-key", pub, "--tenant", "beta", "--api-addr", addr, "--token", "admin-secret")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "\nPrivateKey = <your private key>\n") || !strings.Contains(errOut, "put the device's private key in the config's PrivateKey line") {
		t.Errorf("stdout %q, stderr %q", out, errOut)
	}
	if d, _, err := store.GetDevice(context.Background(), st, "beta", "server"); err != nil || d.PublicKey != pub {
		t.Errorf("stored %+v, %v", d, err)
	}
	// The same key again: the API's 409, exit 1.
	_, errOut, code = execute(t, "4to6", "add", "server2", "--public-key", pub, "--tenant", "beta", "--api-addr", addr, "--token", "admin-secret")
	if code != 1 || !strings.Contains(errOut, "public_key: another device uses this key") || !strings.Contains(errOut, "HTTP 409") {
		t.Errorf("a key used twice: exit %d, %q", code, errOut)
	}
	// The admin without --tenant: the API's 400, exit 2.
	_, errOut, code = execute(t, "4to6", "add", "server3", "--api-addr", addr, "--token", "admin-secret")
	if code != 2 || !strings.Contains(errOut, "tenant: the admin token must name the tenant") {
		t.Errorf("admin without --tenant: exit %d, %q", code, errOut)
	}
}

// TestFourTo6QR: --qr prints on stderr a QR code that reads back as the
// config printed on stdout.
func TestFourTo6QR(t *testing.T) {
	addr, acme, _, _, _ := deviceAPIServer(t)
	out, errOut, code := execute(t, "4to6", "add", "phone", "--qr", "--api-addr", addr, "--token", acme)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	qrText, _, _ := strings.Cut(errOut, "device phone added")
	got, err := decodeTerminalQR(qrText)
	if err != nil {
		t.Fatalf("decode the QR code: %v\n%s", err, qrText)
	}
	if got != out {
		t.Errorf("the QR code reads\n%s\nwant the config\n%s", got, out)
	}
}

var ansiCell = regexp.MustCompile(`(?:\x1b\[(\d+);(\d+)m)?▀`)

// decodeTerminalQR reads writeQR's output back into an image and decodes it.
func decodeTerminalQR(s string) (string, error) {
	var rows [][]bool
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		var top, bottom []bool
		fg, bg := "", ""
		for _, m := range ansiCell.FindAllStringSubmatch(line, -1) {
			if m[1] != "" {
				fg, bg = m[1], m[2]
			}
			top = append(top, fg == "30")
			bottom = append(bottom, bg == "40")
		}
		rows = append(rows, top, bottom)
	}
	const scale, border = 4, 4
	w, h := len(rows[0]), len(rows)
	img := image.NewGray(image.Rect(0, 0, (w+2*border)*scale, (h+2*border)*scale))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	for y, row := range rows {
		for x, dark := range row {
			if !dark {
				continue
			}
			for dy := range scale {
				for dx := range scale {
					img.SetGray((x+border)*scale+dx, (y+border)*scale+dy, color.Gray{})
				}
			}
		}
	}
	return goqr.Decode(img)
}

func TestWriteQRSizes(t *testing.T) {
	for _, text := range []string{"x", strings.Repeat("wireguard ", 60)} {
		var b bytes.Buffer
		if err := writeQR(&b, text); err != nil {
			t.Fatal(err)
		}
		if got, err := decodeTerminalQR(b.String()); err != nil || got != text {
			t.Errorf("QR of %d bytes reads %q, %v", len(text), got, err)
		}
	}
}

func TestFourTo6Commands(t *testing.T) {
	addr, acme, beta, st, _ := deviceAPIServer(t)
	asAcme := []string{"--api-addr", addr, "--token", acme}
	asBeta := []string{"--api-addr", addr, "--token", beta}
	admin := []string{"--api-addr", addr, "--token", "admin-secret"}
	run := func(cl []string, args ...string) (string, string, int) {
		t.Helper()
		return execute(t, append(append([]string{"4to6"}, args...), cl...)...)
	}
	for _, name := range []string{"laptop", "phone"} {
		if _, errOut, code := run(asAcme, "add", name); code != 0 {
			t.Fatalf("add %s: exit %d, %q", name, code, errOut)
		}
	}
	if _, errOut, code := run(asBeta, "add", "laptop"); code != 0 {
		t.Fatalf("beta add laptop: exit %d, %q", code, errOut)
	}

	out, errOut, code := run(asAcme, "open", "laptop", "tcp/22", "udp/60000")
	if code != 0 || out != "tcp/22 udp/60000\n" {
		t.Fatalf("open: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, _, code = run(asAcme, "close", "laptop", "tcp/22")
	if code != 0 || out != "udp/60000\n" {
		t.Fatalf("close: exit %d, %q", code, out)
	}
	out, _, code = run(asAcme, "open", "phone", "all")
	if code != 0 || out != "all\n" {
		t.Fatalf("open all: exit %d, %q", code, out)
	}
	_, errOut, code = run(asAcme, "close", "phone", "tcp/22")
	if code != 2 || !strings.Contains(errOut, `remove: every port is open ("all")`) {
		t.Fatalf("close one port of all: exit %d, %q", code, errOut)
	}
	out, _, code = run(asAcme, "close", "phone", "all")
	if code != 0 || out != "none\n" {
		t.Fatalf("close all: exit %d, %q", code, out)
	}

	out, errOut, code = run(asAcme, "list")
	if code != 0 || !strings.Contains(out, "NAME") || !strings.Contains(out, "laptop") || !strings.Contains(out, "udp/60000") ||
		!strings.Contains(out, "never") || strings.Count(out, "\n") != 3 {
		t.Fatalf("list: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, _, code = run(admin, "list", "--json")
	var all []api.DeviceDetail
	if code != 0 || json.Unmarshal([]byte(out), &all) != nil || len(all) != 3 {
		t.Fatalf("admin list --json: exit %d, %q", code, out)
	}
	out, _, code = run(admin, "list", "--tenant", "beta")
	if code != 0 || strings.Count(out, "\n") != 2 || !strings.Contains(out, "beta") {
		t.Fatalf("admin list --tenant beta: exit %d, %q", code, out)
	}

	d, _, _ := store.GetDevice(context.Background(), st, "acme", "laptop")
	out, errOut, code = run(asAcme, "show", "laptop")
	if code != 0 || !strings.Contains(out, "device laptop of tenant acme\n") || !strings.Contains(out, "  address     "+d.Address.String()+"\n") ||
		!strings.Contains(out, "  open        udp/60000\n") || !strings.Contains(out, "PrivateKey = <your private key>\n") {
		t.Fatalf("show: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, _, code = run(asAcme, "show", "laptop", "--config")
	if code != 0 || !strings.HasPrefix(out, "# webgw 4to6 device laptop") || !strings.Contains(out, "Address = "+d.Address.String()) {
		t.Fatalf("show --config: exit %d, %q", code, out)
	}
	_, errOut, code = run(admin, "show", "laptop")
	if code != 2 || !strings.Contains(errOut, "tenant: the admin token must name the device's tenant") {
		t.Fatalf("admin show without --tenant: exit %d, %q", code, errOut)
	}
	if out, _, code = run(admin, "show", "laptop", "--tenant", "beta", "--json"); code != 0 || !strings.Contains(out, `"tenant": "beta"`) {
		t.Fatalf("admin show --tenant beta: exit %d, %q", code, out)
	}
	_, errOut, code = run(asBeta, "show", "phone")
	if code != 1 || !strings.Contains(errOut, `tenant "beta" has no device "phone"`) || !strings.Contains(errOut, "HTTP 404") {
		t.Fatalf("beta show acme's phone: exit %d, %q", code, errOut)
	}

	_, errOut, code = run(asAcme, "remove", "laptop")
	if code != 0 || errOut != "device laptop removed\n" {
		t.Fatalf("remove: exit %d, %q", code, errOut)
	}
	if _, _, err := store.GetDevice(context.Background(), st, "acme", "laptop"); err == nil {
		t.Error("acme/laptop is still stored")
	}
	if _, _, err := store.GetDevice(context.Background(), st, "beta", "laptop"); err != nil {
		t.Errorf("beta/laptop went too: %v", err)
	}
	_, errOut, code = run(asAcme, "remove", "laptop")
	if code != 1 || !strings.Contains(errOut, "HTTP 404") {
		t.Errorf("remove again: exit %d, %q", code, errOut)
	}
}

// TestGatewayWGFlags: the gateway's 4to6 flags reach the configuration and
// bad values exit 2 naming the key, before anything is opened.
func TestGatewayWGFlags(t *testing.T) {
	dir := t.TempDir()
	base := []string{"gateway", "--data-dir", filepath.Join(dir, "data"), "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0"}
	ok := []string{"--wg-prefix", "2001:db8:100::/56", "--public-ip", "203.0.113.1"}
	tests := []struct {
		args     []string
		contains string
	}{
		{[]string{"--wg-prefix", "10.0.0.0/8"}, "wg_prefix: 10.0.0.0/8 is IPv4"},
		{[]string{"--wg-prefix", "2001:db8:100::/64", "--wg-per-device", "/64", "--wg-endpoint", "203.0.113.1:51820"}, "wg_prefix: a /64 per device needs a prefix shorter than /64"},
		{append([]string{"--wg-per-device", "/80"}, ok...), `wg_per_device: "/80" not accepted`},
		{[]string{"--wg-prefix", "2001:db8:100::/56"}, "wg_endpoint: give the HOST:PORT devices dial"},
		{append([]string{"--wg-dns", "2001:db8::53", "--wg-dns", "9.9.9.9"}, ok...), "wg_dns: 9.9.9.9 is IPv4"},
		{append([]string{"--wg-endpoint", "gw.example"}, ok...), `wg_endpoint: "gw.example" is not HOST:PORT`},
		{append([]string{"--wg-listen", "203.0.113.1:51820"}, ok...), "wg_listen:"},
		{[]string{"--wg-nat66"}, "need wg_prefix"},
		{[]string{"--wg-listen", ":51821"}, "need wg_prefix"},
		{[]string{"--max-devices-per-tenant", "-2"}, "limits.max_devices_per_tenant: -2"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, stderr, code := execute(t, append(base, tt.args...)...)
			if code != 2 || !strings.Contains(stderr, tt.contains) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.contains)
			}
		})
	}
}

// TestFourTo6AddJSON: --json prints the API's answer, its config completed
// with the private key made on the client.
func TestFourTo6AddJSON(t *testing.T) {
	addr, acme, _, _, rec := deviceAPIServer(t)
	out, errOut, code := execute(t, "4to6", "add", "tablet", "--json", "--api-addr", addr, "--token", acme)
	var d api.DeviceDetail
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	m := privateKeyRe.FindStringSubmatch(d.Config)
	if m == nil {
		t.Fatalf("config without a private key: %q", d.Config)
	}
	priv, err := model.ParseWGKey(m[1])
	if err != nil || priv.Public().String() != d.PublicKey {
		t.Fatalf("private key %q (%v) does not belong to %s", m[1], err, d.PublicKey)
	}
	if strings.Contains(rec.all(), priv.String()) {
		t.Fatal("the private key reached the API")
	}
}
