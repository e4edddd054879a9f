// Package control is the gateway side of the agent tunnel: it accepts an
// agent's session, authenticates it, decides which names it may serve
// (ownership, quick-tunnel names), attaches it to the routing table, and
// detaches it when the session ends or drains.
package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// Server accepts agent sessions. Fields are set before the first ServeConn
// or ServeQUIC and not changed after.
type Server struct {
	Store store.Store
	Table *route.Table
	// Log receives connection events; nil discards.
	Log *slog.Logger
	// URL returns the public URL of a service name and protocol.
	URL func(name string, proto model.Protocol) string
	// Open lets agents without a token get quick-tunnel names.
	Open bool
	// GatewayID names this gateway in welcomes.
	GatewayID string
	// MaxAgentsPerTenant bounds concurrent agents per tenant (and for all
	// anonymous agents together); 0 means 100. An agent is an agent id: its
	// sibling sessions (hello.conn 0 to MaxConnsPerAgent-1) count once.
	MaxAgentsPerTenant int
	// MaxAnonymousPerIP bounds concurrent anonymous (quick-tunnel) agents
	// from one remote IP address, counted as MaxAgentsPerTenant; 0 means 10.
	MaxAnonymousPerIP int
	// MaxStreamsPerAgent bounds concurrent streams to one agent; 0 means 1024.
	MaxStreamsPerAgent int64
	// MaxServicesPerAgent bounds the services one agent may register; 0 means 64.
	MaxServicesPerAgent int
	// Tunnel tunes the multiplexer; nil means defaults with a backlog of 2
	// streams the agent may open (it opens only the control stream).
	Tunnel *tunnel.Config
	// OnDrain is called for each service of an agent that starts draining,
	// and again every 200 ms while it drains (the proxy closes idle pooled streams).
	OnDrain func(*route.Service)
	// HandshakeTimeout bounds the wait for the agent's hello; 0 means 10 s.
	HandshakeTimeout time.Duration
	// MaxPending bounds connections that completed TLS with the tunnel ALPN
	// but are not admitted yet; more are closed at once. 0 means 64.
	MaxPending int
	// PortRange is the range public ports of tcp and udp services are
	// allocated from.
	PortRange model.PortRange
	// MaxPortsPerTenant bounds the ports one tenant (and all anonymous
	// agents together) may hold; 0 means no bound.
	MaxPortsPerTenant int
	// OpenPort opens the listener of a port a claim allocated (or found),
	// before the grant is sent, so the address the agent announces works at
	// once, and returns the public HOST:PORT to announce. An error refuses
	// the service. nil means tcp and udp services are refused.
	OpenPort func(model.Port) (string, error)
	// QuickElsewhere reports whether another gateway of the cluster serves
	// name as a quick tunnel now, and whether the agent process of agentID
	// is among those serving it there; nil means no other gateway exists.
	// A quick-tunnel name is given only to the agents that hold it.
	QuickElsewhere func(name, agentID string) (held, byAgent bool)
	// Cluster, when set, lists the live gateways of the cluster this
	// gateway is part of: welcomes carry the list, and agents whose hello
	// sets cluster get a gateways message each time it changes. nil means
	// no cluster: welcomes list no gateways and none are sent.
	Cluster GatewayLister

	pendingOnce sync.Once
	pending     chan struct{} // a slot per connection waiting for admission; made once

	mu       sync.Mutex                 // serialises claims and the counts below
	agents   map[string]int             // agents per tenant ("" = anonymous); guarded by mu
	anonByIP map[string]int             // anonymous agents per remote IP; guarded by mu
	byID     map[agentKey]*siblingConns // live agents by tenant and agent id; guarded by mu

	tokens knownTokens // tenants of tokens checked before, for when the store does not answer
}

// GatewayLister lists the live gateways of a cluster.
type GatewayLister interface {
	// Gateways returns the live gateways, this one included, sorted by id.
	// Neither side modifies the returned slice afterwards.
	Gateways() []tunnel.GatewayInfo
	// Changed returns a channel that is closed at the next change of what
	// Gateways returns.
	Changed() <-chan struct{}
}

