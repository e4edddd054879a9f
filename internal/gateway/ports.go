package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/edge"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxyproto"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// ports keeps one listener open for each public port record in the store:
// a TCP forwarder or a UDP forwarder to the port's service. Ports open and
// close live as records are allocated and released.
type ports struct {
	host    string // the address listeners bind; "" means every address
	table   *route.Table
	names   *edge.Names // resolves SNI ports' server names
	store   store.Store
	log     *slog.Logger
	tcpIdle time.Duration
	udpIdle time.Duration
	// maxUDP bounds the UDP sessions of one port; maxUDPTenant those of all
	// of one tenant's ports together.
	maxUDP       int
	maxUDPTenant int64
	// maxTCPPerIP bounds one client address's connections to one TCP port.
	maxTCPPerIP int
	// trusted are the sources whose inbound PROXY header is honoured on
	// TCP ports; nil means none.
	trusted []netip.Prefix
	// accessLog logs a line per connection and UDP session.
	accessLog bool
	// overlay, when set (the Yggdrasil node runs), listens on the node's
	// overlay address: a tcp port of a service published there (model
	// Service.Ygg) is opened there too, and only while it is published.
	overlay func(port int) (net.Listener, error)
	// overlayPacket is overlay's UDP twin.
	overlayPacket func(port int) (net.PacketConn, error)

	mu     sync.Mutex
	open   map[string]*openPort          // by model.Port.String(); guarded by mu
	limits map[string]*edge.SessionLimit // UDP sessions by tenant; guarded by mu
	closed bool                          // guarded by mu: no more ports open
	ctx    context.Context               // parent of every port's context; set before use
}

// openPort is one listening port.
type openPort struct {
	rec    atomic.Pointer[model.Port] // the record it serves; replaced when the record changes
	cancel context.CancelFunc         // stops its Serve
	tcp    *edge.TCPForwarder         // nil for udp
	done   chan struct{}              // closed when Serve returned

	// The port on the overlay address, while its service is published
	// there; guarded by ports.mu. ycancel is set while it is open.
	ytcp    *edge.TCPForwarder // nil for udp
	ycancel context.CancelFunc
}

// service is the service a port's connection goes to now, or nil: the
// record's service, when it is still the record tenant's and of a protocol
// the port can carry.
func (o *openPort) service(t *route.Table) *route.Service {
	r := o.rec.Load()
	svc := t.Lookup(r.Service)
	if svc == nil || svc.Tenant != r.Tenant {
		return nil
	}
	switch {
	case r.Proto == model.PortUDP && svc.Protocol == model.ProtoUDP:
	case r.Proto == model.PortTCP && (svc.Protocol == model.ProtoTCP || svc.Protocol == model.ProtoTLS):
	default:
		return nil
	}
	return svc
}

// ensure opens p's listener, or updates the record an open one serves. It
// is idempotent.
func (m *ports) ensure(p model.Port) error {
	key := p.String()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("gateway stopping")
	}
	if o := m.open[key]; o != nil {
		old := o.rec.Load()
		if old.SNI == p.SNI {
			o.rec.Store(&p)
			return nil
		}
		m.closeLocked(key, o) // SNI mode changed: reopen
	}
	addr := net.JoinHostPort(m.host, strconv.Itoa(p.Number))
	ctx, cancel := context.WithCancel(m.ctx)
	o := &openPort{cancel: cancel, done: make(chan struct{})}
	o.rec.Store(&p)
	log := m.log.With("port", key)
	switch p.Proto {
	case model.PortTCP:
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			cancel()
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		if len(m.trusted) > 0 {
			ln = proxyproto.NewListener(ln, m.trusted, 0)
		}
		o.tcp = &edge.TCPForwarder{Lookup: func() *route.Service { return o.service(m.table) }, IdleTimeout: m.tcpIdle, AccessLog: m.accessLog,
			MaxConnsPerIP: m.maxTCPPerIP, Log: log}
		if p.SNI {
			o.tcp.SNI = func(serverName string) *route.Service {
				svc := m.names.Lookup(serverName)
				if svc == nil || svc.Tenant != o.rec.Load().Tenant {
					return nil
				}
				return svc
			}
		}
		go func() {
			defer close(o.done)
			if err := o.tcp.Serve(ctx, ln); err != nil {
				log.Error("tcp port stopped", "err", err)
			}
		}()
	case model.PortUDP:
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			cancel()
			return fmt.Errorf("listen %s/udp: %w", addr, err)
		}
		lim := m.limits[p.Tenant]
		if lim == nil {
			lim = &edge.SessionLimit{Max: m.maxUDPTenant}
			m.limits[p.Tenant] = lim
		}
		f := &edge.UDPForwarder{Lookup: func() *route.Service { return o.service(m.table) }, IdleTimeout: m.udpIdle,
			MaxSessions: m.maxUDP, Limit: lim, AccessLog: m.accessLog, Log: log}
		go func() {
			defer close(o.done)
			if err := f.Serve(ctx, pc); err != nil {
				log.Error("udp port stopped", "err", err)
			}
		}()
	default:
		cancel()
		return fmt.Errorf("port %s: unknown protocol", key)
	}
	m.open[key] = o
	m.log.Info("port open", "port", key, "service", p.Service, "tenant", p.Tenant, "sni", p.SNI)
	m.overlayLocked(key, o)
	return nil
}

// RefreshOverlay opens on the overlay the tcp ports of services published
// there now and closes the others' (call it when services change).
func (m *ports) RefreshOverlay() {
	if m.overlay == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, o := range m.open {
		m.overlayLocked(key, o)
	}
}

