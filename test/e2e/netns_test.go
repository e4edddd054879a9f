//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/webgw/webgw/internal/netns"
)

// This file is the multi-host harness: a testNet is a small network for one
// test in which every host is a Linux network namespace, so gateways,
// agents, etcd and clients each get their own addresses and ports (443, 53)
// while nothing touches the root namespace or any outside network.
//
//	switch namespace: bridge br0, one port per host (named after the host)
//	bridge hosts:     eth0 with 10.R.0.OCTET/24 and fd00:R::OCTET/64, no default route
//	NAT router:       a bridge host that also has "lan" 192.168.P.1/24 and
//	                  masquerades (nftables) what leaves eth0 from the LAN
//	private host:     eth0 192.168.P.2/24 only, default route via the router;
//	                  reachable only through connections it opened
//
// R is picked per topology (P is R, R+1, ... for the NATs in order). The
// addresses exist only inside the topology's namespaces, so two tests with
// the same R could not clash anyway; a distinct R keeps their logs apart.
// Namespaces are named wgwe-PID-SEQ-HOST; a topology's teardown (t.Cleanup,
// so also after t.Fatal) deletes them, and a new topology deletes those of
// test processes that died before they could.

// helperEnv selects a helper mode of a re-executed test binary (TestMain).
const helperEnv = "WEBGW_E2E_HELPER"

func init() {
	helpers["etcd"] = etcdHelper
}

// netSeq numbers the topologies of this process.
var netSeq atomic.Int32

// hostSpec is one host on the bridge.
type hostSpec struct {
	// Name is the host's name: the end of its namespace name and the name
	// of its switch port, so at most 15 bytes.
	Name string
	// Octet is the last byte of its addresses: 10.R.0.Octet and
	// fd00:R::Octet (the decimal digits read as hex). 1-254, unique.
	Octet byte
	// Family is 0 for IPv4 and IPv6, 4 for IPv4 only, 6 for IPv6 only.
	Family int
}

// natSpec is a router on the bridge with one private host behind it.
type natSpec struct {
	Router hostSpec // the router's place on the bridge
	Host   string   // the private host's name
}

// netSpec says which hosts a testNet has.
type netSpec struct {
	Hosts []hostSpec
	NATs  []natSpec
}

// nsHost is one host of a testNet.
type nsHost struct {
	Name string
	NS   string     // network namespace name (/run/netns/NS)
	IP4  netip.Addr // its IPv4 address; invalid when it has none
	IP6  netip.Addr // its IPv6 address; invalid when it has none
}

// testNet is a topology of network namespaces owned by one test.
type testNet struct {
	t     *testing.T // the owner: processes started in the net die with it
	tag   string     // wgwe-PID-SEQ, the prefix of its namespace names
	R     int        // the bridge subnet number: 10.R.0.0/24, fd00:R::/64
	sw    string     // the switch namespace
	hosts map[string]*nsHost
	nss   []string // namespaces made, for the teardown
	cwd   string   // working directory of commands run to completion
}

const ipTool = "ip"

// newTestNet builds the topology of spec for t and tears it down when t
// ends. It skips t when not root or network namespaces cannot be made.
func newTestNet(t *testing.T, spec netSpec) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (the e2e cluster tests run as root in CI)")
	}
	if _, err := exec.LookPath(ipTool); err != nil {
		t.Skip("ip (iproute2) is not installed (apt-get install iproute2; .ci/run does)")
	}
	if len(spec.NATs) > 0 {
		needTool(t, "nft")
	}
	seq := netSeq.Add(1)
	n := &testNet{
		t:     t,
		tag:   fmt.Sprintf("wgwe-%d-%d", os.Getpid(), seq),
		R:     1 + (os.Getpid()*7+int(seq))%199,
		hosts: map[string]*nsHost{},
		cwd:   t.TempDir(),
	}
	if n.R+len(spec.NATs) > 255 {
		t.Fatalf("netSpec: %d NATs are too many", len(spec.NATs))
	}
	cleanStaleNetns()
	t.Cleanup(n.teardown)

	n.sw = n.tag + "-sw"
	if err := n.ip("netns", "add", n.sw); err != nil {
		t.Skipf("cannot make a network namespace: %v", err)
	}
	n.nss = append(n.nss, n.sw)
	n.must(t, "-n", n.sw, "link", "set", "lo", "up")
	n.must(t, "-n", n.sw, "link", "add", "br0", "type", "bridge")
	n.must(t, "-n", n.sw, "link", "set", "br0", "up")

	for _, hs := range spec.Hosts {
		n.addBridged(t, hs)
	}
	for i, ns := range spec.NATs {
		n.addNAT(t, ns, n.R+i)
	}
	return n
}

