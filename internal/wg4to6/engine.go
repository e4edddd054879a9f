package wg4to6

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// Defaults of Config.
const (
	DefaultTUN        = "webgw4to6"
	DefaultMTU        = 1420
	DefaultListenPort = 51820 // the caller's default: ListenPort 0 picks a free port
)

const (
	sweepInterval = 30 * time.Second
	forwardingCtl = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// Engine is a running endpoint: the WireGuard device, its TUN, the routes
// and the policy. Its methods are safe for concurrent use.
//
// Start does all its system work (the TUN, the UDP sockets, the routes, the
// forwarding switch) in the network namespace of the calling thread, and
// Close undoes it there, whichever thread calls it.
type Engine struct {
	log   *slog.Logger
	cfg   Config // completed
	pub   Key
	port  int
	pol   *policy
	dev   *device.Device
	epoch time.Time
	stop  chan struct{} // closed by Close: stops the sweeper
	done  chan struct{} // closed by the sweeper when it ends

	mu       sync.Mutex
	peers    map[Key]*peerState // guarded by mu; replaced whole, never changed
	resync   bool               // guarded by mu; WireGuard may differ from peers (a configuration failed)
	closed   bool               // guarded by mu
	closeErr error              // guarded by mu
	fwd      *os.File           // guarded by mu; the forwarding switch, open when Start turned it on
}

// complete returns c with its defaults filled in, or an error that names
// the field that is wrong.
func (c Config) complete() (Config, error) {
	if c.TUN == "" {
		c.TUN = DefaultTUN
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = defaultMaxFlows
	}
	if c.MaxFlowsPerPeer == 0 {
		c.MaxFlowsPerPeer = min(defaultMaxFlowsPerPeer, c.MaxFlows)
	}
	switch {
	case c.PrivateKey.IsZero():
		return c, errors.New("wg4to6: PrivateKey: not set")
	case c.ListenPort < 0 || c.ListenPort > 65535:
		return c, fmt.Errorf("wg4to6: ListenPort %d: want 0-65535 (0 picks a free port)", c.ListenPort)
	case c.MTU < 1280 || c.MTU > 65535:
		return c, fmt.Errorf("wg4to6: MTU %d: want 1280 (the IPv6 minimum) to 65535", c.MTU)
	case len(c.TUN) > 15 || strings.ContainsAny(c.TUN, "/ \t\n%:"):
		return c, fmt.Errorf("wg4to6: TUN %q: want an interface name of at most 15 characters, without '/', ':', '%%' or spaces", c.TUN)
	case c.MaxFlows < 0 || c.MaxFlowsPerPeer < 0:
		return c, fmt.Errorf("wg4to6: MaxFlows %d, MaxFlowsPerPeer %d: want 0 (the default) or more", c.MaxFlows, c.MaxFlowsPerPeer)
	}
	if err := checkPrefix(c.Prefix); err != nil {
		return c, fmt.Errorf("wg4to6: Prefix: %w (the IPv6 prefix routed to the gateway, e.g. 2001:db8:100::/56)", err)
	}
	if c.Prefix.Bits() > 126 {
		return c, fmt.Errorf("wg4to6: Prefix %s: too small; want /126 or larger (its first address is the gateway's)", c.Prefix)
	}
	if c.NAT66 {
		a := c.NATAddr
		switch {
		case !a.IsValid():
			return c, errors.New("wg4to6: NATAddr: not set; NAT66 needs the public IPv6 address devices' traffic leaves from")
		case !a.Is6() || a.Is4In6() || a.Zone() != "":
			return c, fmt.Errorf("wg4to6: NATAddr %s: not an IPv6 address", a)
		case c.Prefix.Contains(a):
			return c, fmt.Errorf("wg4to6: NATAddr %s: inside Prefix %s; want an address outside the devices' prefix", a, c.Prefix)
		}
	} else if c.NATAddr.IsValid() {
		return c, fmt.Errorf("wg4to6: NATAddr %s is set but NAT66 is off", c.NATAddr)
	}
	for i, b := range c.Blocked {
		if !b.IsValid() {
			return c, fmt.Errorf("wg4to6: Blocked[%d]: not a valid prefix", i)
		}
		c.Blocked[i] = b.Masked()
	}
	return c, nil
}

// checkPrefix reports what is wrong with p as an IPv6 prefix.
func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not set")
	case !p.Addr().Is6() || p.Addr().Is4In6():
		return fmt.Errorf("%s is not IPv6", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("%s has a zone", p)
	case p != p.Masked():
		return fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked())
	}
	return nil
}

