package wg4to6

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// TestEngineNetns runs the engine in a gateway namespace between an
// IPv4-only WireGuard client and an IPv6 internet host (netns_test.go).
func TestEngineNetns(t *testing.T) {
	b := newTestbed(t, false)
	devKey := b.clientKey.Public()

	srv := listen(t, b.inet, "tcp6", "["+tbInetAddr+"]:0")
	remotes := echoServer(srv)

	var out net.Conn // client -> internet, kept open
	if !t.Run("client reaches an IPv6-only server from its own routed address", func(t *testing.T) {
		out = dialUntil(t, b.client, "tcp6", srv.Addr().String(), 20*time.Second)
		if err := roundTrip(out, "hello", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := <-remotes; got.Addr() != b.devAddr {
			t.Errorf("server sees %s, want the device's own address %s (routed, no NAT)", got.Addr(), b.devAddr)
		}
	}) {
		return
	}
	t.Cleanup(func() { out.Close() })

	t.Run("ping", func(t *testing.T) {
		pc := listenPacket(t, b.client, "ip6:ipv6-icmp", tbDevAddr)
		req := echo(icmpEchoRequest, 4646, 1) // the kernel fills in the checksum
		if _, err := pc.WriteTo(req, &net.IPAddr{IP: net.ParseIP(tbInetAddr)}); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("no echo reply: %v", err)
			}
			if n >= 8 && buf[0] == icmpEchoReply && binary.BigEndian.Uint16(buf[4:]) == 4646 {
				if from.String() != tbInetAddr {
					t.Errorf("echo reply from %s", from)
				}
				return
			}
		}
	})

	t.Run("the gateway's ICMPv6 errors reach the device", func(t *testing.T) {
		// The gateway has no route to 2001:db8:9::/48: its kernel answers
		// the SYN with "no route", which the policy lets through as related.
		start := time.Now()
		c, err := dial(b.client, "tcp6", "", "[2001:db8:9::1]:80", 5*time.Second)
		if err == nil {
			c.Close()
			t.Fatal("connected to an unreachable address")
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("dial timed out after %v, want the unreachable error at once: %v", time.Since(start), err)
		}
		if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("dial: %v, want host or network unreachable", err)
		}
	})

	devLn := listen(t, b.client, "tcp6", "["+tbDevAddr+"]:2222")
	devRemotes := echoServer(devLn)
	devAddr := devLn.Addr().String()

	t.Run("the internet cannot open a connection to the device", func(t *testing.T) {
		before := b.eng.Stats()[devKey].Dropped
		c, err := dial(b.inet, "tcp6", "", devAddr, time.Second)
		if err == nil {
			c.Close()
			t.Fatal("connected to a device with no open port")
		}
		if after := b.eng.Stats()[devKey].Dropped; after <= before {
			t.Errorf("dropped %d -> %d: the SYNs were not counted", before, after)
		}
	})

	var in net.Conn // internet -> device, through an open port
	if !t.Run("an opened port is reachable at once", func(t *testing.T) {
		b.setPeer(t, "tcp/2222")
		in = dialUntil(t, b.inet, "tcp6", devAddr, 5*time.Second)
		if err := roundTrip(in, "inbound", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := <-devRemotes; got.Addr().String() != tbInetAddr {
			t.Errorf("device sees %s, want %s", got.Addr(), tbInetAddr)
		}
	}) {
		return
	}
	t.Cleanup(func() { in.Close() })

	t.Run("closing the port cuts its connections at once", func(t *testing.T) {
		b.setPeer(t)
		if err := roundTrip(in, "closed", 1500*time.Millisecond); err == nil {
			t.Error("a connection to a port closed since still carries data")
		}
		if c, err := dial(b.inet, "tcp6", "", devAddr, time.Second); err == nil {
			c.Close()
			t.Error("connected to a port closed since")
		}
		if err := roundTrip(out, "still", 5*time.Second); err != nil {
			t.Errorf("the device's own connection broke: %v", err)
		}
	})

	udp := listenPacket(t, b.inet, "udp6", "["+tbInetAddr+"]:0")
	// sendFrom sends one datagram from each source address to the internet
	// host, then one from the device's own; it returns the sources of what
	// arrived up to that last one. One WireGuard peer's packets are
	// delivered in order, so what was not dropped arrived before.
	sendFrom := func(t *testing.T, dst string, sources ...string) []string {
		t.Helper()
		for _, src := range sources {
			c, err := dial(b.client, "udp6", "["+src+"]:0", dst, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte(src))
			c.Close()
		}
		c, err := dial(b.client, "udp6", "["+tbDevAddr+"]:0", udp.LocalAddr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("marker"))
		udp.SetReadDeadline(time.Now().Add(5 * time.Second))
		var got []string
		buf := make([]byte, 100)
		for {
			n, _, err := udp.ReadFrom(buf)
			if err != nil {
				t.Fatalf("the marker did not arrive: %v", err)
			}
			if string(buf[:n]) == "marker" {
				return got
			}
			got = append(got, string(buf[:n]))
		}
	}

	t.Run("a spoofed inner source is dropped", func(t *testing.T) {
		spoofs := []string{"2001:db8:100::99", "2001:db8:7::1"} // another prefix address; outside it
		for _, a := range spoofs {
			mustIP(t, "-n", b.client, "-6", "addr", "add", a+"/128", "dev", "wgc", "nodad")
		}
		if got := sendFrom(t, udp.LocalAddr().String(), spoofs...); len(got) > 0 {
			t.Errorf("spoofed datagrams arrived: %q", got)
		}
	})

	t.Run("the prefix, the gateway and private networks are out of reach", func(t *testing.T) {
		before := b.eng.Stats()[devKey].Dropped
		for _, dst := range []string{"[2001:db8:100::1]:9", "[2001:db8:100::20]:9", "[fd00::1]:9"} {
			c, err := dial(b.client, "udp6", "["+tbDevAddr+"]:0", dst, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("x"))
			c.Close()
		}
		sendFrom(t, udp.LocalAddr().String())
		if after := b.eng.Stats()[devKey].Dropped; after-before < 3 {
			t.Errorf("dropped %d -> %d, want 3 more", before, after)
		}
	})

	t.Run("stats", func(t *testing.T) {
		st, ok := b.eng.Stats()[devKey]
		if !ok {
			t.Fatal("no stats for the device")
		}
		if st.RxBytes == 0 || st.TxBytes == 0 {
			t.Errorf("rx %d tx %d bytes", st.RxBytes, st.TxBytes)
		}
		if time.Since(st.LastHandshake) > time.Minute {
			t.Errorf("last handshake %v", st.LastHandshake)
		}
		if st.Endpoint.Addr().String() != "10.46.0.2" {
			t.Errorf("endpoint %v", st.Endpoint)
		}
		t.Logf("%+v", st)
	})

	t.Run("a removed device is cut at once", func(t *testing.T) {
		b.setPeer(t, "tcp/2222")
		in2 := dialUntil(t, b.inet, "tcp6", devAddr, 5*time.Second)
		defer in2.Close()
		if err := roundTrip(in2, "before", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := b.eng.SetPeers(nil); err != nil {
			t.Fatal(err)
		}
		if _, ok := b.eng.Stats()[devKey]; ok {
			t.Error("stats still list the device")
		}
		uapi, _ := b.eng.dev.IpcGet()
		if strings.Contains(uapi, keyHex(devKey)) {
			t.Error("WireGuard still has the peer")
		}
		if err := roundTrip(out, "after", 1500*time.Millisecond); err == nil {
			t.Error("the device's connection still carries data")
		}
		if err := roundTrip(in2, "after", 1500*time.Millisecond); err == nil {
			t.Error("a connection to the device still carries data")
		}
	})

	t.Run("Close removes the TUN and the route", func(t *testing.T) {
		if got := readSysctl(t, b.gw, "/proc/sys/net/ipv6/conf/all/forwarding"); got != "1" {
			t.Errorf("forwarding is %s while running", got)
		}
		if err := b.eng.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.eng.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if out, err := exec.Command("ip", "-n", b.gw, "link", "show", tbGwTUN).CombinedOutput(); err == nil {
			t.Errorf("the TUN is still there: %s", out)
		}
		if out, _ := exec.Command("ip", "-n", b.gw, "-6", "route", "show", tbPrefix).CombinedOutput(); len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("the route is still there: %s", out)
		}
		if got := readSysctl(t, b.gw, "/proc/sys/net/ipv6/conf/all/forwarding"); got != "0" {
			t.Errorf("forwarding is %s after Close, want 0 as before Start", got)
		}
		if err := b.eng.SetPeers(nil); err == nil {
			t.Error("SetPeers after Close worked")
		}
	})
}