// agentKey names one agent process as seen by one tenant. An agent id is
// only unique within its tenant: the same id under another tenant (or
// anonymously) is another agent and must never replace or uncount this one.
type agentKey struct{ tenant, id string }

// siblingConns are the live sessions of one agent, by hello.conn. They
// count as one agent; a new session with the index of a live one replaces it.
type siblingConns struct {
	ip    string        // remote IP of the session that made the entry, for anonByIP
	conns map[int]*conn // 1 to MaxConnsPerAgent entries
}

type conn struct {
	agent *route.Agent
	sess  *tunnel.Session
	index int                  // hello.conn
	specs []tunnel.ServiceSpec // as asked in the hello
	// grants answers specs, in order: a sibling that asks for a random name
	// where this one did gets the same name.
	grants []tunnel.ServiceGrant
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// MaxConnsPerAgent bounds the sibling sessions of one agent (hello.conn is
// 0 to MaxConnsPerAgent-1).
const MaxConnsPerAgent = 16

// ServeConn runs one agent session over c, an established TLS connection that
// negotiated tunnel.ALPN. It returns when the session ends.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	sess, err := tunnel.Server(c, s.tunnelConfig())
	if err != nil {
		s.log().Warn("agent session", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	s.serveSession(ctx, sess, c.RemoteAddr().String())
}

// ServeQUIC runs one agent session over c, an accepted QUIC connection that
// negotiated tunnel.ALPN (its listener configured with tunnel.QUICConfig).
// It owns c and returns when the session ends.
func (s *Server) ServeQUIC(ctx context.Context, c *quic.Conn) {
	sess, err := tunnel.ServerQUIC(c, s.tunnelConfig())
	if err != nil {
		s.log().Warn("agent session", "remote", c.RemoteAddr().String(), "transport", "quic", "err", err)
		c.CloseWithError(0, "")
		return
	}
	s.serveSession(ctx, sess, c.RemoteAddr().String())
}

func (s *Server) tunnelConfig() *tunnel.Config {
	if s.Tunnel != nil {
		return s.Tunnel
	}
	// Agents open only the control stream; anything more is refused by
	// yamux's backlog before it can buffer much (over QUIC the listener's
	// stream limit does that).
	return &tunnel.Config{AcceptBacklog: 2}
}

// serveSession runs one agent session, whatever its transport, from the
// hello to its end. It closes sess before it returns.
func (s *Server) serveSession(ctx context.Context, sess *tunnel.Session, remote string) {
	log := s.log().With("remote", remote)
	// workers are goroutines that end with the session (sendGateways).
	var workers sync.WaitGroup
	defer func() {
		sess.Close()
		workers.Wait()
	}()
	// Connections not yet admitted are a stranger's: bound how many there are.
	s.pendingOnce.Do(func() {
		n := s.MaxPending
		if n == 0 {
			n = 64
		}
		s.pending = make(chan struct{}, n)
	})
	select {
	case s.pending <- struct{}{}:
	default:
		log.Warn("too many agent connections waiting for admission; refused")
		return
	}
	admitted := false
	defer func() {
		if !admitted {
			<-s.pending
		}
	}()

	hto := s.HandshakeTimeout
	if hto == 0 {
		hto = 10 * time.Second
	}
	timer := time.AfterFunc(hto, func() { sess.Close() })
	ctrl, err := sess.Accept()
	if err != nil {
		timer.Stop()
		log.Info("agent gave no control stream", "err", err)
		return
	}
	msg, err := tunnel.ReadMessage(ctrl)
	if !timer.Stop() {
		log.Info("agent handshake timed out")
		return
	}
	if err != nil {
		log.Info("agent hello unreadable", "err", err)
		return
	}
	if msg.Type != tunnel.MsgHello {
		log.Info("agent sent no hello", "type", msg.Type)
		return
	}
	h := msg.Hello
	// For quick tunnels the agent id is what lets a reconnect replace a
	// stale session, so logs show only its start.
	log = log.With("agent", shortID(h.AgentID), "conn", h.Conn)

	welcome, agent, release := s.admit(ctx, h, sess, remote)
	if agent != nil && h.Datagrams {
		// On before the welcome says so: the agent may send at once.
		welcome.Datagrams = sess.EnableDatagrams()
	}
	var changed <-chan struct{} // closed at the next change of the cluster's list
	if agent != nil && s.Cluster != nil {
		changed = s.Cluster.Changed() // before the list: no change slips between
		welcome.Gateways = s.Cluster.Gateways()
	}
	err = tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgWelcome, Welcome: welcome})
	if errors.Is(err, tunnel.ErrMessage) && len(welcome.Gateways) > 0 {
		// The list made the welcome too large (or is malformed): welcome the
		// agent without it, and let the gateways message try at once.
		log.Warn("welcome without the gateway list", "err", err)
		welcome.Gateways = nil
		now := make(chan struct{})
		close(now)
		changed = now
		err = tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgWelcome, Welcome: welcome})
	}
	if err != nil {
		log.Info("agent welcome failed", "err", err)
	}
	if agent == nil {
		log.Info("agent refused", "err", welcome.Error)
		return
	}
	defer release()
	admitted = true
	<-s.pending
	log.Info("agent connected", "tenant", agent.Tenant, "services", agent.Services, "version", h.AgentVersion, "transport", h.Transport)
	if h.Cluster && s.Cluster != nil {
		// From here on the only writer on ctrl.
		workers.Add(1)
		go func() {
			defer workers.Done()
			s.sendGateways(ctx, log, sess, ctrl, changed, welcome.Gateways)
		}()
	}

	// Streams are the gateway's to open: an agent that opens one more
	// breaks the protocol (spec.md) and loses its session.
	go func() {
		st, err := sess.Accept()
		if err != nil {
			return
		}
		st.Close()
		log.Warn("agent opened a stream; closing its session")
		sess.Close()
	}()

	// The control stream now only carries drain; its end ends the session.
	go func() {
		for {
			m, err := tunnel.ReadMessage(ctrl)
			if err != nil {
				sess.Close()
				return
			}
			if m.Type == tunnel.MsgDrain && !agent.Draining() {
				log.Info("agent draining")
				agent.Drain()
				go s.drainLoop(agent, sess)
			}
		}
	}()
	select {
	case <-sess.CloseChan():
	case <-ctx.Done():
	}
	log.Info("agent disconnected", "tenant", agent.Tenant)
}