// Start brings up the endpoint: the kernel TUN cfg.TUN with the gateway's
// address (the prefix's first, prefix::1), a route for cfg.Prefix (and
// cfg.NATAddr) into it, IPv6 forwarding, and WireGuard on UDP
// cfg.ListenPort (IPv4 and IPv6) with no peers yet: SetPeers adds them.
//
// In routed mode (the default) the upstream router must route cfg.Prefix
// to the gateway: that is the operator's part. It needs root (or
// CAP_NET_ADMIN), /dev/net/tun and ip(8). Turning on forwarding makes
// Linux ignore router advertisements on interfaces with accept_ra=1: an
// uplink configured by SLAAC needs accept_ra=2.
func Start(cfg Config, log *slog.Logger) (_ *Engine, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Blocked = slices.Clone(cfg.Blocked)
	if cfg, err = cfg.complete(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("wg4to6: needs ip(8) from iproute2: %w", err)
	}
	kernel, err := tun.CreateTUN(cfg.TUN, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("wg4to6: create TUN %s (needs root or CAP_NET_ADMIN and /dev/net/tun): %w", cfg.TUN, err)
	}
	e := &Engine{
		log:   log,
		cfg:   cfg,
		pub:   cfg.PrivateKey.Public(),
		epoch: time.Now(),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		peers: map[Key]*peerState{},
	}
	e.pol = newPolicy(&cfg)
	pt := &policyTUN{ownedTUN: ownTUN(kernel, cfg.MTU), pol: e.pol, clock: e.now}
	e.dev = device.NewDevice(pt, conn.NewDefaultBind(), wgLogger(log.With("component", "wireguard")))
	defer func() {
		if err != nil {
			e.dev.Close()
			e.restoreForwarding()
		}
	}()

	if err := e.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", keyHex(cfg.PrivateKey), cfg.ListenPort)); err != nil {
		return nil, fmt.Errorf("wg4to6: configure WireGuard: %w", err)
	}
	if err := e.dev.Up(); err != nil {
		return nil, fmt.Errorf("wg4to6: listen on UDP port %d: %w", cfg.ListenPort, err)
	}
	if e.port, err = e.boundPort(); err != nil {
		return nil, err
	}

	gw := gatewayAddr(cfg.Prefix)
	cmds := [][]string{
		{"-6", "addr", "replace", netip.PrefixFrom(gw, 128).String(), "dev", cfg.TUN, "nodad"},
		{"link", "set", "dev", cfg.TUN, "up"},
		{"-6", "route", "replace", cfg.Prefix.String(), "dev", cfg.TUN},
	}
	if cfg.NAT66 {
		cmds = append(cmds, []string{"-6", "route", "replace", netip.PrefixFrom(cfg.NATAddr, 128).String(), "dev", cfg.TUN})
	}
	for _, args := range cmds {
		if err := ipCmd(args...); err != nil {
			return nil, err
		}
	}
	if err := e.enableForwarding(); err != nil {
		return nil, err
	}

	go e.sweeper()
	attrs := []any{"tun", cfg.TUN, "port", e.port, "prefix", cfg.Prefix, "gateway", gw, "public_key", e.pub}
	if cfg.NAT66 {
		attrs = append(attrs, "nat66", cfg.NATAddr)
	}
	log.Info("wg4to6 started", attrs...)
	return e, nil
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("wg4to6: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// boundPort returns the UDP port WireGuard listens on.
func (e *Engine) boundPort() (int, error) {
	uapi, err := e.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("wg4to6: read WireGuard state: %w", err)
	}
	for line := range strings.Lines(uapi) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("wg4to6: WireGuard reports no listen port")
}

// enableForwarding turns IPv6 forwarding on if it is off, and keeps the
// switch open to turn it off again (in the same network namespace).
func (e *Engine) enableForwarding() error {
	f, err := os.OpenFile(forwardingCtl, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("wg4to6: enable IPv6 forwarding: %w", err)
	}
	buf := make([]byte, 16)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return fmt.Errorf("wg4to6: read %s: %w", forwardingCtl, err)
	}
	if strings.TrimSpace(string(buf[:n])) == "1" {
		f.Close()
		return nil
	}
	if _, err := f.WriteAt([]byte("1\n"), 0); err != nil {
		f.Close()
		return fmt.Errorf("wg4to6: enable IPv6 forwarding: write %s: %w", forwardingCtl, err)
	}
	e.mu.Lock()
	e.fwd = f
	e.mu.Unlock()
	e.log.Info("wg4to6 turned on IPv6 forwarding (net.ipv6.conf.all.forwarding=1); interfaces configured by router advertisements need accept_ra=2 now")
	return nil
}

