package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// Peer link timing.
const (
	// peerDialTimeout bounds one attempt: TCP, TLS and the peer hello.
	peerDialTimeout = 10 * time.Second
	// peerBackoffMin and peerBackoffMax bound the wait before redialling a
	// member; a session that lived peerStable resets it.
	peerBackoffMin = 100 * time.Millisecond
	peerBackoffMax = 5 * time.Second
	peerStable     = 10 * time.Second
	// peerDrain bounds how long the session to a member that left the
	// cluster stays open for the streams in flight in it (the member
	// closes it itself once its own requests have finished).
	peerDrain = 30 * time.Second
	// peerResync re-applies who holds what even when the cluster view did
	// not change (the table may have dropped a peer, as when a service's
	// protocol changed here).
	peerResync = 5 * time.Second
)

// peers keeps one peer session (spec.md section 9) to every other live
// member of the cluster, dialled as soon as the member appears, redialled
// with backoff when it drops and closed when the member leaves, and
// attaches each session to the routing table for the names its member
// holds: a request for a name this gateway has no usable upstream for is
// relayed there instead of failing.
type peers struct {
	self    string
	cluster *cluster.Cluster
	table   *route.Table
	secret  []byte         // the cluster secret; never logged
	roots   *x509.CertPool // the cluster's CA, which signs every member's tunnel certificate
	log     *slog.Logger

	mu    sync.Mutex
	links map[string]*peerLink // by member id; guarded by mu
	wg    sync.WaitGroup       // link goroutines
}

// peerLink is the session to one member.
type peerLink struct {
	member cluster.Member     // read-only
	cancel context.CancelFunc // ends the link at once (this gateway stops)
	left   chan struct{}      // closed by leave: the member left the cluster
	once   sync.Once          // guards closing left

	mu    sync.Mutex
	agent *route.Agent               // the live session's upstream; nil between sessions; guarded by mu
	want  map[string]cluster.Holding // the names the member holds; guarded by mu
}

