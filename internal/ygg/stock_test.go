package ygg

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	stockOnce sync.Once
	stockBin  string
	stockErr  string
)

// stockYggdrasil builds the stock cmd/yggdrasil of the module version in
// go.mod (once per machine, cached under the temp dir). It is built from a
// copy of the module with suah.dev/protect (OpenBSD pledge, absent from
// the module proxy here) replaced by a no-op stub.
func stockYggdrasil(t *testing.T) string {
	stockOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}} {{.Dir}}", "github.com/yggdrasil-network/yggdrasil-go").Output()
		if err != nil {
			stockErr = "go list: " + err.Error()
			return
		}
		version, dir, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		bin := filepath.Join(os.TempDir(), "webgw-test-yggdrasil-"+version, "yggdrasil")
		if _, err := os.Stat(bin); err == nil {
			stockBin = bin
			return
		}
		src, err := os.MkdirTemp("", "yggdrasil-src-")
		if err != nil {
			stockErr = err.Error()
			return
		}
		defer os.RemoveAll(src)
		steps := [][]string{
			{"cp", "-r", dir + "/.", src},
			{"chmod", "-R", "u+w", src},
		}
		for _, s := range steps {
			if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
				stockErr = strings.Join(s, " ") + ": " + err.Error() + ": " + string(out)
				return
			}
		}
		stub := filepath.Join(src, "protectstub")
		files := map[string]string{
			filepath.Join(stub, "go.mod"):     "module suah.dev/protect\n\ngo 1.21\n",
			filepath.Join(stub, "protect.go"): "package protect\n\nfunc Pledge(string) error { return nil }\n\nfunc Unveil(string, string) error { return nil }\n\nfunc UnveilBlock() error { return nil }\n",
		}
		_ = os.Mkdir(stub, 0o755)
		for p, c := range files {
			if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
				stockErr = err.Error()
				return
			}
		}
		gomod, _ := os.ReadFile(filepath.Join(src, "go.mod"))
		gomod = append(gomod, "\nreplace suah.dev/protect => ./protectstub\n"...)
		if err := os.WriteFile(filepath.Join(src, "go.mod"), gomod, 0o644); err != nil {
			stockErr = err.Error()
			return
		}
		tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid()) // packages build it in parallel
		cmd := exec.Command("go", "build", "-o", tmp, "./cmd/yggdrasil")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			stockErr = "go build cmd/yggdrasil " + version + ": " + err.Error() + "\n" + string(out)
			return
		}
		if err := os.Rename(tmp, bin); err != nil {
			stockErr = err.Error()
			return
		}
		stockBin = bin
	})
	if stockBin == "" {
		t.Skipf("stock yggdrasil not built (offline?): %s", stockErr)
	}
	return stockBin
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
