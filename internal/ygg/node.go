package ygg

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"

	"github.com/yggdrasil-network/yggdrasil-go/src/address"
	"github.com/yggdrasil-network/yggdrasil-go/src/config"
	"github.com/yggdrasil-network/yggdrasil-go/src/core"
	"github.com/yggdrasil-network/yggdrasil-go/src/ipv6rwc"
	"github.com/yggdrasil-network/yggdrasil-go/src/tun"
	wgtun "golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// Network is the Yggdrasil overlay's address space: node addresses in
// 200::/8, routed subnets in 300::/8.
var Network = netip.MustParsePrefix("200::/7")

// GenerateKey returns a new ed25519 private key (64 bytes) for Config.PrivateKey.
func GenerateKey() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate yggdrasil key: %w", err)
	}
	return priv, nil
}

// Node is a running embedded Yggdrasil node. Its methods are safe for
// concurrent use.
type Node struct {
	core      *core.Core
	log       *slog.Logger
	addr      netip.Addr   // immutable
	subnet    netip.Prefix // immutable
	subnetIP  netip.Addr   // subnet's ::1, the netstack's second address; immutable
	listeners []string     // peering listener URIs as bound; immutable
	tunName   string       // immutable; empty without TUN

	// Userspace mode (no TUN): the netstack and its packet pumps.
	dev   wgtun.Device
	tnet  *netstack.Net
	pumps sync.WaitGroup

	tun *tun.TunAdapter // TUN mode

	mu       sync.Mutex
	closed   bool                        // guarded by mu
	overlays map[net.Listener]struct{}   // overlay listeners from Listen; guarded by mu
	packets  map[net.PacketConn]struct{} // overlay UDP sockets from ListenPacket; guarded by mu
}

// Start starts a node with cfg. log gets the library's messages (nil: discarded).
func Start(cfg Config, log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.PrivateKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("start yggdrasil: private key has %d bytes, want %d", len(cfg.PrivateKey), ed25519.PrivateKeySize)
	}
	if len(cfg.Password) > 64 {
		return nil, fmt.Errorf("start yggdrasil: peering password has %d bytes, at most 64 accepted", len(cfg.Password))
	}
	nc := &config.NodeConfig{PrivateKey: config.KeyBytes(cfg.PrivateKey)}
	if err := nc.GenerateSelfSignedCertificate(); err != nil {
		return nil, fmt.Errorf("start yggdrasil: certificate: %w", err)
	}
	var opts []core.SetupOption
	for _, k := range cfg.AllowedKeys {
		b, err := hex.DecodeString(k)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("start yggdrasil: allowed key %q: want %d hex characters", k, 2*ed25519.PublicKeySize)
		}
		opts = append(opts, core.AllowedPublicKey(b))
	}
	var peers []*url.URL
	for _, p := range cfg.Peers {
		u, err := url.Parse(p)
		if err != nil {
			return nil, fmt.Errorf("start yggdrasil: peer %q: %w", p, err)
		}
		peers = append(peers, u)
	}
	var listens []*url.URL
	for _, l := range cfg.Listen {
		u, err := url.Parse(l)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("start yggdrasil: listen %q: want tls://HOST:PORT, tcp:// or quic://", l)
		}
		if cfg.Password != "" && u.Query().Get("password") == "" {
			q := u.Query()
			q.Set("password", cfg.Password)
			u.RawQuery = q.Encode()
		}
		listens = append(listens, u)
	}

	c, err := core.New(nc.Certificate, coreLogger{log}, opts...)
	if err != nil {
		return nil, fmt.Errorf("start yggdrasil: %w", err)
	}
	n := &Node{
		core:     c,
		log:      log,
		overlays: map[net.Listener]struct{}{},
		packets:  map[net.PacketConn]struct{}{},
	}
	n.addr, _ = netip.AddrFromSlice(c.Address())
	sn := c.Subnet()
	sip, _ := netip.AddrFromSlice(sn.IP)
	n.subnet = netip.PrefixFrom(sip, 64)
	s16 := sip.As16()
	s16[15] = 1
	n.subnetIP = netip.AddrFrom16(s16)

	fail := func(err error) (*Node, error) {
		c.Stop()
		return nil, fmt.Errorf("start yggdrasil: %w", err)
	}
	for _, u := range listens {
		l, err := c.Listen(u, "")
		if err != nil {
			return fail(fmt.Errorf("listen %s://%s: %w", u.Scheme, u.Host, err))
		}
		n.listeners = append(n.listeners, u.Scheme+"://"+l.Addr().String())
	}

	rwc := ipv6rwc.NewReadWriteCloser(c)
	if cfg.TUN != "" {
		t, err := tun.New(rwc, coreLogger{log}, tun.InterfaceName(cfg.TUN), tun.InterfaceMTU(tun.DefaultMTU()))
		if err != nil {
			return fail(fmt.Errorf("tun %s: %w", cfg.TUN, err))
		}
		n.tun = t
		n.tunName = t.Name()
	} else {
		rwc.SetMTU(c.MTU())
		mtu := int(rwc.MTU())
		dev, tnet, err := netstack.CreateNetTUN([]netip.Addr{n.addr, n.subnetIP}, nil, mtu)
		if err != nil {
			return fail(fmt.Errorf("netstack: %w", err))
		}
		n.dev, n.tnet = dev, tnet
		n.pumps.Add(2)
		go n.toCore(rwc, mtu)
		go n.fromCore(rwc, mtu)
	}

	for _, u := range peers {
		if err := c.AddPeer(u, ""); err != nil {
			_ = n.Close()
			return nil, fmt.Errorf("start yggdrasil: peer %s: %w", u.Redacted(), err)
		}
	}
	log.Info("yggdrasil node started", "addr", n.addr, "subnet", n.subnet, "listen", n.listeners, "peers", len(peers))
	return n, nil
}