// addBridged adds a host with a veth to the bridge.
func (n *testNet) addBridged(t *testing.T, hs hostSpec) *nsHost {
	t.Helper()
	if len(hs.Name) == 0 || len(hs.Name) > 15 || strings.ContainsAny(hs.Name, "/ ") {
		t.Fatalf("netSpec: host name %q: want 1-15 bytes, no slash or space", hs.Name)
	}
	if hs.Octet == 0 || hs.Octet == 255 {
		t.Fatalf("netSpec: host %s: octet %d: want 1-254", hs.Name, hs.Octet)
	}
	h := n.addNS(t, hs.Name)
	n.must(t, "-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", hs.Name, "netns", n.sw)
	n.must(t, "-n", n.sw, "link", "set", "dev", hs.Name, "master", "br0", "up")
	if hs.Family != 6 {
		h.IP4 = netip.MustParseAddr(fmt.Sprintf("10.%d.0.%d", n.R, hs.Octet))
		n.must(t, "-n", h.NS, "addr", "add", h.IP4.String()+"/24", "dev", "eth0")
	}
	if hs.Family != 4 {
		h.IP6 = netip.MustParseAddr(fmt.Sprintf("fd00:%d::%d", n.R, hs.Octet))
		n.must(t, "-n", h.NS, "addr", "add", h.IP6.String()+"/64", "dev", "eth0", "nodad")
	}
	n.must(t, "-n", h.NS, "link", "set", "eth0", "up")
	return h
}

