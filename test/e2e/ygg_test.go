//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/ygg"
	"github.com/webgw/webgw/internal/ygg/yggtest"
)

func init() {
	helpers["yggwork"] = yggWorkHelper
}

// yggWorkHelper is helper mode "yggwork": an embedded Yggdrasil node that
// peers with -peer and serves HTTP on its own overlay address only, port
// 8080 (a workload that lives on the planetary network alone). It prints
// "addr ADDR" once it serves and stops on SIGTERM.
func yggWorkHelper(args []string) int {
	fs := flag.NewFlagSet("yggwork", flag.ContinueOnError)
	peer := fs.String("peer", "", "peer URI")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	key, err := ygg.GenerateKey()
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggwork:", err)
		return 1
	}
	node, err := ygg.Start(ygg.Config{PrivateKey: key, Peers: []string{*peer}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggwork:", err)
		return 1
	}
	defer node.Close()
	ln, err := node.Listen("tcp", ":8080")
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggwork:", err)
		return 1
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "workload on the overlay\n")
	}))
	pc, err := node.ListenPacket("udp", ":5353") // a UDP echo on the overlay
	if err != nil {
		fmt.Fprintln(os.Stderr, "yggwork:", err)
		return 1
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	fmt.Printf("addr %s\n", node.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

// stockYggdrasil is the stock Yggdrasil 0.5 node's program (yggtest.Stock).
func stockYggdrasil(t *testing.T) string {
	t.Helper()
	bin, err := yggtest.Stock()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestYggdrasil: the gateway's embedded Yggdrasil node is an access point.
// A workload that serves HTTP only on its overlay address is reached by a
// public HTTPS client through the gateway by name; a stock Yggdrasil 0.5
// node (with a TUN, in its own host) peers with the access point over TLS
// and reaches a service published on the gateway's overlay address, and
// nothing else there: not the admin API, not an unpublished name.
func TestYggdrasil(t *testing.T) {
	t.Parallel()
	n := newTestNet(t, netSpec{Hosts: []hostSpec{
		{Name: "gw", Octet: 11}, {Name: "work", Octet: 31}, {Name: "user", Octet: 32}, {Name: "client", Octet: 30},
	}})
	stock := stockYggdrasil(t)
	access := fmt.Sprintf("tls://%s:12345", n.host("gw").IP4)
	gw := n.startNSGateway(t, "gw", "--ygg-listen", access, "--upstream-allow", "200::/7")
	gw.ready(t)
	caFile := gw.dataDir + "/ca.pem"
	roots := caPool(t, caFile)
	tok := strings.TrimSpace(gw.mustWebgw(t, "tenant", "add", "acme"))

	// The workload, on the overlay only.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wp := n.start(t, "work", "yggwork", []string{helperEnv + "=yggwork"}, exe, "-peer", access)
	m := wp.waitLine(t, regexp.MustCompile(`^addr (\S+)$`), 30*time.Second)
	workAddr := m[1]
	gw.mustWebgw(t, "service", "add", "work", "--tenant", "acme", "--upstream", "http://["+workAddr+"]:8080")
	client := n.httpClient(t, "client", gw.ip.String()+":443", roots)
	var code int
	var body string
	if !poll(30*time.Second, func() bool {
		code, body, err = get(client, "https://work."+clusterDomain+"/")
		return code == http.StatusOK
	}) || body != "workload on the overlay\n" {
		t.Fatalf("GET https://work.%s/ through the gateway to the overlay-only workload: %d %q %v", clusterDomain, code, body, err)
	}

	// The gateway's own overlay address.
	var st struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(gw.mustWebgw(t, "ygg", "status", "--json")), &st); err != nil || st.Address == "" {
		t.Fatalf("webgw ygg status --json: %+v %v", st, err)
	}

	// A stock Yggdrasil 0.5 node in the user's host, with a TUN.
	dir := t.TempDir()
	gen, err := exec.Command(stock, "-genconf", "-json").Output()
	if err != nil {
		t.Fatalf("yggdrasil -genconf: %v", err)
	}
	var conf map[string]any
	if err := json.Unmarshal(gen, &conf); err != nil {
		t.Fatal(err)
	}
	conf["Peers"] = []string{access}
	conf["Listen"] = []string{}
	conf["MulticastInterfaces"] = []any{}
	conf["AdminListen"] = "none"
	conf["IfName"] = "ygg0"
	b, _ := json.Marshal(conf)
	confFile := filepath.Join(dir, "yggdrasil.conf")
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t, "user", "yggdrasil", nil, stock, "-useconffile", confFile)

	// Published on the overlay: reached by the stock node's host.
	gw.mustWebgw(t, "service", "set", "work", "--ygg")
	curl := func(args ...string) cmdResult {
		return n.exec(t, "user", 10*time.Second, append([]string{"curl", "-s", "--max-time", "3", "--cacert", caFile}, args...)...)
	}
	var r cmdResult
	if !poll(45*time.Second, func() bool {
		r = curl("--resolve", "work."+clusterDomain+":443:["+st.Address+"]", "https://work."+clusterDomain+"/")
		return r.code == 0 && r.stdout == "workload on the overlay\n"
	}) {
		t.Fatalf("the stock node's host did not reach work.%s on the gateway's overlay address %s: %s", clusterDomain, st.Address, r)
	}
	// An agent on the user's host reaches its gateway over the overlay
	// (through the host's stock node), by the gateway's overlay address.
	backend := n.serveHTTP(t, "user", "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "agent over the overlay\n")
	}))
	ap := n.start(t, "user", "expose-ygg", nil, webgwBin, "expose", "--gateway", "ygg://["+st.Address+"]:443", "--ca", caFile,
		"--token", tok, "--name", "viaygg", "--transport", "tcp", backend)
	ap.waitLine(t, regexp.MustCompile(`^https://viaygg\.`+regexp.QuoteMeta(clusterDomain)), 45*time.Second)
	if !poll(10*time.Second, func() bool {
		code, body, err = get(client, "https://viaygg."+clusterDomain+"/")
		return code == http.StatusOK
	}) || body != "agent over the overlay\n" {
		t.Errorf("GET https://viaygg.%s/ (an agent connected over Yggdrasil): %d %q %v", clusterDomain, code, body, err)
	}
	var status struct {
		Agents []struct {
			Remote   string   `json:"remote"`
			Services []string `json:"services"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(gw.mustWebgw(t, "status", "--json")), &status); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range status.Agents {
		if len(a.Services) > 0 && a.Services[0] == "viaygg" {
			found = true
			if !strings.HasPrefix(a.Remote, "[2") {
				t.Errorf("the agent's session comes from %s, want an overlay (200::/7) address", a.Remote)
			}
		}
	}
	if !found {
		t.Errorf("webgw status lists no agent session for viaygg: %+v", status.Agents)
	}

	// A tcp service published on the overlay: its port on the gateway's
	// overlay address too; a tcp service not published is not there.
	out := gw.mustWebgw(t, "service", "add", "raw", "--tenant", "acme", "--protocol", "tcp", "--upstream", "tcp://["+workAddr+"]:8080", "--ygg")
	pm := regexp.MustCompile(`:(\d+)\s*$`).FindStringSubmatch(strings.TrimSpace(out))
	if pm == nil {
		t.Fatalf("service add raw --protocol tcp printed no port: %q", out)
	}
	rawURL := "http://[" + st.Address + "]:" + pm[1] + "/"
	if !poll(30*time.Second, func() bool {
		r = curl(rawURL)
		return r.code == 0 && r.stdout == "workload on the overlay\n"
	}) {
		t.Errorf("tcp service raw on the gateway's overlay address (%s): %s", rawURL, r)
	}
	gw.mustWebgw(t, "service", "set", "raw", "--ygg=false")
	if !poll(5*time.Second, func() bool { return curl(rawURL).code != 0 }) {
		t.Errorf("tcp service raw still answers on the overlay after --ygg=false")
	}

	// A udp service published on the overlay: the same.
	out = gw.mustWebgw(t, "service", "add", "echo", "--tenant", "acme", "--protocol", "udp", "--upstream", "udp://["+workAddr+"]:5353", "--ygg")
	pm = regexp.MustCompile(`:(\d+)\s*$`).FindStringSubmatch(strings.TrimSpace(out))
	if pm == nil {
		t.Fatalf("service add echo --protocol udp printed no port: %q", out)
	}
	echoAddr := "[" + st.Address + "]:" + pm[1]
	var uerr error
	if !poll(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := n.dial(ctx, "user", "udp", echoAddr)
		if err != nil {
			uerr = err
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write([]byte("ping over the overlay"))
		buf := make([]byte, 100)
		k, err := c.Read(buf)
		uerr = err
		return err == nil && string(buf[:k]) == "ping over the overlay"
	}) {
		t.Errorf("udp service echo on the gateway's overlay address (%s): %v", echoAddr, uerr)
	}

	// Nothing else there.
	if r := curl("http://[" + st.Address + "]:8081/healthz"); r.code == 0 {
		t.Errorf("the admin API answers on the gateway's overlay address: %q", r.stdout)
	}
	gw.mustWebgw(t, "service", "add", "private", "--tenant", "acme", "--upstream", "http://["+workAddr+"]:8080")
	if r := curl("--resolve", "private."+clusterDomain+":443:["+st.Address+"]", "https://private."+clusterDomain+"/"); r.code == 0 {
		t.Errorf("an unpublished service answers on the gateway's overlay address: %q", r.stdout)
	}
}
