package wg4to6

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/netns"
)

// This file is the harness of the tests with real network namespaces:
//
//	client  (IPv4 only towards the gateway; WireGuard peer "wgc" with the
//	        device's address, default IPv6 route into it)
//	   c1 10.46.0.2/24  <-veth->  c0 10.46.0.1/24
//	gateway (the Engine: TUN wg46gw, prefix 2001:db8:100::/56)
//	   i0 2001:db8:1::1/64, 10.47.0.1/24  <-veth->  i1 2001:db8:1::2/64, 10.47.0.2/24
//	internet (IPv6 host; routes the prefix via the gateway, as the
//	        operator's upstream router would)
//
// The IPv4 path client -> gateway -> internet exists only to measure the
// plain path against the tunnel. Namespaces are named wg46-PID-SEQ-ROLE
// and deleted when the test ends (t.Cleanup, so also after t.Fatal); those
// of test processes that died are deleted by the next run.

const (
	tbPrefix   = "2001:db8:100::/56"
	tbDevAddr  = "2001:db8:100::10"
	tbInetAddr = "2001:db8:1::2"
	tbGwInet   = "2001:db8:1::1"
	tbGwV4     = "10.46.0.1"
	tbInetV4   = "10.47.0.2"
	tbGwTUN    = "wg46gw"

	tbNATPrefix  = "fd00:46::/64" // NAT66: the devices' private prefix
	tbNATDevAddr = "fd00:46::10"
	tbNATAddr    = "2001:db8:2::46" // NAT66: the public address, routed to the gateway
)

var nsSeq atomic.Int32

// requireNetns skips tb unless it can make namespaces and TUN devices.
func requireNetns(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: network namespaces and TUN devices (CI runs this as root)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skipf("needs /dev/net/tun: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("needs ip(8) (apt-get install iproute2)")
	}
}

// newNetns makes a network namespace for tb, deleted when tb ends.
func newNetns(tb testing.TB, role string) string {
	tb.Helper()
	name := fmt.Sprintf("wg46-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Skipf("cannot make a network namespace: %v: %s", err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("delete network namespace %s: %v: %s", name, err, out)
		}
	})
	mustIP(tb, "-n", name, "link", "set", "lo", "up")
	// No duplicate address detection on the links made here: until a link's
	// link-local address is through it, Linux sends no neighbour
	// solicitation for forwarded packets, which would delay the first ones.
	writeSysctl(tb, name, "/proc/sys/net/ipv6/conf/default/accept_dad", "0")
	return name
}

// cleanStaleNetns deletes the namespaces of test processes that died.
func cleanStaleNetns() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "wg46-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