// sendGateways sends the agent a gateways message each time the cluster's
// list changes from the last one it got (sent), until the session or ctx
// ends. changed is closed at the first change after sent was read.
func (s *Server) sendGateways(ctx context.Context, log *slog.Logger, sess *tunnel.Session, ctrl net.Conn, changed <-chan struct{}, sent []tunnel.GatewayInfo) {
	for {
		select {
		case <-changed:
		case <-sess.CloseChan():
			return
		case <-ctx.Done():
			return
		}
		changed = s.Cluster.Changed()
		list := s.Cluster.Gateways()
		// An empty list is no news (spec.md 4.2): the agent keeps its own.
		if len(list) == 0 || slices.Equal(list, sent) {
			continue
		}
		err := tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgGateways, Gateways: list})
		if errors.Is(err, tunnel.ErrMessage) {
			log.Error("gateway list not sent to the agent", "err", err)
			continue
		}
		if err != nil {
			return // the session is ending
		}
		sent = list
	}
}

func (s *Server) drainLoop(a *route.Agent, sess *tunnel.Session) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		for _, name := range a.Services {
			if svc := s.Table.Lookup(name); svc != nil && s.OnDrain != nil {
				s.OnDrain(svc)
			}
		}
		select {
		case <-sess.CloseChan():
			return
		case <-t.C:
		}
	}
}

