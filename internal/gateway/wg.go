package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/netpolicy"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/wg4to6"
)

// wgEngine is what the gateway needs of the 4to6 WireGuard engine
// (*wg4to6.Engine).
type wgEngine interface {
	// SetPeers sets the whole set of devices; one left out is cut at once.
	SetPeers([]wg4to6.Peer) error
	Stats() map[wg4to6.Key]wg4to6.PeerStats
	PublicKey() wg4to6.Key
	ListenPort() int
	Close() error
}

// startWG starts the 4to6 engine; tests replace it.
var startWG = func(cfg wg4to6.Config, log *slog.Logger) (wgEngine, error) {
	e, err := wg4to6.Start(cfg, log)
	if err != nil {
		return nil, err // not a nil *Engine in a non-nil interface
	}
	return e, nil
}

// wgKeyFile is the gateway's WireGuard private key in the data dir. It is
// its own: the gateway's identity (TLS) key is not reused for WireGuard.
const wgKeyFile = "wg.key"

// fourTo6 runs the IPv4-to-IPv6 access: the WireGuard engine, whose peers
// follow the store's device records, so a device added or removed through
// any gateway of a cluster is served or cut here at once.
type fourTo6 struct {
	// Set by start4to6, then only read.
	eng   wgEngine
	plan  model.DevicePlan
	store store.Store
	log   *slog.Logger
	// info is what the API tells about this gateway's 4to6.
	info *api.WG4to6

	mu      sync.Mutex
	devices map[string]model.Device // by store key; guarded by mu
	// dirty holds a token when the devices changed since the engine's
	// peers were last set; the sync loop takes it.
	dirty chan struct{}
}

// start4to6 starts the engine with the gateway's key (created on first
// start) and returns the runner; nothing runs until run. blocked are the
// networks devices may never reach.
func start4to6(cfg *Config, blocked []netip.Prefix, st store.Store, log *slog.Logger) (*fourTo6, error) {
	plan, err := model.ParseDevicePlan(cfg.WGPrefix, cfg.WGPerDevice)
	if err != nil {
		return nil, cfgErr("wg_prefix: %v", err) // validated already
	}
	port, err := wgListenPort(cfg.WGListen)
	if err != nil {
		return nil, cfgErr("wg_listen: %v", err)
	}
	key, err := loadOrCreateWGKey(filepath.Join(cfg.DataDir, wgKeyFile))
	if err != nil {
		return nil, err
	}
	log = log.With("part", "4to6")
	wcfg := wg4to6.Config{ListenPort: port, PrivateKey: wg4to6.Key(key), Prefix: plan.Prefix, NAT66: cfg.WGNAT66, Blocked: blocked}
	if cfg.WGNAT66 {
		wcfg.NATAddr = netip.MustParseAddr(firstIPv6(cfg.PublicIPs)) // validated
	}
	eng, err := startWG(wcfg, log)
	if err != nil {
		return nil, fmt.Errorf("4to6: start wireguard on udp/%d: %w", port, err)
	}
	endpoint := cfg.WGEndpoint
	if endpoint == "" {
		endpoint = net.JoinHostPort(firstIPv4(cfg.PublicIPs), strconv.Itoa(eng.ListenPort()))
	}
	var dns []netip.Addr
	for _, s := range cfg.WGDNS {
		dns = append(dns, netip.MustParseAddr(s)) // validated
	}
	f := &fourTo6{eng: eng, plan: plan, store: st, log: log, devices: map[string]model.Device{}, dirty: make(chan struct{}, 1)}
	f.info = &api.WG4to6{Plan: plan, PublicKey: model.WGKey(eng.PublicKey()), Endpoint: endpoint, DNS: dns,
		MaxDevicesPerTenant: cmp.Or(cfg.Limits.MaxDevicesPerTenant, DefaultMaxDevicesPerTenant), Stats: f.stats}
	return f, nil
}

