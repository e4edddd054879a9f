package ygg

import (
	"github.com/webgw/webgw/internal/ygg/yggtest"

	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// stockYggdrasil is the stock node's program (yggtest.Stock).
func stockYggdrasil(t *testing.T) string {
	bin, err := yggtest.Stock()
	if err != nil {
		t.Skipf("stock yggdrasil not built (offline?): %v", err)
	}
	return bin
}

// startStock runs a stock node peering out to peers, without TUN,
// multicast or admin socket, and returns its public key.
func startStock(t *testing.T, peers []string) string {
	bin := stockYggdrasil(t)
	dir := t.TempDir()
	out, err := exec.Command(bin, "-genconf", "-json").Output()
	if err != nil {
		t.Fatalf("genconf: %v", err)
	}
	var conf map[string]any
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatal(err)
	}
	conf["Peers"] = peers
	conf["Listen"] = []string{}
	conf["IfName"] = "none"
	conf["MulticastInterfaces"] = []any{}
	conf["AdminListen"] = "none"
	b, _ := json.Marshal(conf)
	path := filepath.Join(dir, "yggdrasil.conf")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	priv, err := hex.DecodeString(conf["PrivateKey"].(string))
	if err != nil || len(priv) != ed25519.PrivateKeySize {
		t.Fatalf("stock private key: %v", err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-useconffile", path, "-logto", "stdout")
	cmd.Stdout = &lockedWriter{w: &logs}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("stock yggdrasil log:\n%s", cmd.Stdout.(*lockedWriter).String())
		}
	})
	return hex.EncodeToString(ed25519.PrivateKey(priv).Public().(ed25519.PublicKey))
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// TestStockInterop peers a stock Yggdrasil 0.5 node (the real binary) into
// two embedded nodes and has one fetch a page from the other through it:
// the stock node speaks our link protocol and routes our traffic.
func TestStockInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the stock yggdrasil")
	}
	stockYggdrasil(t)
	e := startNode(t, Config{Listen: []string{"tls://127.0.0.1:0"}})
	c := startNode(t, Config{Listen: []string{"tcp://127.0.0.1:0"}})
	key := startStock(t, []string{e.Status().Listeners[0], c.Status().Listeners[0]})

	for _, n := range []*Node{e, c} {
		waitFor(t, 30*time.Second, "the stock node as an up peer with bytes both ways", func() bool {
			p, ok := upPeer(n, key)
			return ok && p.Inbound && p.RxBytes > 0 && p.TxBytes > 0
		})
	}
	if _, ok := upPeer(e, c.PublicKey()); ok {
		t.Fatal("the embedded nodes peer directly")
	}
	l, err := e.Listen("tcp", net.JoinHostPort(e.Addr().String(), "80"))
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, l, "via stock")
	got := getRetry(t, c.DialContext, "http://"+net.JoinHostPort(e.Addr().String(), "80")+"/")
	if want := "via stock from [" + c.Addr().String() + "]:"; !strings.HasPrefix(got, want) {
		t.Fatalf("got %q, want %q...", got, want)
	}
}