// addNAT adds a router on the bridge and a private host behind it on
// 192.168.p.0/24.
func (n *testNet) addNAT(t *testing.T, ns natSpec, p int) {
	t.Helper()
	if ns.Router.Family == 6 {
		t.Fatalf("netSpec: NAT router %s needs IPv4", ns.Router.Name)
	}
	r := n.addBridged(t, ns.Router)
	h := n.addNS(t, ns.Host)
	lan := fmt.Sprintf("192.168.%d.", p)
	h.IP4 = netip.MustParseAddr(lan + "2")
	n.must(t, "-n", r.NS, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", h.NS)
	n.must(t, "-n", r.NS, "addr", "add", lan+"1/24", "dev", "lan")
	n.must(t, "-n", r.NS, "link", "set", "lan", "up")
	n.must(t, "-n", h.NS, "addr", "add", lan+"2/24", "dev", "eth0")
	n.must(t, "-n", h.NS, "link", "set", "eth0", "up")
	n.must(t, "-n", h.NS, "route", "add", "default", "via", lan+"1")
	if err := inNetns(r.NS, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatalf("turn on forwarding in %s: %v", r.NS, err)
	}
	// A home router: the LAN's connections leave with the router's
	// address; from the bridge only their replies come back in.
	rules := fmt.Sprintf(`table ip webgw {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[1]s0/24 oifname "eth0" masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname "eth0" oifname "lan" drop
	}
}
`, lan)
	cmd := exec.Command(ipTool, "netns", "exec", r.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", r.NS, err, out)
	}
}

// addNS makes a namespace with its loopback up.
func (n *testNet) addNS(t *testing.T, name string) *nsHost {
	t.Helper()
	if _, dup := n.hosts[name]; dup || name == "sw" {
		t.Fatalf("netSpec: host name %q used twice (or reserved)", name)
	}
	h := &nsHost{Name: name, NS: n.tag + "-" + name}
	n.must(t, "netns", "add", h.NS)
	n.nss = append(n.nss, h.NS)
	n.must(t, "-n", h.NS, "link", "set", "lo", "up")
	n.hosts[name] = h
	return h
}

// teardown deletes the namespaces; their links go with them. Processes
// started in them have been stopped by then (their cleanups ran first).
func (n *testNet) teardown() {
	for i := len(n.nss) - 1; i >= 0; i-- {
		if err := n.ip("netns", "del", n.nss[i]); err != nil {
			n.t.Errorf("teardown: %v", err)
		}
	}
}

// ip runs ip(8) with args.
func (n *testNet) ip(args ...string) error {
	out, err := exec.Command(ipTool, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (n *testNet) must(t testing.TB, args ...string) {
	t.Helper()
	if err := n.ip(args...); err != nil {
		t.Fatal(err)
	}
}

// host returns the host called name; an unknown name is a bug in the test.
func (n *testNet) host(name string) *nsHost {
	h, ok := n.hosts[name]
	if !ok {
		panic(fmt.Sprintf("testNet %s has no host %q", n.tag, name))
	}
	return h
}

// cleanStaleNetns deletes the namespaces of e2e test processes that no
// longer run (killed before their cleanups ran).
func cleanStaleNetns() {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "wgwe-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a running test process owns it
		}
		exec.Command(ipTool, "netns", "del", e.Name()).Run()
	}
}

// cmdResult is what a command run to completion gave.
type cmdResult struct {
	stdout, stderr string
	code           int  // exit code; -1 when killed
	timedOut       bool // killed at the timeout
	took           time.Duration
}

func (r cmdResult) String() string {
	s := fmt.Sprintf("exit %d after %v", r.code, r.took.Round(time.Millisecond))
	if r.timedOut {
		s += " (killed at the timeout)"
	}
	return s + "\nstdout:\n" + r.stdout + "\nstderr:\n" + tail(r.stderr, 4000)
}

// exec runs argv in host's namespace to completion, killing it after
// timeout. It fails t only when argv cannot be started.
func (n *testNet) exec(t testing.TB, host string, timeout time.Duration, argv ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ipTool, append([]string{"netns", "exec", n.host(host).NS}, argv...)...)
	cmd.Dir = n.cwd
	cmd.Env = cleanEnv()
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	r := cmdResult{stdout: o.String(), stderr: e.String(), took: time.Since(start), timedOut: ctx.Err() != nil}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !r.timedOut {
		t.Fatalf("run %s in %s: %v", strings.Join(argv, " "), host, err)
	}
	r.code = -1
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	return r
}

// webgw runs the webgw binary with args in host's namespace (at most timeout).
func (n *testNet) webgw(t testing.TB, host string, timeout time.Duration, args ...string) cmdResult {
	t.Helper()
	return n.exec(t, host, timeout, append([]string{webgwBin}, args...)...)
}

// mustWebgw is webgw that fails t unless it exits 0 within 30 s; it returns stdout.
func (n *testNet) mustWebgw(t testing.TB, host string, args ...string) string {
	t.Helper()
	r := n.webgw(t, host, 30*time.Second, args...)
	if r.code != 0 || r.timedOut {
		t.Fatalf("in %s: webgw %s: %s", host, strings.Join(args, " "), r)
	}
	return r.stdout
}

// start starts argv in host's namespace with extra environment variables,
// like startProc: output is kept and logged if the test fails. The process
// lives until the topology's test ends (or is killed), also when start is
// called from a subtest; the kernel kills it if the test process dies.
func (n *testNet) start(t testing.TB, host, name string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name + "@" + host, args: argv, done: make(chan struct{})}
	p.cmd = exec.Command(ipTool, append([]string{"netns", "exec", n.host(host).NS}, argv...)...)
	p.cmd.Dir = n.t.TempDir()
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	n.t.Cleanup(func() {
		if p.running() {
			p.cmd.Process.Kill()
		}
		<-p.done
		if n.t.Failed() {
			n.t.Logf("--- %s (%s) exited %v\nstdout:\n%s\nstderr (tail):\n%s",
				p.name, strings.Join(p.args, " "), p.state, tail(p.stdout.String(), 4000), tail(p.stderr.String(), 6000))
		}
	})
	return p
}

// inNetns is netns.Do.
func inNetns(ns string, fn func() error) error { return netns.Do(ns, fn) }