// restoreForwarding turns IPv6 forwarding off again if Start turned it on.
func (e *Engine) restoreForwarding() error {
	e.mu.Lock()
	f := e.fwd
	e.fwd = nil
	e.mu.Unlock()
	if f == nil {
		return nil
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("0\n"), 0); err != nil {
		return fmt.Errorf("wg4to6: turn IPv6 forwarding off again: %w", err)
	}
	return nil
}

func (e *Engine) now() int64 { return int64(time.Since(e.epoch)) }

func (e *Engine) sweeper() {
	defer close(e.done)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			e.pol.flows.sweep(e.now())
		case <-e.stop:
			return
		}
	}
}

// PublicKey returns the gateway's WireGuard public key (what devices put
// in their [Peer] section).
func (e *Engine) PublicKey() Key { return e.pub }

// ListenPort returns the UDP port WireGuard listens on.
func (e *Engine) ListenPort() int { return e.port }

// GatewayAddr returns the gateway's own address in the prefix (prefix::1),
// which no device may have.
func (e *Engine) GatewayAddr() netip.Addr { return gatewayAddr(e.cfg.Prefix) }

// SetPeers makes peers the whole set of devices. A device no longer listed
// is cut at once: its WireGuard session and its flows go, and no packet
// from or to it passes after SetPeers returns. A changed Open applies at
// once too, to new flows and to those opened to ports now closed. On error
// (a bad peer, named in the error) nothing changes.
func (e *Engine) SetPeers(peers []Peer) error {
	next, err := e.checkPeers(peers)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("wg4to6: set peers: engine closed")
	}
	states := make([]*peerState, 0, len(next))
	for k, ps := range next {
		if old := e.peers[k]; old != nil {
			ps.ctr = old.ctr
		} else {
			ps.ctr = new(counters)
		}
		states = append(states, ps)
	}
	// The policy first: from here on no packet of a removed device passes.
	e.pol.peers.Store(newPeerSet(states))

	var uapi strings.Builder
	var added, removed, changed int
	if e.resync {
		// Configure WireGuard from scratch: its peers are not known.
		uapi.WriteString("replace_peers=true\n")
	}
	for k, old := range e.peers {
		ps := next[k]
		switch {
		case ps == nil:
			e.pol.flows.purgeOwner(k)
			if !e.resync {
				fmt.Fprintf(&uapi, "public_key=%s\nremove=true\n", keyHex(k))
			}
			removed++
		case ps.addr != old.addr:
			e.pol.flows.purgeOwner(k)
			changed++
		case !ps.open.equal(&old.open):
			e.pol.flows.purgeInbound(k, ps.open.allows)
			changed++
		}
	}
	for k, ps := range next {
		old := e.peers[k]
		if old == nil {
			added++
		}
		if old == nil || old.addr != ps.addr || e.resync {
			fmt.Fprintf(&uapi, "public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s\n", keyHex(k), ps.addr)
		}
	}
	e.peers = next
	if uapi.Len() > 0 {
		if err := e.dev.IpcSet(uapi.String()); err != nil {
			e.resync = true
			return fmt.Errorf("wg4to6: set peers: configure WireGuard: %w", err)
		}
	}
	e.resync = false
	if added+removed+changed > 0 {
		e.log.Info("wg4to6 peers set", "peers", len(next), "added", added, "removed", removed, "changed", changed)
	}
	return nil
}