// overlayLocked brings port o's overlay listener in step with whether its
// service is published on the overlay. m.mu must be held.
func (m *ports) overlayLocked(key string, o *openPort) {
	if m.overlay == nil || m.closed {
		return
	}
	r := o.rec.Load()
	svc := o.service(m.table)
	want := svc != nil && svc.Spec().Ygg && !r.SNI
	switch {
	case want && o.ycancel == nil:
		published := func() *route.Service {
			if svc := o.service(m.table); svc != nil && svc.Spec().Ygg {
				return svc
			}
			return nil
		}
		log := m.log.With("port", key, "on", "overlay")
		ctx, cancel := context.WithCancel(m.ctx)
		if r.Proto == model.PortUDP {
			pc, err := m.overlayPacket(r.Number)
			if err != nil {
				cancel()
				m.log.Warn("port on the overlay", "port", key, "err", err)
				return
			}
			f := &edge.UDPForwarder{Lookup: published, IdleTimeout: m.udpIdle, MaxSessions: m.maxUDP,
				Limit: m.limits[r.Tenant], AccessLog: m.accessLog, Log: log}
			go func() {
				if err := f.Serve(ctx, pc); err != nil {
					log.Error("udp port on the overlay stopped", "err", err)
				}
			}()
		} else {
			ln, err := m.overlay(r.Number)
			if err != nil {
				cancel()
				m.log.Warn("port on the overlay", "port", key, "err", err)
				return
			}
			f := &edge.TCPForwarder{Lookup: published, IdleTimeout: m.tcpIdle, AccessLog: m.accessLog, MaxConnsPerIP: m.maxTCPPerIP, Log: log}
			o.ytcp = f
			go func() {
				if err := f.Serve(ctx, ln); err != nil {
					log.Error("tcp port on the overlay stopped", "err", err)
				}
			}()
		}
		o.ycancel = cancel
		m.log.Info("port open on the overlay", "port", key, "service", r.Service)
	case !want && o.ycancel != nil:
		m.closeOverlayLocked(key, o)
	}
}

// closeOverlayLocked closes port o's overlay listener and connections.
func (m *ports) closeOverlayLocked(key string, o *openPort) {
	if o.ycancel == nil {
		return
	}
	o.ycancel()
	if o.ytcp != nil {
		done, cancel := context.WithCancel(context.Background())
		cancel()
		o.ytcp.Shutdown(done)
	}
	o.ytcp, o.ycancel = nil, nil
	m.log.Info("port closed on the overlay", "port", key)
}

// closeLocked stops port key at once: its listener and its connections.
func (m *ports) closeLocked(key string, o *openPort) {
	delete(m.open, key)
	m.closeOverlayLocked(key, o)
	o.cancel()
	if o.tcp != nil {
		done, cancel := context.WithCancel(context.Background())
		cancel()
		o.tcp.Shutdown(done) // a released port keeps no connection
	}
	m.log.Info("port closed", "port", key)
}

// sync opens every port of recs and closes every other one.
func (m *ports) sync(recs []model.Port) {
	want := make(map[string]bool, len(recs))
	for _, p := range recs {
		want[p.String()] = true
		if err := m.ensure(p); err != nil {
			m.log.Error("port cannot open; it stays allocated", "port", p.String(), "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, o := range m.open {
		if !want[key] {
			m.closeLocked(key, o)
		}
	}
}

// release closes port key, if open.
func (m *ports) release(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o := m.open[key]; o != nil {
		m.closeLocked(key, o)
	}
}

// watch keeps the open ports in step with the store until ctx ends.
func (m *ports) watch(ctx context.Context) {
	follow(ctx, m.store, store.PortsPrefix, m.log, func() {
		if recs, err := store.ListPorts(ctx, m.store); err != nil {
			m.log.Error("list ports", "err", err)
		} else {
			m.sync(recs)
		}
	}, func(ev store.Event) {
		key := strings.TrimPrefix(ev.Entry.Key, store.PortsPrefix)
		switch ev.Type {
		case store.EventDelete:
			m.release(key)
		case store.EventPut:
			var p model.Port
			if err := json.Unmarshal(ev.Entry.Value, &p); err != nil || p.String() != key {
				m.log.Error("port record unreadable; ignored", "key", ev.Entry.Key, "err", err)
				return
			}
			if err := m.ensure(p); err != nil {
				m.log.Error("port cannot open; it stays allocated", "port", key, "err", err)
			}
		}
	})
}

// shutdown stops accepting on every port and lets TCP connections finish
// until ctx ends, then closes them.
func (m *ports) shutdown(ctx context.Context) {
	m.mu.Lock()
	m.closed = true
	open := m.open
	m.open = map[string]*openPort{}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, o := range open {
		o.cancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.tcp != nil {
				o.tcp.Shutdown(ctx)
			}
			if o.ycancel != nil { // no longer changed: closed is set and o left open
				o.ycancel()
				if o.ytcp != nil {
					o.ytcp.Shutdown(ctx)
				}
			}
			<-o.done
		}()
	}
	wg.Wait()
}

// announceHost is the host in the public HOST:PORT of a port: the first public IP, else the
// listening host, else the domain.
func announceHost(publicIPs []string, bindHost, domain string) string {
	if len(publicIPs) > 0 {
		return publicIPs[0]
	}
	if ip, err := netip.ParseAddr(bindHost); err == nil && !ip.IsUnspecified() {
		return bindHost
	}
	return domain
}