// toCore moves the netstack's outgoing packets into the overlay until the
// netstack is closed.
func (n *Node) toCore(rwc *ipv6rwc.ReadWriteCloser, mtu int) {
	defer n.pumps.Done()
	bufs := [][]byte{make([]byte, mtu)}
	sizes := []int{0}
	for {
		k, err := n.dev.Read(bufs, sizes, 0)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		if k == 1 {
			// Errors are packets with a source or destination outside the
			// overlay: dropped, as a router would.
			_, _ = rwc.Write(bufs[0][:sizes[0]])
		}
	}
}

// fromCore moves the overlay's packets for this node into the netstack
// until the core is stopped.
func (n *Node) fromCore(rwc *ipv6rwc.ReadWriteCloser, mtu int) {
	defer n.pumps.Done()
	buf := make([]byte, mtu)
	for {
		k, err := rwc.Read(buf)
		if err != nil {
			return
		}
		_, _ = n.dev.Write([][]byte{buf[:k]}, 0)
	}
}

// Addr is the node's address in 200::/8.
func (n *Node) Addr() netip.Addr { return n.addr }

// Subnet is the node's routed /64 in 300::/8. Its ::1 is the node's too
// (the userspace stack answers on it).
func (n *Node) Subnet() netip.Prefix { return n.subnet }

// PublicKey is the node's ed25519 public key in hex.
func (n *Node) PublicKey() string { return hex.EncodeToString(n.core.PublicKey()) }

// ErrClosed is returned by DialContext and Listen after Close.
var ErrClosed = errors.New("yggdrasil node closed")