// dial connects from host to addr, a literal IP:PORT (a name would be
// resolved outside the namespace); network is tcp or udp.
func (n *testNet) dial(ctx context.Context, host, network, addr string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return nil, fmt.Errorf("dial %s from %s: want a literal IP:PORT: %w", addr, host, err)
	}
	var c net.Conn
	err := inNetns(n.host(host).NS, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// listen opens a TCP listener in host on addr (a literal IP:PORT, port 0
// for a free one), closed when t ends.
func (n *testNet) listen(t testing.TB, host, addr string) net.Listener {
	t.Helper()
	if _, err := netip.ParseAddrPort(addr); err != nil {
		t.Fatalf("listen in %s on %q: want a literal IP:PORT", host, addr)
	}
	var ln net.Listener
	err := inNetns(n.host(host).NS, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s on %s: %v", host, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// listenUDP opens a UDP socket in host on addr (a literal IP:PORT, port 0
// for a free one), closed when t ends.
func (n *testNet) listenUDP(t testing.TB, host, addr string) net.PacketConn {
	t.Helper()
	if _, err := netip.ParseAddrPort(addr); err != nil {
		t.Fatalf("listen in %s on udp %q: want a literal IP:PORT", host, addr)
	}
	var pc net.PacketConn
	err := inNetns(n.host(host).NS, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s on udp %s: %v", host, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// serveHTTP serves h in host on addr (see listen) until t ends and returns
// its http://IP:PORT URL.
func (n *testNet) serveHTTP(t testing.TB, host, addr string, h http.Handler) string {
	t.Helper()
	ln := n.listen(t, host, addr)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// httpClient returns a client in host that connects to addr (IP:PORT) for
// every URL, trusting roots (nil: the system's).
func (n *testNet) httpClient(t testing.TB, host, addr string, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return n.dial(ctx, host, "tcp", addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// get GETs url with c and returns the status and body.
func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// lookup asks the DNS server at server (an IP, port 53) from host for
// name's records of type qtype (A or AAAA) over UDP, and returns their
// addresses in the answer's order. An answer other than NOERROR is an error.
func (n *testNet) lookup(ctx context.Context, host string, server netip.Addr, name string, qtype uint16) ([]netip.Addr, error) {
	c, err := n.dial(ctx, host, "udp", netip.AddrPortFrom(server, 53).String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = false
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(m); err != nil {
		return nil, fmt.Errorf("ask %s: %w", server, err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", server, err)
	}
	if r.Id != m.Id {
		return nil, fmt.Errorf("ask %s: answer id %d, want %d", server, r.Id, m.Id)
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("ask %s for %s: %s", server, name, dns.RcodeToString[r.Rcode])
	}
	var out []netip.Addr
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A.To4())
			out = append(out, a)
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	return out, nil
}

// inNS reports whether process pid is in host's network namespace.
func (n *testNet) inNS(pid int, host string) bool {
	var a, b unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a) != nil || unix.Stat("/run/netns/"+n.host(host).NS, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// nsEtcd is a one-member etcd in its own process in a host of a testNet
// (the test binary re-executed in helper mode), so it can be killed and
// started again on the same data dir and address.
type nsEtcd struct {
	n      *testNet
	host   string
	dir    string
	client string // IP:PORT of its client URL
	peer   string
	p      *proc // the current process
}

// startEtcd starts etcd in host on its address, ports 2379 and 2380.
func (n *testNet) startEtcd(t testing.TB, host string) *nsEtcd {
	t.Helper()
	ip := n.host(host).IP4
	if !ip.IsValid() {
		ip = n.host(host).IP6
	}
	e := &nsEtcd{n: n, host: host, dir: n.t.TempDir(),
		client: netip.AddrPortFrom(ip, 2379).String(), peer: netip.AddrPortFrom(ip, 2380).String()}
	e.start(t)
	return e
}

// start starts (or restarts) etcd and waits until it serves.
func (e *nsEtcd) start(t testing.TB) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.p = e.n.start(t, e.host, "etcd", []string{helperEnv + "=etcd"}, exe, "-dir", e.dir, "-client", e.client, "-peer", e.peer)
	e.p.waitLine(t, regexp.MustCompile(`^ready$`), 30*time.Second)
}

// kill kills etcd with SIGKILL and waits for it.
func (e *nsEtcd) kill(t testing.TB) { e.p.kill(t) }

// etcdHelper is helper mode "etcd": an embedded one-member etcd (as
// startEtcd) on -client and -peer with data in -dir. It prints "ready" when
// it serves and stops on SIGTERM or SIGINT.
func etcdHelper(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dir := fs.String("dir", "", "data dir")
	client := fs.String("client", "", "client listen address IP:PORT")
	peer := fs.String("peer", "", "peer listen address IP:PORT")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Name = "webgw-e2e"
	cfg.Dir = *dir
	cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: *client}}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: *peer}}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true // a kill -9 loses nothing; only a power cut would
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	defer srv.Close()
	select {
	case <-srv.Server.ReadyNotify():
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not ready within 30 s")
		return 1
	}
	fmt.Println("ready")
	select {
	case <-sig:
		return 0
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
}

// TestNetns checks the harness itself: addresses and isolation, NAT, running
// programs and dialling in namespaces, etcd killed and restarted in its
// namespace, and the teardown after a test that ends early.
func TestNetns(t *testing.T) {
	t.Parallel()
	n := newTestNet(t, netSpec{
		Hosts: []hostSpec{{Name: "a", Octet: 11}, {Name: "b", Octet: 12}, {Name: "v6only", Octet: 13, Family: 6}, {Name: "etcd", Octet: 20}},
		NATs:  []natSpec{{Router: hostSpec{Name: "nat", Octet: 2}, Host: "priv"}},
	})
	a, b := n.host("a"), n.host("b")

	// accept listens in host on ip and reports the remote address of the
	// first connection.
	accept := func(t *testing.T, host string, ip netip.Addr) (string, <-chan string) {
		ln := n.listen(t, host, netip.AddrPortFrom(ip, 0).String())
		remote := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				remote <- "accept: " + err.Error()
				return
			}
			remote <- c.RemoteAddr().String()
			c.Close()
		}()
		return ln.Addr().String(), remote
	}
	// dialFrom connects from host to addr; dialFail is for a connection
	// that should fail, and gives it 500 ms (a dropped SYN fails only late).
	dialFrom := func(host, addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := n.dial(ctx, host, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	dialFail := func(host, addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		c, err := n.dial(ctx, host, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}

	t.Run("bridge", func(t *testing.T) {
		for _, ip := range []netip.Addr{a.IP4, a.IP6} {
			addr, remote := accept(t, "a", ip)
			if err := dialFrom("b", addr); err != nil {
				t.Fatalf("b -> a %s: %v", addr, err)
			}
			want := b.IP4
			if ip.Is6() {
				want = b.IP6
			}
			if got := <-remote; remoteIP(got) != want {
				t.Errorf("a saw the connection from b come from %s, want %s", got, want)
			}
		}
		// UDP across the bridge, IPv6.
		pc := n.listenUDP(t, "a", netip.AddrPortFrom(a.IP6, 0).String())
		uc, err := n.dial(context.Background(), "v6only", "udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		uc.Write([]byte("ping"))
		pc.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 16)
		if k, from, err := pc.ReadFrom(buf); err != nil || string(buf[:k]) != "ping" || remoteIP(from.String()) != n.host("v6only").IP6 {
			t.Errorf("UDP from v6only to a: %q from %v, %v", buf[:k], from, err)
		}
		r := n.exec(t, "v6only", 10*time.Second, "ip", "-o", "addr", "show", "dev", "eth0")
		if want := fmt.Sprintf("inet6 fd00:%d::13/64", n.R); !strings.Contains(r.stdout, want) || strings.Contains(r.stdout, "inet ") {
			t.Errorf("v6only's eth0: want %s and no IPv4:\n%s", want, r)
		}
		if n.host("v6only").IP4.IsValid() {
			t.Error("v6only has an IPv4 address")
		}
	})

	t.Run("nat", func(t *testing.T) {
		addr, remote := accept(t, "a", a.IP4)
		if err := dialFrom("priv", addr); err != nil {
			t.Fatalf("priv -> a %s: %v", addr, err)
		}
		if got, want := <-remote, n.host("nat").IP4; remoteIP(got) != want {
			t.Errorf("a saw priv's connection come from %s, want the router's address %s (masquerade)", got, want)
		}
		privAddr, _ := accept(t, "priv", n.host("priv").IP4)
		if err := dialFail("a", privAddr); err == nil {
			t.Errorf("a reached the private host at %s", privAddr)
		}
		// The router itself can reach the LAN, but a bridge host that
		// routes the LAN through the router still cannot get in.
		if err := dialFrom("nat", privAddr); err != nil {
			t.Errorf("the router cannot reach its LAN host at %s: %v", privAddr, err)
		}
		lan := n.host("priv").IP4.As4()
		n.must(t, "-n", b.NS, "route", "add", fmt.Sprintf("192.168.%d.0/24", lan[2]), "via", n.host("nat").IP4.String())
		if err := dialFail("b", privAddr); err == nil {
			t.Errorf("b, routing via the router, reached the private host at %s", privAddr)
		}
	})

	t.Run("etcd", func(t *testing.T) {
		e := n.startEtcd(t, "etcd")
		if !n.inNS(e.p.cmd.Process.Pid, "etcd") {
			t.Fatalf("etcd (pid %d) is not in the etcd namespace", e.p.cmd.Process.Pid)
		}
		c := n.httpClient(t, "a", e.client, nil)
		kv := func(op string, body map[string]string) (string, error) {
			b, _ := json.Marshal(body)
			resp, err := c.Post("http://"+e.client+"/v3/kv/"+op, "application/json", bytes.NewReader(b))
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			out, err := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return "", fmt.Errorf("%s: %s: %s", op, resp.Status, out)
			}
			return string(out), err
		}
		b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
		if _, err := kv("put", map[string]string{"key": b64("k"), "value": b64("kept")}); err != nil {
			t.Fatal(err)
		}
		e.kill(t)
		c.CloseIdleConnections()
		if err := dialFail("a", e.client); err == nil {
			t.Fatal("etcd still answers after kill -9")
		}
		e.start(t)
		out, err := kv("range", map[string]string{"key": b64("k")})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, b64("kept")) {
			t.Errorf("after the restart on the same data dir, k is not kept: %s", out)
		}
	})

	// A test that ends early (here by Skip, as by Fatal) leaves no
	// namespace and no process behind.
	var inner *testNet
	var sleeper *proc
	t.Run("teardown", func(t *testing.T) {
		inner = newTestNet(t, netSpec{Hosts: []hostSpec{{Name: "x", Octet: 1}}, NATs: []natSpec{{Router: hostSpec{Name: "r", Octet: 2}, Host: "p"}}})
		sleeper = inner.start(t, "p", "sleep", nil, "sleep", "600")
		// ip netns exec enters the namespace and then execs sleep in the
		// same process, so a kill of the pid reaches sleep itself.
		var comm []byte
		if !poll(5*time.Second, func() bool {
			comm, _ = os.ReadFile(fmt.Sprintf("/proc/%d/comm", sleeper.cmd.Process.Pid))
			return strings.TrimSpace(string(comm)) == "sleep"
		}) {
			t.Errorf("the started pid runs %q, want sleep itself (ip netns exec must exec, not fork)", comm)
		}
		if !inner.inNS(sleeper.cmd.Process.Pid, "p") {
			t.Error("sleep does not run in its namespace")
		}
		t.Skip("ending early on purpose: TestNetns checks the teardown")
	})
	if inner == nil || sleeper == nil {
		t.Fatal("the teardown subtest did not build its topology")
	}
	if sleeper.running() {
		t.Error("a process started in the topology still runs after its test ended")
	}
	out, err := exec.Command(ipTool, "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), inner.tag+"-") {
		t.Errorf("namespaces of an ended test are left:\n%s", out)
	}
}

// remoteIP is the address of IP:PORT; invalid if s is not one.
func remoteIP(s string) netip.Addr {
	ap, _ := netip.ParseAddrPort(s)
	return ap.Addr()
}