// admit authenticates h and claims its services. It returns the welcome to
// send, and when the agent is admitted, the attached agent and a release func.
func (s *Server) admit(ctx context.Context, h *tunnel.Hello, sess *tunnel.Session, remote string) (*tunnel.Welcome, *route.Agent, func()) {
	w := &tunnel.Welcome{GatewayID: s.GatewayID}
	// An agent sends its highest version; a newer agent speaks ours (spec.md).
	if h.Version < tunnel.ProtocolVersion {
		w.Error = fmt.Sprintf("control protocol version %d not supported; this gateway speaks %d", h.Version, tunnel.ProtocolVersion)
		w.Permanent = true
		return w, nil, nil
	}
	if h.AgentID == "" || len(h.AgentID) > 64 {
		w.Error = "agent_id must be 1-64 characters"
		w.Permanent = true
		return w, nil, nil
	}
	if h.Conn < 0 || h.Conn >= MaxConnsPerAgent {
		w.Error = fmt.Sprintf("conn %d not accepted; an agent numbers its connections to one gateway 0-%d", h.Conn, MaxConnsPerAgent-1)
		w.Permanent = true
		return w, nil, nil
	}
	maxSvc := s.MaxServicesPerAgent
	if maxSvc == 0 {
		maxSvc = 64
	}
	if len(h.Services) == 0 || len(h.Services) > maxSvc {
		w.Error = fmt.Sprintf("an agent registers 1-%d services, got %d", maxSvc, len(h.Services))
		w.Permanent = true
		return w, nil, nil
	}
	tenant := ""
	if h.Token != "" {
		t, err := store.TenantByToken(ctx, s.Store, h.Token)
		if err == nil {
			s.tokens.put(h.Token, t.Name)
		} else if known, ok := s.tokens.get(h.Token); ok && errors.Is(err, store.ErrUnavailable) && s.ownsAll(known, h.Services) {
			// The store does not answer: a token checked before, for its
			// tenant's own services, reconnects from what this gateway knows.
			t, err = model.Tenant{Name: known}, nil
		}
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				w.Error = "token refused: no tenant has this token"
				w.Permanent = true
			} else {
				w.Error = "token check failed, try again: " + err.Error()
			}
			return w, nil, nil
		}
		tenant = t.Name
	} else if !s.Open {
		w.Error = "this gateway requires a tenant token (--token); ask its operator for one"
		w.Permanent = true
		return w, nil, nil
	}

	maxStreams := s.MaxStreamsPerAgent
	if maxStreams == 0 {
		maxStreams = 1024
	}
	a := &route.Agent{
		ID: h.AgentID, Tenant: tenant, Remote: remote, Version: h.AgentVersion,
		Connected: time.Now(), Session: sess, MaxStreams: maxStreams,
		Conn: h.Conn, Transport: sess.Transport(),
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agents == nil {
		s.agents = make(map[string]int)
		s.anonByIP = make(map[string]int)
		s.byID = make(map[agentKey]*siblingConns)
	}
	key := agentKey{tenant: tenant, id: h.AgentID}
	// The same connection of the same agent process reconnecting replaces
	// its stale session; its siblings (other indexes) stay.
	if sib := s.byID[key]; sib != nil {
		if old := sib.conns[h.Conn]; old != nil {
			s.Table.Detach(old.agent)
			s.dropLocked(old)
			// Not under mu: closing lets pending frames out for up to a second,
			// and a stale peer is exactly one that may not be reading. Its
			// ServeConn ends when the close completes.
			go old.sess.Close()
		}
	}
	ip := remoteIP(remote)
	sib := s.byID[key]
	if sib == nil {
		// A new agent: siblings of a live one were counted with it.
		maxAgents := s.MaxAgentsPerTenant
		if maxAgents == 0 {
			maxAgents = 100
		}
		if s.agents[tenant] >= maxAgents {
			who := "tenant " + tenant + " already holds"
			if tenant == "" {
				who = "anonymous agents already hold"
			}
			w.Error = fmt.Sprintf("%s %d agent sessions, the limit", who, maxAgents)
			return w, nil, nil
		}
		maxAnon := s.MaxAnonymousPerIP
		if maxAnon == 0 {
			maxAnon = 10
		}
		if tenant == "" && s.anonByIP[ip] >= maxAnon {
			// One stranger must not take every quick-tunnel slot.
			w.Error = fmt.Sprintf("address %s already holds %d quick-tunnel sessions, the limit; use a tenant token (--token)", ip, maxAnon)
			return w, nil, nil
		}
	}

	var claimed []string
	for i, spec := range h.Services {
		if spec.Name == "" && sib != nil {
			// Siblings connect side by side, each asking for a random
			// name before any has one: give them all the first one's.
			spec.Name = sib.randomName(i, spec)
		}
		g := s.claimLocked(ctx, spec, tenant, h.AgentID)
		w.Services = append(w.Services, g)
		if g.Error == "" {
			claimed = append(claimed, g.Name)
			if spec.Weight > 0 {
				if a.Weights == nil {
					a.Weights = map[string]int{}
				}
				a.Weights[g.Name] = min(spec.Weight, model.MaxWeight)
			}
		}
	}
	if len(claimed) == 0 {
		// Say why: the agent shows this one message to its user.
		reasons := make([]string, 0, len(w.Services))
		w.Permanent = true
		for _, g := range w.Services {
			reasons = append(reasons, g.Error)
			if !g.Permanent {
				w.Permanent = false
			}
		}
		w.Error = strings.Join(reasons, "; ")
		return w, nil, nil
	}
	a.Services = claimed
	for _, name := range claimed {
		if err := s.Table.Attach(name, a); err != nil {
			s.log().Error("attach agent", "err", err)
		}
	}
	c := &conn{agent: a, sess: sess, index: h.Conn, specs: h.Services, grants: w.Services}
	if sib == nil {
		sib = &siblingConns{ip: ip, conns: make(map[int]*conn)}
		s.byID[key] = sib
		s.agents[tenant]++
		if tenant == "" {
			s.anonByIP[ip]++
		}
	}
	sib.conns[h.Conn] = c
	release := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.Table.Detach(a)
		s.dropLocked(c)
	}
	return w, a, release
}