// loadOrCreateWGKey reads the private key at path, or makes one and writes
// it there (0600, atomically).
func loadOrCreateWGKey(path string) (model.WGKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := model.ParseWGKey(strings.TrimSpace(string(b)))
		if err != nil || k.IsZero() {
			return model.WGKey{}, fmt.Errorf("4to6: %s must hold the gateway's WireGuard private key as wg genkey prints it (%v); remove it to make a new one, then every device needs a new config", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return model.WGKey{}, fmt.Errorf("4to6: read %s: %w", path, err)
	}
	k, err := model.GenerateWGKey()
	if err != nil {
		return model.WGKey{}, err
	}
	if err := writeFileAtomic(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return model.WGKey{}, fmt.Errorf("4to6: %w", err)
	}
	return k, nil
}

// load replaces the known devices with the store's and marks the peers for
// a sync.
func (f *fourTo6) load(ctx context.Context) error {
	entries, err := f.store.List(ctx, store.DevicesPrefix)
	if err != nil {
		return fmt.Errorf("4to6: list devices: %w", err)
	}
	devices := make(map[string]model.Device, len(entries))
	for _, e := range entries {
		var d model.Device
		if err := json.Unmarshal(e.Value, &d); err != nil {
			f.log.Error("device record unreadable; not served", "key", e.Key, "err", err)
			continue
		}
		devices[e.Key] = d
	}
	f.mu.Lock()
	f.devices = devices
	f.mu.Unlock()
	f.changed()
	return nil
}

// apply applies one change of a device record.
func (f *fourTo6) apply(ev store.Event) {
	f.mu.Lock()
	switch ev.Type {
	case store.EventDelete:
		delete(f.devices, ev.Entry.Key)
	case store.EventPut:
		var d model.Device
		if err := json.Unmarshal(ev.Entry.Value, &d); err != nil {
			f.log.Error("device record unreadable; not served", "key", ev.Entry.Key, "err", err)
			delete(f.devices, ev.Entry.Key)
		} else {
			f.devices[ev.Entry.Key] = d
		}
	}
	f.mu.Unlock()
	f.changed()
}

func (f *fourTo6) changed() {
	select {
	case f.dirty <- struct{}{}:
	default: // a sync is due already
	}
}

// snapshot returns the known devices, sorted by tenant and name.
func (f *fourTo6) snapshot() []model.Device {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]model.Device, 0, len(f.devices))
	for _, d := range f.devices {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b model.Device) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// peers turns devices into the engine's peers, leaving out (and logging)
// those it cannot serve: a bad key, a key held twice, an address outside
// this gateway's prefix.
func (f *fourTo6) peers(devices []model.Device) []wg4to6.Peer {
	out := make([]wg4to6.Peer, 0, len(devices))
	seen := make(map[model.WGKey]string, len(devices))
	for _, d := range devices {
		k, err := model.ParseWGKey(d.PublicKey)
		switch {
		case err != nil || k.IsZero():
			f.log.Error("device has no usable public key; not served", "device", d.Name, "tenant", d.Tenant, "err", err)
			continue
		case seen[k] != "":
			f.log.Error("device has the public key of another; not served", "device", d.Name, "tenant", d.Tenant, "other", seen[k])
			continue
		case !d.Address.IsValid() || d.Address.Bits() < f.plan.Prefix.Bits() || !f.plan.Prefix.Contains(d.Address.Addr()):
			f.log.Warn("device address outside this gateway's prefix; not served here", "device", d.Name, "tenant", d.Tenant,
				"address", d.Address.String(), "prefix", f.plan.Prefix.String())
			continue
		}
		seen[k] = d.ID()
		out = append(out, wg4to6.Peer{PublicKey: wg4to6.Key(k), Addr: d.Address, Open: slices.Clone(d.Open)})
	}
	return out
}

// push sets the engine's peers to the known devices.
func (f *fourTo6) push() error {
	peers := f.peers(f.snapshot())
	if err := f.eng.SetPeers(peers); err != nil {
		return fmt.Errorf("4to6: set %d peers: %w", len(peers), err)
	}
	f.log.Debug("peers set", "devices", len(peers))
	return nil
}

