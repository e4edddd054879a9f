package gateway

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
	"path/filepath"
	"strconv"
	"strings"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/netpolicy"
	"github.com/webgw/webgw/internal/ygg"
)

// yggNode is what the gateway needs of its embedded Yggdrasil node
// (*ygg.Node).
type yggNode interface {
	Addr() netip.Addr
	Subnet() netip.Prefix
	PublicKey() string
	// DialContext connects through the overlay.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	// Listen listens on the node's overlay address.
	Listen(network, addr string) (net.Listener, error)
	// ListenPacket listens for UDP on the node's overlay address.
	ListenPacket(network, addr string) (net.PacketConn, error)
	Status() ygg.Status
	Close() error
}

// startYgg starts the embedded node; tests replace it.
var startYgg = func(cfg ygg.Config, log *slog.Logger) (yggNode, error) {
	n, err := ygg.Start(cfg, log)
	if err != nil {
		return nil, err // not a nil *ygg.Node in a non-nil interface
	}
	return n, nil
}

var _ yggNode = (*ygg.Node)(nil)

// yggNet is the Yggdrasil address space: node addresses (200::/8) and
// their routed subnets (300::/8). Direct upstreams in it are dialled
// through the node.
var yggNet = netip.MustParsePrefix("200::/7")

// yggKeyFile is the node's private key in the data dir.
const yggKeyFile = "ygg.key"

// ErrYggOff is returned for a direct upstream in 200::/7 while the
// gateway runs no Yggdrasil node.
var ErrYggOff = errors.New("the yggdrasil node is off (start the gateway with --ygg-listen, --ygg-peer or --ygg-tun)")

// yggOn reports whether the config asks for the node.
func (c *Config) yggOn() bool {
	return len(c.YggListen) > 0 || len(c.YggPeer) > 0 || c.YggTUN != ""
}

// validateYgg checks the ygg_ keys.
func (c *Config) validateYgg() error {
	for _, k := range []struct {
		key, flag string
		uris      []string
	}{{"ygg_listen", "--ygg-listen", c.YggListen}, {"ygg_peer", "--ygg-peer", c.YggPeer}} {
		for _, u := range k.uris {
			if err := validateYggURI(u); err != nil {
				return cfgErr("%s (%s): %v", k.key, k.flag, err)
			}
		}
	}
	for _, key := range c.YggAllowKey {
		if b, err := hex.DecodeString(key); err != nil || len(b) != ed25519.PublicKeySize {
			return cfgErr("ygg_allow_key (--ygg-allow-key): %q is not a public key; give 64 hex characters", key)
		}
	}
	if c.YggTUN != "" && (len(c.YggTUN) > 15 || strings.ContainsAny(c.YggTUN, "/ \t\n\x00")) {
		return cfgErr("ygg_tun (--ygg-tun): %q is not an interface name; use up to 15 characters without '/' or spaces, such as ygg0", c.YggTUN)
	}
	if c.YggTUN != "" {
		// With a TUN the host's own sockets are on the overlay: the admin
		// API (and metrics) must not listen on every address.
		if h, _, err := net.SplitHostPort(c.APIAddr); err == nil {
			if a, err := netip.ParseAddr(h); h == "" || (err == nil && a.IsUnspecified()) {
				return cfgErr("ygg_tun (--ygg-tun): the admin API listens on every address (api_addr %s), which the TUN puts on the Yggdrasil overlay; give api_addr a specific address, such as 127.0.0.1:8081", c.APIAddr)
			}
		}
	}
	if !c.yggOn() && (c.YggPassword != "" || len(c.YggAllowKey) > 0) {
		return cfgErr("ygg_password (--ygg-password) and ygg_allow_key (--ygg-allow-key) need ygg_listen, ygg_peer or ygg_tun: the yggdrasil node is off without them")
	}
	return nil
}