// checkPeers validates peers and returns them as the policy's devices
// (without counters).
func (e *Engine) checkPeers(peers []Peer) (map[Key]*peerState, error) {
	gw := gatewayAddr(e.cfg.Prefix)
	next := make(map[Key]*peerState, len(peers))
	byAddr := make(map[netip.Prefix]Key, len(peers))
	var lens []int
	natOpen := false
	for i, p := range peers {
		name := fmt.Sprintf("peer %d (%s)", i, p.PublicKey)
		switch {
		case p.PublicKey.IsZero():
			return nil, fmt.Errorf("wg4to6: peer %d: PublicKey: not set", i)
		case p.PublicKey == e.pub:
			return nil, fmt.Errorf("wg4to6: %s: PublicKey is the gateway's own", name)
		case next[p.PublicKey] != nil:
			return nil, fmt.Errorf("wg4to6: %s: PublicKey listed twice", name)
		}
		if err := checkPrefix(p.Addr); err != nil {
			return nil, fmt.Errorf("wg4to6: %s: Addr: %w", name, err)
		}
		if p.Addr.Bits() < e.cfg.Prefix.Bits() || !e.cfg.Prefix.Contains(p.Addr.Addr()) {
			return nil, fmt.Errorf("wg4to6: %s: Addr %s is outside Prefix %s", name, p.Addr, e.cfg.Prefix)
		}
		if p.Addr.Contains(gw) {
			return nil, fmt.Errorf("wg4to6: %s: Addr %s holds the gateway's own address %s (the prefix's first)", name, p.Addr, gw)
		}
		if other, dup := byAddr[p.Addr]; dup {
			return nil, fmt.Errorf("wg4to6: %s: Addr %s is peer %s's too", name, p.Addr, other)
		}
		open, err := parseOpen(p.Open)
		if err != nil {
			return nil, fmt.Errorf("wg4to6: %s: Open: %w", name, err)
		}
		natOpen = natOpen || e.cfg.NAT66 && len(p.Open) > 0
		next[p.PublicKey] = &peerState{key: p.PublicKey, addr: p.Addr, open: open}
		byAddr[p.Addr] = p.PublicKey
		if !slices.Contains(lens, p.Addr.Bits()) {
			lens = append(lens, p.Addr.Bits())
		}
	}
	// Overlaps: an address inside a shorter one of another device.
	for _, ps := range next {
		for _, l := range lens {
			if l >= ps.addr.Bits() {
				continue
			}
			outer, _ := ps.addr.Addr().Prefix(l)
			if other, ok := byAddr[outer]; ok {
				return nil, fmt.Errorf("wg4to6: peer %s: Addr %s overlaps peer %s's %s", ps.key, ps.addr, other, outer)
			}
		}
	}
	if natOpen {
		e.log.Warn("wg4to6: Open ports do not apply under NAT66: devices are reachable through the flows they open only")
	}
	return next, nil
}

// Stats returns the counters of each device, by public key.
func (e *Engine) Stats() map[Key]PeerStats {
	e.mu.Lock()
	peers := e.peers
	e.mu.Unlock()
	wg := e.wgPeers()
	out := make(map[Key]PeerStats, len(peers))
	for k, ps := range peers {
		st := wg[k]
		st.RxBytes = ps.ctr.rx.Load()
		st.TxBytes = ps.ctr.tx.Load()
		st.Dropped = ps.ctr.dropped.Load()
		out[k] = st
	}
	return out
}

// wgPeers returns what WireGuard knows of its peers: the last handshake
// and the endpoint.
func (e *Engine) wgPeers() map[Key]PeerStats {
	out := map[Key]PeerStats{}
	uapi, err := e.dev.IpcGet()
	if err != nil {
		return out
	}
	var key Key
	var sec, nsec int64
	flush := func() {
		if !key.IsZero() && sec != 0 {
			st := out[key]
			st.LastHandshake = time.Unix(sec, nsec)
			out[key] = st
		}
	}
	sc := bufio.NewScanner(strings.NewReader(uapi))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "public_key":
			flush()
			key, sec, nsec = Key{}, 0, 0
			if b, err := decodeHexKey(v); err == nil {
				key = b
				out[key] = PeerStats{}
			}
		case "endpoint":
			if ap, err := netip.ParseAddrPort(v); err == nil && !key.IsZero() {
				st := out[key]
				st.Endpoint = ap
				out[key] = st
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	flush()
	return out
}

// Close stops the endpoint: WireGuard, the TUN (and with it its address
// and routes), and IPv6 forwarding if Start turned it on. It is idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		err := e.closeErr
		e.mu.Unlock()
		return err
	}
	e.closed = true
	e.mu.Unlock()

	close(e.stop)
	<-e.done
	e.dev.Close() // closes the TUN: the kernel removes the interface, its address and routes
	err := e.restoreForwarding()
	e.mu.Lock()
	e.closeErr = err
	e.mu.Unlock()
	e.log.Info("wg4to6 stopped", "tun", e.cfg.TUN)
	return err
}

// wgLogger passes WireGuard's logs to log: its verbose lines at debug level,
// its errors as warnings, at most a few a second.
func wgLogger(log *slog.Logger) *device.Logger {
	var mu sync.Mutex
	var window time.Time
	var n, suppressed int
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			mu.Lock()
			now := time.Now()
			if now.Sub(window) > time.Second {
				window, n = now, 0
			}
			n++
			if n > 5 {
				suppressed++
				mu.Unlock()
				return
			}
			s := suppressed
			suppressed = 0
			mu.Unlock()
			if s > 0 {
				log.Warn(fmt.Sprintf(format, args...), "suppressed", s)
			} else {
				log.Warn(fmt.Sprintf(format, args...))
			}
		},
	}
}