// randomName is the name granted to a sibling that asked for a random name
// as spec at position i of its hello, or "" when none did.
func (sc *siblingConns) randomName(i int, spec tunnel.ServiceSpec) string {
	for _, c := range sc.conns {
		if i < len(c.specs) && i < len(c.grants) && c.specs[i].Name == "" &&
			c.specs[i].Protocol == spec.Protocol && c.grants[i].Error == "" {
			return c.grants[i].Name
		}
	}
	return ""
}

// dropLocked forgets c, and uncounts its agent when c was its last session;
// nothing when c was already dropped (a reconnect of the same connection
// replaced it).
func (s *Server) dropLocked(c *conn) {
	key := agentKey{tenant: c.agent.Tenant, id: c.agent.ID}
	sib := s.byID[key]
	if sib == nil || sib.conns[c.index] != c {
		return
	}
	delete(sib.conns, c.index)
	if len(sib.conns) > 0 {
		return
	}
	delete(s.byID, key)
	if s.agents[c.agent.Tenant]--; s.agents[c.agent.Tenant] <= 0 {
		delete(s.agents, c.agent.Tenant)
	}
	if c.agent.Tenant == "" {
		if s.anonByIP[sib.ip]--; s.anonByIP[sib.ip] <= 0 {
			delete(s.anonByIP, sib.ip)
		}
	}
}