// DialContext dials addr, an overlay address and port ("[200:..]:80",
// "[300:..]:80"), on network "tcp", "tcp6", "udp" or "udp6", through the
// node. The first packets to a node not yet known are lost while its route
// is looked up (a few seconds): a caller that needs the connection soon
// after peering retries within its deadline.
func (n *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial yggdrasil %s: want [IPv6 in 200::/7]:port: %w", addr, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
	if !Network.Contains(ap.Addr()) {
		return nil, fmt.Errorf("dial yggdrasil %s: address not in %s", addr, Network)
	}
	if n.isClosed() {
		return nil, fmt.Errorf("dial yggdrasil %s: %w", addr, ErrClosed)
	}
	if n.tun != nil {
		var d net.Dialer
		return d.DialContext(ctx, network, ap.String())
	}
	var c net.Conn
	switch network {
	case "tcp", "tcp6":
		tc, err := n.tnet.DialContextTCPAddrPort(ctx, ap)
		if err != nil {
			return nil, fmt.Errorf("dial yggdrasil %s: %w", addr, err)
		}
		c = tc
	case "udp", "udp6":
		uc, err := n.tnet.DialUDPAddrPort(netip.AddrPort{}, ap)
		if err != nil {
			return nil, fmt.Errorf("dial yggdrasil %s: %w", addr, err)
		}
		c = uc
	default:
		return nil, fmt.Errorf("dial yggdrasil %s: network %q: want tcp, tcp6, udp or udp6", addr, network)
	}
	return c, nil
}

// Listen listens for TCP ("tcp" or "tcp6") on the node's own overlay
// address: addr is "[node addr]:port", "[subnet::1]:port" or ":port" (both).
// Nothing listens there unless a caller asks. Close closes the listener too.
// In TUN mode the listener is a host socket: ":port" binds the node's
// address only, and the subnet's ::1 only if the operator put it on a host
// interface.
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	if network != "tcp" && network != "tcp6" {
		return nil, fmt.Errorf("listen yggdrasil %s: network %q: want tcp or tcp6", addr, network)
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen yggdrasil %s: %w", addr, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("listen yggdrasil %s: port %q: %w", addr, ps, err)
	}
	var ip netip.Addr
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil || (ip != n.addr && ip != n.subnetIP) {
			return nil, fmt.Errorf("listen yggdrasil %s: host must be empty, %s or %s", addr, n.addr, n.subnetIP)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("listen yggdrasil %s: %w", addr, ErrClosed)
	}
	var l net.Listener
	if n.tun != nil {
		if !ip.IsValid() {
			ip = n.addr // never the host's other addresses
		}
		l, err = net.Listen("tcp6", netip.AddrPortFrom(ip, uint16(port)).String())
	} else {
		l, err = n.tnet.ListenTCPAddrPort(netip.AddrPortFrom(ip, uint16(port)))
	}
	if err != nil {
		return nil, fmt.Errorf("listen yggdrasil %s: %w", addr, err)
	}
	tl := &trackedListener{Listener: l, n: n}
	n.overlays[tl] = struct{}{}
	return tl, nil
}

// ListenPacket listens for UDP on the node's overlay address, as Listen
// does for TCP ("udp" or "udp6"; the host empty, the node's address or its
// subnet's ::1).
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	if network != "udp" && network != "udp6" {
		return nil, fmt.Errorf("listen yggdrasil %s: network %q: want udp or udp6", addr, network)
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen yggdrasil %s: %w", addr, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("listen yggdrasil %s: port %q: %w", addr, ps, err)
	}
	ip := n.addr
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil || (ip != n.addr && ip != n.subnetIP) {
			return nil, fmt.Errorf("listen yggdrasil %s: host must be empty, %s or %s", addr, n.addr, n.subnetIP)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("listen yggdrasil %s: %w", addr, ErrClosed)
	}
	var pc net.PacketConn
	if n.tun != nil {
		pc, err = net.ListenPacket("udp6", netip.AddrPortFrom(ip, uint16(port)).String())
	} else {
		pc, err = n.tnet.ListenUDPAddrPort(netip.AddrPortFrom(ip, uint16(port)))
	}
	if err != nil {
		return nil, fmt.Errorf("listen yggdrasil %s: %w", addr, err)
	}
	tp := &trackedPacket{PacketConn: pc, n: n}
	n.packets[tp] = struct{}{}
	return tp, nil
}

// trackedPacket forgets itself in its node when closed.
type trackedPacket struct {
	net.PacketConn
	n    *Node
	once sync.Once
}