// validateYggURI checks a peer or listen URI: tls://, tcp:// or quic://
// and HOST:PORT.
func validateYggURI(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		return fmt.Errorf("%q is not a URI such as tls://0.0.0.0:9001 or tcp://[2001:db8::1]:9001", s)
	}
	switch u.Scheme {
	case "tls", "tcp", "quic":
	default:
		return fmt.Errorf("%q: scheme %q not accepted; use tls://, tcp:// or quic://", s, u.Scheme)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return fmt.Errorf("%q: want %s://HOST:PORT (such as %s://0.0.0.0:9001)", s, u.Scheme, u.Scheme)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return fmt.Errorf("%q: port must be 1-65535", s)
	}
	if u.Path != "" && u.Path != "/" {
		return fmt.Errorf("%q: no path is accepted after HOST:PORT", s)
	}
	return nil
}

// loadOrCreateYggKey reads the node's ed25519 private key (hex of its 64
// bytes) from path, or makes one and writes it (0600, atomically), so the
// node's address stays the same across restarts.
func loadOrCreateYggKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("read %s: not the hex of a %d-byte ed25519 private key; move it away to make a new one (the node's address changes)", path, ed25519.PrivateKeySize)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("yggdrasil key: %w", err)
	}
	if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// startYggNode starts the node cfg asks for; nil when it asks for none.
func startYggNode(cfg *Config, log *slog.Logger) (yggNode, error) {
	if !cfg.yggOn() {
		return nil, nil
	}
	key, err := loadOrCreateYggKey(filepath.Join(cfg.DataDir, yggKeyFile))
	if err != nil {
		return nil, err
	}
	n, err := startYgg(ygg.Config{
		PrivateKey: key, Peers: cfg.YggPeer, Listen: cfg.YggListen,
		Password: cfg.YggPassword, AllowedKeys: cfg.YggAllowKey, TUN: cfg.YggTUN,
	}, log.With("part", "ygg"))
	if err != nil {
		return nil, fmt.Errorf("yggdrasil node: %w", err)
	}
	return n, nil
}

// inYgg reports whether the upstream's host is an address of the overlay.
func inYgg(u model.ParsedUpstream) bool {
	a := u.Addr
	if !a.IsValid() {
		var err error
		if a, err = netip.ParseAddr(u.Host); err != nil {
			return false
		}
	}
	return yggNet.Contains(a.WithZone(""))
}

// overlayDial is how dialDirect reaches u: nil for the host's network,
// the node's DialContext for an address in 200::/7.
func (g *Gateway) overlayDial(u model.ParsedUpstream) (netpolicy.DialFunc, error) {
	if !inYgg(u) {
		return nil, nil
	}
	if g.ygg == nil {
		return nil, fmt.Errorf("dial upstream %s: %w", u.HostPort(), ErrYggOff)
	}
	return g.ygg.DialContext, nil
}

// yggBanner is the banner's yggdrasil line: "ADDR (subnet S), access
// point on URI..., N peers".
func (g *Gateway) yggBanner() string {
	st := g.ygg.Status()
	ap := "no access point"
	if len(g.cfg.YggListen) > 0 {
		ap = "access point on " + strings.Join(g.cfg.YggListen, ", ")
	}
	return fmt.Sprintf("%s (subnet %s), %s, %d peers", g.ygg.Addr(), g.ygg.Subnet(), ap, len(st.Peers))
}

// yggStatus is the node's state for the API.
func (g *Gateway) yggStatus() api.YggStatus {
	st := g.ygg.Status()
	out := api.YggStatus{Addr: st.Addr.String(), Subnet: st.Subnet.String(), PublicKey: st.PublicKey, Peers: []api.YggPeer{}}
	for _, p := range st.Peers {
		ap := api.YggPeer{URI: p.URI, Inbound: p.Inbound, Up: p.Up, PublicKey: p.PublicKey,
			RxBytes: p.RxBytes, TxBytes: p.TxBytes, Uptime: p.Uptime.Seconds(), LastError: p.LastError}
		if p.Addr.IsValid() {
			ap.Addr = p.Addr.String()
		}
		out.Peers = append(out.Peers, ap)
	}
	return out
}