// run follows the cluster until ctx ends, then closes every peer session.
func (p *peers) run(ctx context.Context) {
	p.links = map[string]*peerLink{}
	t := time.NewTicker(peerResync)
	defer t.Stop()
	for {
		changed := p.cluster.Changed()
		p.sync(ctx)
		select {
		case <-ctx.Done():
			p.mu.Lock()
			for _, l := range p.links {
				l.cancel()
			}
			p.mu.Unlock()
			p.wg.Wait()
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// sync starts and stops links to match the live members and gives each
// the names its member holds now.
func (p *peers) sync(ctx context.Context) {
	byMember := map[string]map[string]cluster.Holding{}
	for name, by := range p.cluster.HeldElsewhere() {
		for id, h := range by {
			if byMember[id] == nil {
				byMember[id] = map[string]cluster.Holding{}
			}
			byMember[id][name] = h
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	live := map[string]bool{}
	for _, m := range p.cluster.Members() {
		if m.ID == p.self || m.Tunnel == "" {
			continue
		}
		live[m.ID] = true
		l := p.links[m.ID]
		if l != nil && l.member.Tunnel != m.Tunnel {
			l.leave() // it moved: a new link to the new address
			l = nil
		}
		if l == nil {
			lctx, cancel := context.WithCancel(ctx)
			l = &peerLink{member: m, cancel: cancel, left: make(chan struct{})}
			p.links[m.ID] = l
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.runLink(lctx, l)
			}()
		}
		l.setWant(p.table, byMember[m.ID])
	}
	for id, l := range p.links {
		if !live[id] {
			l.leave()
			delete(p.links, id)
		}
	}
}

// leave ends the link because its member left: no new streams, and the
// session closes once those in flight are done (at most peerDrain).
func (l *peerLink) leave() { l.once.Do(func() { close(l.left) }) }

// setWant records the names the member holds and, while a session is up,
// attaches it to them (and detaches it from the others).
func (l *peerLink) setWant(t *route.Table, want map[string]cluster.Holding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.want
	l.want = want
	if l.agent != nil {
		l.applyLocked(t, old)
	}
}

// applyLocked brings the table in step with l.want, from old (what was
// applied before; nil when nothing was).
func (l *peerLink) applyLocked(t *route.Table, old map[string]cluster.Holding) {
	for name, h := range old {
		if nh, ok := l.want[name]; !ok || nh != h {
			t.DetachPeer(name, l.agent)
		}
	}
	for name, h := range l.want {
		if t.HasPeer(name, l.agent) {
			continue
		}
		// A conflict (the name is known here with another owner or
		// protocol) is transient: both gateways read one store.
		t.AttachPeer(name, l.agent, h.Tenant, model.Protocol(h.Protocol), h.ProxyProtocol)
	}
}

// runLink keeps a session to l's member until ctx ends.
func (p *peers) runLink(ctx context.Context, l *peerLink) {
	defer l.cancel()
	log := p.log.With("peer", l.member.ID, "addr", l.member.Tunnel)
	backoff := peerBackoffMin
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.left:
			return
		default:
		}
		sess, err := p.dial(ctx, l.member)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Once per outage at info: a member that died is dialled
			// until its lease runs out.
			if !failing {
				log.Info("peer session failed; retrying", "err", err)
				failing = true
			} else {
				log.Debug("peer session failed; retrying", "err", err)
			}
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, peerBackoffMax)
			if !l.sleep(ctx, wait) {
				return
			}
			continue
		}
		failing = false
		start := time.Now()
		a := &route.Agent{ID: l.member.ID, Peer: true, Session: sess, Remote: l.member.Tunnel, Version: l.member.Version,
			Connected: start, MaxStreams: control.DefaultMaxPeerStreams, Transport: sess.Transport()}
		l.mu.Lock()
		l.agent = a
		l.applyLocked(p.table, nil)
		l.mu.Unlock()
		log.Info("peer session up")
		left := false
		select {
		case <-sess.CloseChan():
		case <-ctx.Done():
		case <-l.left:
			left = true
		}
		l.mu.Lock()
		l.agent = nil
		l.mu.Unlock()
		p.table.Detach(a) // no new streams
		if left {
			log.Info("peer left the cluster; closing its session when its streams end")
			drain(ctx, sess, a, peerDrain)
			sess.Close()
			return
		}
		sess.Close()
		if ctx.Err() != nil {
			return
		}
		log.Info("peer session down; redialling")
		if time.Since(start) >= peerStable {
			backoff = peerBackoffMin
		}
		if !l.sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
			return
		}
		backoff = min(2*backoff, peerBackoffMax)
	}
}

// drain waits until a's streams in sess have ended, sess has closed, ctx
// has ended or limit has passed.
func drain(ctx context.Context, sess *tunnel.Session, a *route.Agent, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for a.Streams() > 0 {
		select {
		case <-sess.CloseChan():
			return
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// dial opens a peer session to m: TLS 1.3 to its tunnel address with the
// peer ALPN, its certificate checked against the cluster CA, then the
// hello.
func (p *peers) dial(ctx context.Context, m cluster.Member) (*tunnel.Session, error) {
	host, _, err := net.SplitHostPort(m.Tunnel)
	if err != nil {
		return nil, fmt.Errorf("member %s tunnel address %q: %w", m.ID, m.Tunnel, err)
	}
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: peerDialTimeout},
		Config:    &tls.Config{RootCAs: p.roots, ServerName: host, NextProtos: []string{tunnel.PeerALPN}, MinVersion: tls.VersionTLS13},
	}
	dctx, cancel := context.WithTimeout(ctx, peerDialTimeout)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", m.Tunnel)
	if err != nil {
		return nil, err
	}
	if proto := c.(*tls.Conn).ConnectionState().NegotiatedProtocol; proto != tunnel.PeerALPN {
		c.Close()
		return nil, fmt.Errorf("%s answered ALPN %q, not %s: not a webgw gateway that serves peers", m.Tunnel, proto, tunnel.PeerALPN)
	}
	stop := context.AfterFunc(dctx, func() { c.Close() })
	defer stop()
	sess, err := control.DialPeer(c, p.self, m.ID, p.secret, peerDialTimeout)
	if err != nil {
		return nil, err
	}
	if !stop() {
		sess.Close()
		return nil, context.Cause(dctx)
	}
	return sess, nil
}

// sleep waits d, or until ctx ends or the member leaves; it reports
// whether d passed.
func (l *peerLink) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-l.left:
		return false
	case <-t.C:
		return true
	}
}
