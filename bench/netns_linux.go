package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Where ip(8) is; the lossy part needs it (and root).
const ipTool = "/usr/sbin/ip"

// lossyNet is two network namespaces joined by an emulated lossy link:
// gw (gateway and load generator, gwIP) and agent (agent and backend,
// agentIP). The link is a TUN device in each namespace, and `bench link`
// copies packets between them, dropping and delaying them as -netem says.
// The kernel here has no netem qdisc (CONFIG_NET_SCH_NETEM is off), so the
// emulation is done in user space.
type lossyNet struct {
	gw, agent     string // namespace names, wgwb-<pid>-g and wgwb-<pid>-a
	gwIP, agentIP string
	link          *proc
}

const (
	lossyGwIP    = "10.77.0.1"
	lossyAgentIP = "10.77.0.2"
)

// setupLossyNet creates the namespaces and the link. On error everything
// made so far is removed again.
func (h *harness) setupLossyNet(ctx context.Context, dir string, loss float64, delay time.Duration) (_ *lossyNet, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("creating network namespaces needs root")
	}
	if _, err := os.Stat(ipTool); err != nil {
		return nil, fmt.Errorf("%s: %w", ipTool, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cleanStaleNetns()
	pid := os.Getpid()
	n := &lossyNet{gw: fmt.Sprintf("wgwb-%d-g", pid), agent: fmt.Sprintf("wgwb-%d-a", pid), gwIP: lossyGwIP, agentIP: lossyAgentIP}
	defer func() {
		if err != nil {
			n.remove()
		}
	}()
	for _, ns := range []string{n.gw, n.agent} {
		if err := ipCmd(ctx, "netns", "add", ns); err != nil {
			return nil, err
		}
		if err := ipCmd(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	// The link process runs in gw and creates both TUN devices there; the
	// agent's end then moves to its namespace (its file descriptor stays).
	argv := netnsArgv(n.gw, append(h.selfArgv(), "link", "-loss", strconv.FormatFloat(loss, 'g', -1, 64), "-delay", delay.String(), "-a", "wgwb-g", "-b", "wgwb-a"))
	if n.link, err = h.start("link", dir, argv, []string{backendRoleEnv + "=link"}, true); err != nil {
		return nil, err
	}
	if err := n.link.readLines(ctx, 10*time.Second, func(line string) bool { return line == "ready" }); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", n.gw, "link", "set", "wgwb-a", "netns", n.agent},
		{"-n", n.gw, "addr", "add", n.gwIP, "peer", n.agentIP, "dev", "wgwb-g"},
		{"-n", n.agent, "addr", "add", n.agentIP, "peer", n.gwIP, "dev", "wgwb-a"},
		{"-n", n.gw, "link", "set", "wgwb-g", "up"},
		{"-n", n.agent, "link", "set", "wgwb-a", "up"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// remove stops the link and deletes both namespaces (the TUN devices go
// with them). Processes started in them must be stopped first.
func (n *lossyNet) remove() {
	if n.link != nil {
		n.link.closeAndWait(2 * time.Second) // it logs its counters on the way out
	}
	for _, ns := range []string{n.gw, n.agent} {
		exec.Command(ipTool, "netns", "del", ns).Run() // absent is fine
	}
}

// linkStatsLines are the counters the link logged when it stopped.
func (n *lossyNet) linkStatsLines() []string {
	if n.link == nil {
		return nil
	}
	b, _ := os.ReadFile(n.link.logPath)
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "link ") {
			out = append(out, line)
		}
	}
	return out
}

// cleanStaleNetns deletes namespaces wgwb-<pid>-* of harness processes that
// no longer run (killed before they could clean up).
func cleanStaleNetns() {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "wgwb-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a running harness owns it
		}
		exec.Command(ipTool, "netns", "del", e.Name()).Run()
	}
}

func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, ipTool, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netnsArgv runs argv in namespace ns.
func netnsArgv(ns string, argv []string) []string {
	return append([]string{ipTool, "netns", "exec", ns}, argv...)
}

// dialNetns dials addr (TCP) from network namespace ns: the socket is made
// on this goroutine's OS thread, moved into ns for the dial and back after.
//
// The thread must go back, not end: a child process gets its Pdeathsig when
// the thread that forked it ends, and this thread may have forked one of
// ours before. If it cannot go back, the process stops rather than run code
// in the wrong namespace.
func dialNetns(ctx context.Context, ns, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, err
	}
	err = unix.Setns(int(target.Fd()), unix.CLONE_NEWNET)
	target.Close()
	if err != nil {
		return nil, fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	c, dialErr := d.DialContext(ctx, "tcp", addr)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cannot return a thread from network namespace %s: %v\n", ns, err)
		os.Exit(1) // deferred cleanup cannot run safely; the kernel kills the children (Pdeathsig)
	}
	return c, dialErr
}

// linkMain is `bench link -loss P -delay D -a NAME -b NAME`: it creates two
// TUN devices and copies every IP packet from one to the other, dropping
// each with probability P and delivering the rest D later, in order, per
// direction (netem's "loss P delay D" on both ends of a link). At most
// linkQueue packets wait per direction; more are dropped, as netem's limit.
// It prints "ready" and runs until stdin closes.
func linkMain(args []string) int {
	fs := flag.NewFlagSet("link", flag.ContinueOnError)
	loss := fs.Float64("loss", 0, "drop probability per packet, 0-1")
	delay := fs.Duration("delay", 0, "one-way delay")
	a := fs.String("a", "", "first TUN device name")
	b := fs.String("b", "", "second TUN device name")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ta, err := openTun(*a)
	if err != nil {
		fmt.Fprintln(os.Stderr, "link:", err)
		return 1
	}
	tb, err := openTun(*b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "link:", err)
		return 1
	}
	var ab, ba linkStats
	go relay(ta, tb, *loss, *delay, &ab)
	go relay(tb, ta, *loss, *delay, &ba)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // until the harness closes stdin
	for _, d := range []struct {
		name string
		st   *linkStats
	}{{*a + " -> " + *b, &ab}, {*b + " -> " + *a, &ba}} {
		fmt.Fprintf(os.Stderr, "link %s: %d packets, %d bytes (largest %d), %d lost, %d dropped (queue full)\n",
			d.name, d.st.packets.Load(), d.st.bytes.Load(), d.st.largest.Load(), d.st.lost.Load(), d.st.full.Load())
	}
	return 0
}

// linkStats counts one direction of the link.
type linkStats struct {
	packets, bytes, largest, lost, full atomic.Int64
}

const linkQueue = 1000

func openTun(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// relay copies packets from src to dst through a delay line.
func relay(src, dst *os.File, loss float64, delay time.Duration, st *linkStats) {
	type pkt struct {
		due time.Time
		b   []byte
	}
	q := make(chan pkt, linkQueue)
	go func() {
		for p := range q {
			if d := time.Until(p.due); d > 0 {
				time.Sleep(d)
			}
			dst.Write(p.b)
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			close(q)
			return
		}
		st.packets.Add(1)
		st.bytes.Add(int64(n))
		if int64(n) > st.largest.Load() {
			st.largest.Store(int64(n))
		}
		if loss > 0 && rand.Float64() < loss {
			st.lost.Add(1)
			continue
		}
		p := pkt{due: time.Now().Add(delay), b: append([]byte(nil), buf[:n]...)}
		select {
		case q <- p:
		default: // queue full: dropped
			st.full.Add(1)
		}
	}
}