func (s *Server) claimLocked(ctx context.Context, spec tunnel.ServiceSpec, tenant, agentID string) tunnel.ServiceGrant {
	proto := model.Protocol(spec.Protocol)
	g := tunnel.ServiceGrant{Name: spec.Name, Protocol: spec.Protocol}
	fail := func(permanent bool, format string, args ...any) tunnel.ServiceGrant {
		g.Error = fmt.Sprintf(format, args...)
		g.Permanent = permanent
		return g
	}
	if !proto.Valid() {
		return fail(true, "protocol %q not accepted; use http, h2c, tls, tcp or udp", spec.Protocol)
	}
	if spec.ProxyProtocol < 0 || spec.ProxyProtocol > 2 {
		return fail(true, "proxy_protocol %d not accepted; use 1 or 2 (0 for none)", spec.ProxyProtocol)
	}
	if spec.ProxyProtocol != 0 && proto == model.ProtoUDP {
		return fail(true, "proxy_protocol is not available for udp services")
	}
	if proto.Forwarded() && s.OpenPort == nil {
		return fail(true, "protocol %q not accepted: this gateway forwards no public ports; use http, h2c or tls", spec.Protocol)
	}
	name := spec.Name
	if name == "" {
		n, err := s.randomNameLocked(ctx)
		if err != nil {
			return fail(false, "pick a name: %v", err)
		}
		name = n
		g.Name = n
	} else if err := model.ValidateName(name); err != nil {
		return fail(true, "%v", err)
	}

	existing := s.Table.Lookup(name)
	if existing == nil {
		// The table follows the store, but check the store itself so two
		// gateways (or a lagging watch) never give one name two owners, nor
		// an owned name to a quick tunnel.
		var sv model.Service
		if _, err := store.GetJSON(ctx, s.Store, store.ServiceKey(name), &sv); err == nil {
			existing = s.Table.Upsert(sv.Name, sv.Tenant, sv.Protocol, true)
		} else if !errors.Is(err, store.ErrNotFound) {
			return fail(false, "read service %q: %v", name, err)
		}
	}
	if existing != nil {
		switch {
		case existing.Tenant != tenant && existing.Stored:
			return fail(true, "name %q belongs to another tenant; choose another name", name)
		case existing.Tenant == "" && tenant == "" && existing.Live() && !heldOnlyBy(existing, agentID):
			return fail(false, "name %q is in use by another quick tunnel; choose another name or use a token", name)
		case existing.Tenant == "" && tenant != "" && existing.Live():
			return fail(false, "name %q is in use by a quick tunnel right now; try again when it disconnects", name)
		case existing.Protocol != proto && existing.Live():
			return fail(true, "name %q is served as %s by other agents; this agent asked for %s", name, existing.Protocol, proto)
		}
	}
	if (existing == nil || (existing.Tenant == "" && !existing.Stored)) && s.QuickElsewhere != nil {
		// Another gateway of the cluster may serve the name as a quick
		// tunnel: only its own agent (connecting here too) may have it.
		switch held, byAgent := s.QuickElsewhere(name, agentID); {
		case held && tenant != "":
			return fail(false, "name %q is in use by a quick tunnel right now; try again when it disconnects", name)
		case held && !byAgent:
			return fail(false, "name %q is in use by another quick tunnel; choose another name or use a token", name)
		}
	}
	wantPP := spec.ProxyProtocol // 0: keep the stored setting
	if tenant != "" && (existing == nil || !existing.Stored || existing.Protocol != proto ||
		(wantPP != 0 && existing.ProxyProtocol() != wantPP)) {
		sv := model.Service{Name: name, Tenant: tenant, Protocol: proto, Created: time.Now().UTC(), ProxyProtocol: wantPP}
		expect := int64(0)
		if existing != nil && existing.Stored {
			var old model.Service
			rev, err := store.GetJSON(ctx, s.Store, store.ServiceKey(name), &old)
			if err != nil {
				return fail(false, "read service %q: %v", name, err)
			}
			if old.Tenant != tenant {
				return fail(true, "name %q belongs to another tenant; choose another name", name)
			}
			if len(old.Upstreams) > 0 && old.Protocol != proto {
				return fail(true, "name %q is served as %s by direct upstreams; this agent asked for %s", name, old.Protocol, proto)
			}
			// Keep the service's routing settings; only the protocol (and
			// the PROXY header, when the agent asks for one) changes.
			old.Protocol = proto
			if wantPP != 0 {
				old.ProxyProtocol = wantPP
			}
			sv = old
			expect = rev
		}
		if _, err := store.PutJSON(ctx, s.Store, store.ServiceKey(name), &sv, expect); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return fail(false, "name %q was just taken or changed; try again", name)
			}
			return fail(false, "store service %q: %v", name, err)
		}
		s.Table.Configure(sv)
	} else if tenant == "" {
		s.Table.UpsertQuick(name, proto, wantPP)
	}
	if proto.Forwarded() {
		return s.claimPortLocked(ctx, g, spec, name, tenant)
	}
	if spec.Port != 0 {
		return fail(true, "port %d: a public port is for tcp and udp services; a %s service is served on the HTTPS port", spec.Port, proto)
	}
	if s.URL != nil {
		g.URL = s.URL(name, proto)
	}
	return g
}