// run keeps the engine's peers in step with the store until ctx ends: it
// follows the device records and sets the whole set of peers after every
// change, retrying with backoff when the engine refuses.
func (f *fourTo6) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		follow(ctx, f.store, store.DevicesPrefix, f.log, func() {
			if err := f.load(ctx); err != nil && ctx.Err() == nil {
				f.log.Error("reload devices", "err", err)
			}
		}, f.apply)
	})
	backoff := 100 * time.Millisecond
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-f.dirty:
		case <-retry:
		}
		if err := f.push(); err != nil {
			f.log.Error("set peers; retrying", "err", err, "in", backoff.String())
			retry = time.After(backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		retry, backoff = nil, 100*time.Millisecond
	}
}

// stats are the engine's counters by device key, for the API.
func (f *fourTo6) stats() map[model.WGKey]api.DeviceStats {
	raw := f.eng.Stats()
	out := make(map[model.WGKey]api.DeviceStats, len(raw))
	for k, st := range raw {
		out[model.WGKey(k)] = api.DeviceStats{RxBytes: st.RxBytes, TxBytes: st.TxBytes, LastHandshake: st.LastHandshake}
	}
	return out
}

// close stops the engine.
func (f *fourTo6) close() error { return f.eng.Close() }

// Prometheus descriptions of the 4to6 metrics.
var (
	wgDevicesDesc   = prometheus.NewDesc("webgw_4to6_devices", "4to6 devices known to this gateway.", nil, nil)
	wgRxDesc        = prometheus.NewDesc("webgw_4to6_device_rx_bytes_total", "Bytes received from a 4to6 device by this gateway.", []string{"tenant", "device"}, nil)
	wgTxDesc        = prometheus.NewDesc("webgw_4to6_device_tx_bytes_total", "Bytes sent to a 4to6 device by this gateway.", []string{"tenant", "device"}, nil)
	wgHandshakeDesc = prometheus.NewDesc("webgw_4to6_device_last_handshake_seconds", "Unix time of a 4to6 device's last WireGuard handshake with this gateway; 0 before the first.", []string{"tenant", "device"}, nil)
)

// Describe implements prometheus.Collector.
func (f *fourTo6) Describe(ch chan<- *prometheus.Desc) {
	ch <- wgDevicesDesc
	ch <- wgRxDesc
	ch <- wgTxDesc
	ch <- wgHandshakeDesc
}