func mustIP(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// inNetns is netns.Do.
func inNetns(ns string, fn func() error) error { return netns.Do(ns, fn) }

// readSysctl reads a /proc/sys file as seen in namespace ns.
func readSysctl(tb testing.TB, ns, path string) string {
	tb.Helper()
	var s string
	err := inNetns(ns, func() error {
		b, err := os.ReadFile(path)
		s = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func writeSysctl(tb testing.TB, ns, path, val string) {
	tb.Helper()
	if err := inNetns(ns, func() error { return os.WriteFile(path, []byte(val), 0) }); err != nil {
		tb.Fatal(err)
	}
}

// testLog returns a logger that writes to tb's log until tb ends.
func testLog(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tbWriter struct {
	tb   testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tbWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimSpace(string(b)))
	}
	return len(b), nil
}

// testbed is the three namespaces, the engine in the gateway and a
// WireGuard client with one device's address.
type testbed struct {
	gw, client, inet string
	eng              *Engine
	clientKey        Key
	clientDev        *device.Device
	devAddr          netip.Addr
}

// newTestbed builds the topology, starts the engine (routed, or NAT66 when
// nat) and makes the client its one device, with no open port.
func newTestbed(tb testing.TB, nat bool) *testbed {
	tb.Helper()
	requireNetns(tb)
	cleanStaleNetns()
	b := &testbed{devAddr: netip.MustParseAddr(tbDevAddr)}
	cfg := Config{Prefix: netip.MustParsePrefix(tbPrefix), TUN: tbGwTUN}
	upstream := tbPrefix // what the internet routes to the gateway
	if nat {
		b.devAddr = netip.MustParseAddr(tbNATDevAddr)
		cfg.Prefix = netip.MustParsePrefix(tbNATPrefix)
		cfg.NAT66, cfg.NATAddr = true, netip.MustParseAddr(tbNATAddr)
		upstream = tbNATAddr + "/128"
	}
	log := testLog(tb)
	b.gw, b.client, b.inet = newNetns(tb, "gw"), newNetns(tb, "client"), newNetns(tb, "inet")

	mustIP(tb, "link", "add", "c0", "netns", b.gw, "type", "veth", "peer", "name", "c1", "netns", b.client)
	mustIP(tb, "link", "add", "i0", "netns", b.gw, "type", "veth", "peer", "name", "i1", "netns", b.inet)
	writeSysctl(tb, b.client, "/proc/sys/net/ipv6/conf/c1/disable_ipv6", "1") // IPv4 only towards the gateway
	writeSysctl(tb, b.gw, "/proc/sys/net/ipv4/ip_forward", "1")               // the plain IPv4 path, for comparison
	for _, args := range [][]string{
		{"-n", b.gw, "addr", "add", tbGwV4 + "/24", "dev", "c0"},
		{"-n", b.gw, "addr", "add", tbGwInet + "/64", "dev", "i0", "nodad"},
		{"-n", b.gw, "addr", "add", "10.47.0.1/24", "dev", "i0"},
		{"-n", b.client, "addr", "add", "10.46.0.2/24", "dev", "c1"},
		{"-n", b.inet, "addr", "add", tbInetAddr + "/64", "dev", "i1", "nodad"},
		{"-n", b.inet, "addr", "add", tbInetV4 + "/24", "dev", "i1"},
		{"-n", b.gw, "link", "set", "c0", "up"},
		{"-n", b.gw, "link", "set", "i0", "up"},
		{"-n", b.client, "link", "set", "c1", "up"},
		{"-n", b.inet, "link", "set", "i1", "up"},
		{"-n", b.client, "route", "add", "10.47.0.0/24", "via", tbGwV4},
		{"-n", b.inet, "route", "add", "10.46.0.0/24", "via", "10.47.0.1"},
		// The operator's part: the upstream routes the prefix to the gateway.
		{"-n", b.inet, "-6", "route", "add", upstream, "via", tbGwInet},
	} {
		mustIP(tb, args...)
	}

	var err error
	if cfg.PrivateKey, err = model.GenerateWGKey(); err != nil {
		tb.Fatal(err)
	}
	if err := inNetns(b.gw, func() error {
		var err error
		b.eng, err = Start(cfg, log)
		return err
	}); err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(func() {
		if err := b.eng.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})

	// The client: a userspace WireGuard peer on a TUN of its own, known to
	// the engine before its first handshake (else the first is lost and
	// the next comes 5 s later).
	if b.clientKey, err = model.GenerateWGKey(); err != nil {
		tb.Fatal(err)
	}
	b.setPeer(tb)
	if err := inNetns(b.client, func() error {
		kt, err := tun.CreateTUN("wgc", DefaultMTU)
		if err != nil {
			return err
		}
		b.clientDev = device.NewDevice(ownTUN(kt, DefaultMTU), conn.NewDefaultBind(), wgLogger(log.With("side", "client")))
		uapi := fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nendpoint=%s:%d\nallowed_ip=::/0\n",
			keyHex(b.clientKey), keyHex(b.eng.PublicKey()), tbGwV4, b.eng.ListenPort())
		if err := b.clientDev.IpcSet(uapi); err != nil {
			return err
		}
		return b.clientDev.Up()
	}); err != nil {
		tb.Fatalf("client WireGuard: %v", err)
	}
	tb.Cleanup(b.clientDev.Close)
	mustIP(tb, "-n", b.client, "-6", "addr", "add", b.devAddr.String()+"/128", "dev", "wgc", "nodad")
	mustIP(tb, "-n", b.client, "link", "set", "wgc", "up")
	mustIP(tb, "-n", b.client, "-6", "route", "add", "default", "dev", "wgc")
	return b
}

// setPeer makes the client's key the engine's one device, with open ports.
func (b *testbed) setPeer(tb testing.TB, open ...string) {
	tb.Helper()
	err := b.eng.SetPeers([]Peer{{PublicKey: b.clientKey.Public(), Addr: netip.PrefixFrom(b.devAddr, 128), Open: open}})
	if err != nil {
		tb.Fatal(err)
	}
}

// listen opens a listener in namespace ns.
func listen(tb testing.TB, ns, network, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// listenPacket opens a packet socket in namespace ns.
func listenPacket(tb testing.TB, ns, network, addr string) net.PacketConn {
	tb.Helper()
	var pc net.PacketConn
	if err := inNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc
}

// dial connects from namespace ns (optionally from local) once, within
// timeout.
func dial(ns, network, local, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		d := net.Dialer{Timeout: timeout}
		if local != "" {
			var err error
			if d.LocalAddr, err = resolve(network, local); err != nil {
				return err
			}
		}
		var err error
		c, err = d.Dial(network, addr)
		return err
	})
	return c, err
}

func resolve(network, addr string) (net.Addr, error) {
	if strings.HasPrefix(network, "udp") {
		return net.ResolveUDPAddr(network, addr)
	}
	return net.ResolveTCPAddr(network, addr)
}

// dialUntil dials until it works or the deadline passes (the first
// packets wait for the WireGuard handshake).
func dialUntil(tb testing.TB, ns, network, addr string, within time.Duration) net.Conn {
	tb.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := dial(ns, network, "", addr, 2*time.Second)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("dial %s from %s: %v", addr, ns, err)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			// Refused or unreachable: the path is not there yet; pace the retries.
			<-time.After(50 * time.Millisecond)
		}
	}
}

// echoServer accepts connections on ln and echoes them; it reports the
// remote address of each connection on the returned channel.
func echoServer(ln net.Listener) <-chan netip.AddrPort {
	remotes := make(chan netip.AddrPort, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case remotes <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default:
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return remotes
}

// roundTrip writes msg on c and reads it back within timeout.
func roundTrip(c net.Conn, msg string, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("read %q, want %q", buf, msg)
	}
	return nil
}