// claimPortLocked gives the tcp or udp service name its public port: the
// one it holds already, or a new one (spec.Port, or any free one), and opens
// its listener.
func (s *Server) claimPortLocked(ctx context.Context, g tunnel.ServiceGrant, spec tunnel.ServiceSpec, name, tenant string) tunnel.ServiceGrant {
	fail := func(permanent bool, format string, args ...any) tunnel.ServiceGrant {
		g.Error = fmt.Sprintf(format, args...)
		g.Permanent = permanent
		return g
	}
	proto := model.PortProto(spec.Protocol)
	held, err := store.PortsOf(ctx, s.Store, tenant)
	if err != nil {
		return fail(false, "read ports: %v", err)
	}
	var port model.Port
	for _, p := range held {
		switch {
		case p.Service != name || p.SNI:
		case p.Proto == proto:
			port = p
		default:
			// The service changed from tcp to udp or back: its old port goes.
			if err := store.ReleasePort(ctx, s.Store, p.Proto, p.Number, tenant); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fail(false, "release %s: %s", p, trimStore(err))
			}
		}
	}
	fresh := port.Number == 0
	switch {
	case port.Number != 0 && spec.Port != 0 && spec.Port != port.Number:
		return fail(true, "service %q holds %s port %d already; ask for that port or for none, or release it first (webgw port remove %s)",
			name, proto, port.Number, port)
	case port.Number == 0:
		p := model.Port{Proto: proto, Number: spec.Port, Tenant: tenant, Service: name, Created: time.Now().UTC()}
		port, err = store.AllocatePort(ctx, s.Store, p, s.PortRange, s.MaxPortsPerTenant)
		switch {
		case errors.Is(err, store.ErrInvalidPort), errors.Is(err, store.ErrQuota), errors.Is(err, store.ErrPortTaken):
			// Asking again will not help: another owner holds the port
			// for good, or the request is outside what this gateway allows.
			return fail(true, "%s", trimStore(err))
		case err != nil:
			return fail(false, "%s", trimStore(err))
		}
	}
	addr, err := s.OpenPort(port)
	if err != nil {
		if fresh {
			// Not usable here (another program holds it): let it go, so
			// the next attempt picks another.
			if rerr := store.ReleasePort(ctx, s.Store, port.Proto, port.Number, tenant); rerr != nil {
				s.log().Error("release a port that did not open", "port", port.String(), "err", rerr)
			}
		}
		return fail(false, "open %s: %v", port, err)
	}
	g.Port, g.URL = port.Number, addr
	return g
}

// trimStore drops the "store: " of the store's sentinel errors from a
// message meant for an agent's user.
func trimStore(err error) string { return strings.ReplaceAll(err.Error(), "store: ", "") }

func heldOnlyBy(svc *route.Service, agentID string) bool {
	for _, a := range svc.Agents() {
		if a.ID != agentID && !a.Draining() {
			return false
		}
	}
	return true
}

var (
	adjectives = []string{"quick", "brave", "calm", "bright", "eager", "gentle", "happy", "jolly", "keen", "lively",
		"merry", "noble", "proud", "quiet", "rapid", "shiny", "swift", "tidy", "vivid", "witty", "bold", "cosy",
		"fancy", "grand", "humble", "lucky", "mellow", "plucky", "sunny", "zesty"}
	animals = []string{"otter", "badger", "falcon", "heron", "koala", "lynx", "marten", "newt", "osprey", "panda",
		"quail", "raven", "seal", "tapir", "urchin", "vole", "walrus", "yak", "zebra", "beaver", "crane", "dingo",
		"egret", "ferret", "gecko", "ibis", "jackal", "lemur", "moose", "puffin"}
)

func randInt(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return int(v.Int64())
}

// randomNameLocked picks a free quick-tunnel name such as "quick-otter-42".
func (s *Server) randomNameLocked(ctx context.Context) (string, error) {
	for i := 0; i < 64; i++ {
		var name string
		if i < 32 {
			name = fmt.Sprintf("%s-%s-%d", adjectives[randInt(len(adjectives))], animals[randInt(len(animals))], 10+randInt(90))
		} else {
			name = fmt.Sprintf("%s-%s-%d", adjectives[randInt(len(adjectives))], animals[randInt(len(animals))], 1000+randInt(9000))
		}
		if s.Table.Lookup(name) != nil || model.IsReserved(name) {
			continue
		}
		_, err := s.Store.Get(ctx, store.ServiceKey(name))
		if errors.Is(err, store.ErrNotFound) {
			return name, nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("no free name found")
}

// shortID is the first 12 characters of an agent id, for logs.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// remoteIP is the IP address of a remote "ip:port".
func remoteIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}
