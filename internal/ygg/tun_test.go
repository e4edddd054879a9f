package ygg

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestTUN runs TestTUNChild in a network namespace of its own (root
// needed): the TUN and its routes never touch the host's network.
func TestTUN(t *testing.T) {
	if os.Getenv("YGG_TUN_CHILD") != "" {
		t.Skip("in the child")
	}
	if os.Geteuid() != 0 {
		t.Skip("TUN mode needs root (a network namespace and CAP_NET_ADMIN)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^TestTUNChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "YGG_TUN_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "unshare failed") {
			t.Skipf("no network namespace: %s", out)
		}
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestTUNChild") {
		t.Fatalf("child did not pass:\n%s", out)
	}
}

// TestTUNChild: node a has a TUN, b is userspace only; each reaches the
// other's overlay listener, a through the kernel.
func TestTUNChild(t *testing.T) {
	if os.Getenv("YGG_TUN_CHILD") == "" {
		t.Skip("run by TestTUN in a network namespace")
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	a := startNode(t, Config{Listen: []string{"tls://127.0.0.1:0"}, TUN: "ygg0"})
	if st := a.Status(); st.TUN != "ygg0" {
		t.Fatalf("status TUN %q", st.TUN)
	}
	if out, err := exec.Command("ip", "-6", "addr", "show", "dev", "ygg0").CombinedOutput(); err != nil || !strings.Contains(string(out), a.Addr().String()) {
		t.Fatalf("ygg0 lacks %s: %v\n%s", a.Addr(), err, out)
	}
	b := startNode(t, Config{Peers: a.Status().Listeners})
	waitFor(t, 15*time.Second, "peering", peeredWithBytes(a, b))

	lb, err := b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, lb, "userspace")
	if got := getRetry(t, a.DialContext, "http://"+net.JoinHostPort(b.Addr().String(), "80")+"/"); !strings.HasPrefix(got, "userspace from ["+a.Addr().String()+"]:") {
		t.Fatalf("a -> b: %q", got)
	}
	la, err := a.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(la.Addr().String(), "["+a.Addr().String()+"]:") {
		t.Fatalf("TUN listener on %s, want the node's address only", la.Addr())
	}
	serveHTTP(t, la, "kernel")
	if got := getRetry(t, b.DialContext, "http://"+net.JoinHostPort(a.Addr().String(), "80")+"/"); !strings.HasPrefix(got, "kernel from ["+b.Addr().String()+"]:") {
		t.Fatalf("b -> a: %q", got)
	}
}