func (p *trackedPacket) Close() error {
	err := p.PacketConn.Close()
	p.once.Do(func() {
		p.n.mu.Lock()
		delete(p.n.packets, p)
		p.n.mu.Unlock()
	})
	return err
}

// trackedListener forgets itself in its node when closed.
type trackedListener struct {
	net.Listener
	n    *Node
	once sync.Once
}

func (l *trackedListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		l.n.mu.Lock()
		delete(l.n.overlays, l)
		l.n.mu.Unlock()
	})
	return err
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

// Status reports the node's address and peers.
func (n *Node) Status() Status {
	st := Status{
		Addr:      n.addr,
		Subnet:    n.subnet,
		PublicKey: n.PublicKey(),
		Listeners: slices.Clone(n.listeners),
		TUN:       n.tunName,
	}
	for _, p := range n.core.GetPeers() {
		ps := PeerStatus{
			URI:     redactURI(p.URI),
			Inbound: p.Inbound,
			Up:      p.Up,
			RxBytes: p.RXBytes,
			TxBytes: p.TXBytes,
			Uptime:  p.Uptime,
		}
		if len(p.Key) == ed25519.PublicKeySize {
			ps.PublicKey = hex.EncodeToString(p.Key)
			ps.Addr, _ = netip.AddrFromSlice(address.AddrForKey(p.Key)[:])
		}
		if p.LastError != nil {
			ps.LastError = p.LastError.Error()
		}
		st.Peers = append(st.Peers, ps)
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int {
		if a.URI < b.URI {
			return -1
		}
		if a.URI > b.URI {
			return 1
		}
		return 0
	})
	return st
}

// redactURI drops a peering password from a URI shown in the status.
func redactURI(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// Close stops the node: its overlay listeners, peerings, listeners, the
// userspace stack and the TUN. It is idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	ls := make([]net.Listener, 0, len(n.overlays))
	for l := range n.overlays {
		ls = append(ls, l)
	}
	pcs := make([]net.PacketConn, 0, len(n.packets))
	for pc := range n.packets {
		pcs = append(pcs, pc)
	}
	n.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
	for _, pc := range pcs {
		_ = pc.Close()
	}
	if n.dev != nil {
		_ = n.dev.Close()
	}
	if n.tun != nil {
		_ = n.tun.Stop()
	}
	n.core.Stop()
	n.pumps.Wait()
	n.log.Info("yggdrasil node stopped", "addr", n.addr)
	return nil
}

// coreLogger gives the library's messages to slog.
type coreLogger struct{ l *slog.Logger }

func (c coreLogger) Printf(f string, a ...any) { c.l.Info(fmt.Sprintf(f, a...)) }
func (c coreLogger) Println(a ...any)          { c.l.Info(sprintln(a...)) }
func (c coreLogger) Infof(f string, a ...any)  { c.l.Info(fmt.Sprintf(f, a...)) }
func (c coreLogger) Infoln(a ...any)           { c.l.Info(sprintln(a...)) }
func (c coreLogger) Warnf(f string, a ...any)  { c.l.Warn(fmt.Sprintf(f, a...)) }
func (c coreLogger) Warnln(a ...any)           { c.l.Warn(sprintln(a...)) }
func (c coreLogger) Errorf(f string, a ...any) { c.l.Error(fmt.Sprintf(f, a...)) }
func (c coreLogger) Errorln(a ...any)          { c.l.Error(sprintln(a...)) }
func (c coreLogger) Debugf(f string, a ...any) { c.l.Debug(fmt.Sprintf(f, a...)) }
func (c coreLogger) Debugln(a ...any)          { c.l.Debug(sprintln(a...)) }
func (c coreLogger) Traceln(a ...any)          { c.l.Debug(sprintln(a...)) }

var _ core.Logger = coreLogger{}

func sprintln(a ...any) string {
	s := fmt.Sprintln(a...)
	return s[:len(s)-1]
}