// Collect implements prometheus.Collector: the engine's counters, read
// when scraped.
func (f *fourTo6) Collect(ch chan<- prometheus.Metric) {
	devices := f.snapshot()
	stats := f.eng.Stats()
	ch <- prometheus.MustNewConstMetric(wgDevicesDesc, prometheus.GaugeValue, float64(len(devices)))
	for _, d := range devices {
		k, err := model.ParseWGKey(d.PublicKey)
		if err != nil {
			continue
		}
		st := stats[wg4to6.Key(k)]
		ch <- prometheus.MustNewConstMetric(wgRxDesc, prometheus.CounterValue, float64(st.RxBytes), d.Tenant, d.Name)
		ch <- prometheus.MustNewConstMetric(wgTxDesc, prometheus.CounterValue, float64(st.TxBytes), d.Tenant, d.Name)
		hs := 0.0
		if !st.LastHandshake.IsZero() {
			hs = float64(st.LastHandshake.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(wgHandshakeDesc, prometheus.GaugeValue, hs, d.Tenant, d.Name)
	}
}

var _ prometheus.Collector = (*fourTo6)(nil)

// Networks devices may never reach through the gateway, whatever the
// configuration: loopback, link-local (with the cloud metadata address
// 169.254.169.254), unique local IPv6 (also fd00:ec2::254), the Yggdrasil
// overlay (200::/7), and the private and shared IPv4 ranges.
var wgAlwaysBlocked = []netip.Prefix{
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("200::/7"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
}

// wgBlocked are the networks devices may never reach: wgAlwaysBlocked; the
// network of the admin API's address (when it listens on every address,
// each of the host's own addresses); the etcd endpoints' addresses; and
// the private networks the operator lets direct upstreams be in
// (upstream_allow entries of /16 or longer: wider ones stand for the
// internet). Device-to-device traffic is the engine's to refuse.
func wgBlocked(cfg *Config, apiAddr string, ifaceAddrs []netip.Prefix) []netip.Prefix {
	out := slices.Clone(wgAlwaysBlocked)
	host := func(a netip.Addr) netip.Prefix { a = a.Unmap(); return netip.PrefixFrom(a, a.BitLen()) }
	if h, _, err := net.SplitHostPort(apiAddr); err == nil {
		a, err := netip.ParseAddr(h)
		switch {
		case err != nil:
		case a.IsUnspecified():
			for _, p := range ifaceAddrs {
				out = append(out, host(p.Addr()))
			}
		default:
			blocked := host(a)
			for _, p := range ifaceAddrs {
				if p.Contains(a) || p.Contains(a.Unmap()) {
					blocked = p.Masked()
					break
				}
			}
			out = append(out, blocked)
		}
	}
	if eps, err := store.ParseEtcdURL(cfg.Store); err == nil && strings.HasPrefix(cfg.Store, "etcd://") {
		for _, ep := range eps {
			if h, _, err := net.SplitHostPort(ep); err == nil {
				if a, err := netip.ParseAddr(h); err == nil {
					out = append(out, host(a))
				}
			}
		}
	}
	if allow, err := netpolicy.ParseAllow(cfg.UpstreamAllow); err == nil {
		for _, p := range allow {
			if p.Bits() >= 16 || (p.Addr().Is4() && p.Bits() >= 8) {
				out = append(out, p.Masked())
			}
		}
	}
	// The devices' own prefix stays out of what is blocked (a ULA prefix
	// with --wg-nat66 lies in fc00::/7): device-to-device traffic is the
	// engine's to refuse, and traffic to the devices must pass.
	if plan, err := model.ParseDevicePlan(cfg.WGPrefix, cfg.WGPerDevice); err == nil {
		var carved []netip.Prefix
		for _, p := range out {
			if p.Bits() < plan.Prefix.Bits() && p.Contains(plan.Prefix.Addr()) {
				carved = append(carved, exclude(p, plan.Prefix)...)
			} else {
				carved = append(carved, p)
			}
		}
		out = carved
	}
	// Keep each network once, and none inside another.
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	var merged []netip.Prefix
	for _, p := range out {
		if len(merged) > 0 {
			if last := merged[len(merged)-1]; last.Bits() <= p.Bits() && last.Contains(p.Addr()) {
				continue
			}
		}
		merged = append(merged, p)
	}
	return merged
}

// exclude returns the networks that make up p without q, which p contains
// and is wider than: at each length from p's down to q's, the half that
// does not hold q.
func exclude(p, q netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for bits := p.Bits() + 1; bits <= q.Bits(); bits++ {
		inQ := netip.PrefixFrom(q.Addr(), bits).Masked()
		// The sibling of inQ: the same bits but the last one flipped.
		b := inQ.Addr().AsSlice()
		b[(bits-1)/8] ^= 0x80 >> ((bits - 1) % 8)
		sib, _ := netip.AddrFromSlice(b)
		out = append(out, netip.PrefixFrom(sib, bits))
	}
	return out
}

// interfaceAddrs are the host's own addresses with their networks.
func interfaceAddrs() []netip.Prefix {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ip, ok := netip.AddrFromSlice(n.IP)
			ones, _ := n.Mask.Size()
			if ok {
				ip = ip.Unmap()
				if ip.Is4() && ones > 32 {
					ones -= 96
				}
				out = append(out, netip.PrefixFrom(ip, ones))
			}
		}
	}
	return out
}

// start4to6 starts the 4to6 engine with the devices stored now as its
// peers, and registers its metrics.
func (g *Gateway) start4to6(ctx context.Context, reg prometheus.Registerer) error {
	f, err := start4to6(g.cfg, wgBlocked(g.cfg, g.APIAddr, interfaceAddrs()), g.store, g.log)
	if err != nil {
		return err
	}
	g.fourTo6 = f // closed by closeAll from here on
	if err := f.load(ctx); err != nil {
		return err
	}
	<-f.dirty
	if err := f.push(); err != nil {
		// The run loop tries again.
		f.changed()
		g.log.Error("4to6: set peers; retrying", "err", err)
	}
	reg.MustRegister(f)
	return nil
}

// apiInfo is what the API serves about 4to6; nil when it is off.
func (f *fourTo6) apiInfo() *api.WG4to6 {
	if f == nil {
		return nil
	}
	return f.info
}