// TestEngineNoLeak starts and stops an engine with a peer: no goroutine
// outlives Close, and forwarding that was on stays on.
func TestEngineNoLeak(t *testing.T) {
	requireNetns(t)
	cleanStaleNetns()
	ns := newNetns(t, "leak")
	writeSysctl(t, ns, "/proc/sys/net/ipv6/conf/all/forwarding", "1")
	before := runtime.NumGoroutine()
	key, _ := model.GenerateWGKey()
	var e *Engine
	if err := inNetns(ns, func() error {
		var err error
		e, err = Start(Config{PrivateKey: key, Prefix: netip.MustParsePrefix(tbPrefix), TUN: "wg46leak"}, testLog(t))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	peer, _ := model.GenerateWGKey()
	if err := e.SetPeers([]Peer{{PublicKey: peer.Public(), Addr: netip.MustParsePrefix("2001:db8:100:5::/64"), Open: []string{"all"}}}); err != nil {
		t.Fatal(err)
	}
	if e.ListenPort() == 0 {
		t.Error("ListenPort 0")
	}
	// After a failed configuration, the next SetPeers rebuilds WireGuard's
	// peers from scratch.
	e.mu.Lock()
	e.resync = true
	e.mu.Unlock()
	peer2, _ := model.GenerateWGKey()
	if err := e.SetPeers([]Peer{{PublicKey: peer2.Public(), Addr: netip.MustParsePrefix("2001:db8:100::7/128")}}); err != nil {
		t.Fatal(err)
	}
	if uapi, _ := e.dev.IpcGet(); strings.Count(uapi, "public_key=") != 1 || !strings.Contains(uapi, keyHex(peer2.Public())) ||
		!strings.Contains(uapi, "allowed_ip=2001:db8:100::7/128") {
		t.Errorf("WireGuard after a resync:\n%s", uapi)
	}
	if out, err := exec.Command("ip", "-n", ns, "-6", "addr", "show", "dev", "wg46leak").CombinedOutput(); err != nil || !strings.Contains(string(out), "2001:db8:100::1/128") {
		t.Errorf("gateway address: %v: %s", err, out)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); len(st) != 1 {
		t.Errorf("Stats after Close: %v", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before Start, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		<-time.After(20 * time.Millisecond)
	}
	if got := readSysctl(t, ns, "/proc/sys/net/ipv6/conf/all/forwarding"); got != "1" {
		t.Errorf("forwarding is %s after Close; it was 1 before Start", got)
	}
}

// TestEngineNAT66Netns runs the engine in NAT66 mode: the device has a
// private (ULA) address, and the internet sees the NAT address.
func TestEngineNAT66Netns(t *testing.T) {
	b := newTestbed(t, true)
	srv := listen(t, b.inet, "tcp6", "["+tbInetAddr+"]:0")
	remotes := echoServer(srv)
	out := dialUntil(t, b.client, "tcp6", srv.Addr().String(), 20*time.Second)
	defer out.Close()
	if err := roundTrip(out, "hello", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := <-remotes; got.Addr().String() != tbNATAddr {
		t.Errorf("server sees %s, want the NAT address %s", got.Addr(), tbNATAddr)
	}

	// UDP both ways, through the flow the device opened.
	udp := listenPacket(t, b.inet, "udp6", "["+tbInetAddr+"]:0")
	c, err := dial(b.client, "udp6", "", udp.LocalAddr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	udp.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := udp.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("udp: %q %v", buf[:n], err)
	}
	if got := from.(*net.UDPAddr).AddrPort().Addr().String(); got != tbNATAddr {
		t.Errorf("udp from %s, want %s", got, tbNATAddr)
	}
	udp.WriteTo([]byte("pong"), from)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("udp reply: %q %v", buf[:n], err)
	}

	// Nothing reaches the device unasked, even with Open.
	b.setPeer(t, "all")
	devLn := listen(t, b.client, "tcp6", "[::]:2222")
	echoServer(devLn)
	for _, addr := range []string{"[" + tbNATAddr + "]:2222", "[" + tbNATDevAddr + "]:2222"} {
		if c, err := dial(b.inet, "tcp6", "", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("the internet connected to %s", addr)
		}
	}
	if err := roundTrip(out, "still", 5*time.Second); err != nil {
		t.Errorf("the device's own connection broke: %v", err)
	}
}
