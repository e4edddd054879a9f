// Package agent is the runtime beside a private backend: it keeps several
// tunnel connections to each of one or more gateways (those configured, and
// the other members of their clusters, learned over the tunnel), registers
// its services, and serves each stream the gateway opens by dialling the
// local target. Each connection reconnects forever with capped exponential
// backoff; on stop all of them drain in-flight streams together.
package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/tunnel"
)

// Agent serves a Config. Create it with New.
type Agent struct {
	cfg     *Config
	log     *slog.Logger
	version string
	id      string
	// configured are the gateways of cfg.Gateways, in order; immutable.
	configured []*gateway
	// OnReady is called each time a gateway accepted services, with the grants.
	onReady func(gateway string, grants []tunnel.ServiceGrant)

	mu       sync.Mutex
	services []*service          // guarded by mu (names filled in when assigned)
	byName   map[string]*service // guarded by mu
	pick     picker              // auto's memory of which transport works per gateway
	dialer   dialFunc            // replaces the real transports in tests; nil otherwise

	// refused rate-limits the warning about streams of the wrong kind.
	refused warnLimiter

	// loops counts the connection loops, configured and learned, and
	// follow; learned loops are started only from one of them.
	loops sync.WaitGroup
	// runCtx is Run's context, which learned gateways' loops derive from;
	// set before the first loop starts, then read-only.
	runCtx context.Context

	// cluster is what the agent learned from gateway lists; guarded by mu.
	cluster clusterState
	// kick tells follow that a gateway list came; buffered, one pending.
	kick chan struct{}
}

// gateway is one gateway the agent keeps cfg.Connections connections to:
// an entry of cfg.Gateways, or a member of a cluster learned from a list.
type gateway struct {
	cfg     GatewayConfig // where and how to connect; immutable
	tls     *tls.Config   // immutable
	agentID string        // sent in each hello; immutable

	// seed is the configured gateway whose settings a learned one uses,
	// and whose cluster view its lists update; for a configured gateway,
	// itself. Immutable.
	seed *gateway
	// id is a learned gateway's id in its cluster; "" for configured ones.
	// Immutable.
	id string
	// stop ends a learned gateway's connections (they drain); nil for
	// configured ones. Immutable.
	stop context.CancelFunc

	// granted holds the name each service was granted at this gateway, so
	// every connection to it asks for the same one; guarded by Agent.mu.
	granted map[*service]string
	// reported is the gateway id the last welcome reported; guarded by Agent.mu.
	reported string
	// up counts the sessions welcomed and not ended yet; guarded by Agent.mu.
	up int
	// view is, for a configured gateway, the last non-empty gateway list
	// got from it or from a gateway learned from it; guarded by Agent.mu.
	view []tunnel.GatewayInfo
}

// Options are New's optional arguments.
type Options struct {
	Log     *slog.Logger
	Version string
	// OnReady is called each time a gateway accepted services (gateway is
	// its HOST:PORT).
	OnReady func(gateway string, grants []tunnel.ServiceGrant)
}

// New validates cfg and returns an agent. Bad configuration returns a *ConfigError.
func New(cfg *Config, opt Options) (*Agent, error) {
	svcs, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var id [16]byte
	rand.Read(id[:])
	a := &Agent{cfg: cfg, log: log, version: opt.Version, id: hex.EncodeToString(id[:]),
		onReady: opt.OnReady, services: svcs, byName: map[string]*service{}, kick: make(chan struct{}, 1)}
	for i, gc := range cfg.Gateways {
		tc, err := tlsConfig(i, gc)
		if err != nil {
			return nil, err
		}
		g := &gateway{cfg: gc, tls: tc, agentID: a.agentID(i), granted: map[*service]string{}}
		g.seed = g
		a.configured = append(a.configured, g)
	}
	for _, s := range svcs {
		if s.name != "" {
			a.byName[s.name] = s
		}
	}
	return a, nil
}

// PermanentError is a refusal that retrying cannot fix (a bad token, a name
// owned by another tenant). Run returns it.
type PermanentError struct{ Msg string }

func (e *PermanentError) Error() string { return e.Msg }

// Run keeps cfg.Connections connections to every gateway, configured or
// learned from a cluster's list (up to cfg.MaxGateways), and serves until
// ctx ends, then drains all of them at once and returns nil. It returns a
// *PermanentError when a configured gateway refuses the agent for good; the
// other sessions are then drained and closed too (a learned gateway that
// refuses it is only left). Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.runCtx = ctx
	var (
		once  sync.Once
		first error
	)
	a.loops.Add(1)
	go func() {
		defer a.loops.Done()
		a.follow(ctx)
	}()
	for _, g := range a.configured {
		for conn := range a.cfg.Connections {
			a.loops.Add(1)
			go func() {
				defer a.loops.Done()
				if err := a.runConn(ctx, g, conn); err != nil {
					once.Do(func() { first = err })
					cancel()
				}
			}()
		}
	}
	a.loops.Wait()
	return first
}

// agentID is the id sent to the gateway of cfg.Gateways[i]. Each gateway entry gets its own, so two
// entries that reach the same gateway (say by IPv4 and IPv6) are two agents
// there, not one agent whose every reconnect replaces the other. The
// connections of one entry share the id and differ by their index.
func (a *Agent) agentID(i int) string {
	if len(a.cfg.Gateways) == 1 {
		return a.id
	}
	return fmt.Sprintf("%s-%d", a.id, i)
}

func tlsConfig(i int, g GatewayConfig) (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{tunnel.ALPN},
		ServerName: g.ServerName,
	}
	if tc.ServerName == "" {
		tc.ServerName = hostOf(g.Addr)
	}
	switch {
	case g.Fingerprint != "":
		tc.InsecureSkipVerify = true // replaced by the pin check below
		tc.VerifyPeerCertificate = certs.VerifyPin(g.Fingerprint)
	case g.CA != "":
		pem, err := os.ReadFile(g.CA)
		if err != nil {
			return nil, cfgErr("gateways[%d].ca: read CA file %s: %v", i, g.CA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, cfgErr("gateways[%d].ca: CA file %s holds no PEM certificate", i, g.CA)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

const (
	backoffMin = 250 * time.Millisecond
	backoffMax = 5 * time.Second
)

func jitter(d time.Duration) time.Duration {
	// Full jitter in [d/2, d).
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(d/2)+1))
	return d/2 + time.Duration(n.Int64())
}

// runConn keeps connection conn (0 to cfg.Connections-1) to g up until ctx
// ends. Each connection has its own loop, so one that drops is replaced
// while its siblings keep serving.
func (a *Agent) runConn(ctx context.Context, g *gateway, conn int) error {
	log := a.log.With("gateway", g.cfg.Addr, "conn", conn)
	backoff := backoffMin
	for ctx.Err() == nil {
		start := time.Now()
		err := a.session(ctx, log, g, conn)
		if ctx.Err() != nil {
			return nil
		}
		var pe *PermanentError
		if errors.As(err, &pe) {
			log.Error("gateway refused the agent", "err", pe.Msg)
			return pe
		}
		// A session that served a while was healthy: replace it at once.
		if time.Since(start) > 10*time.Second {
			backoff = backoffMin
		}
		wait := jitter(backoff)
		log.Warn("tunnel down, reconnecting", "reason", err, "in", wait.Round(time.Millisecond).String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, backoffMax)
	}
	return nil
}

// session runs connection conn to g until it fails or ctx ends.
func (a *Agent) session(ctx context.Context, log *slog.Logger, g *gateway, conn int) error {
	d, err := a.dial(ctx, a.cfg.Transport, g)
	if err != nil {
		return err
	}
	sess, transport := d.sess, d.transport
	defer sess.Close()
	if d.tcp != nil && a.cfg.Transport == TransportAuto {
		// Watch the link's loss, so auto can prefer QUIC on a lossy one.
		go a.watchTCP(sess, g.cfg.Addr, d.tcp)
	}
	start := time.Now()
	// A gateway may complete a transport's handshake but not serve tunnels
	// over it (QUIC not enabled there): auto must not keep picking it.
	broken := func() {
		if a.cfg.Transport == TransportAuto {
			a.pick.result(g.cfg.Addr, transport, false)
		}
	}
	ctrl, err := sess.Open()
	if err != nil {
		broken()
		return err
	}

	a.mu.Lock()
	hello := &tunnel.Hello{Version: tunnel.ProtocolVersion, Token: g.cfg.Token, AgentID: g.agentID, AgentVersion: a.version,
		Conn: conn, Transport: transport, Datagrams: transport == TransportQUIC, Cluster: true}
	asked := append([]*service(nil), a.services...)
	for _, s := range asked {
		name := g.granted[s]
		if name == "" {
			name = s.name
		}
		hello.Services = append(hello.Services, tunnel.ServiceSpec{Name: name, Protocol: string(s.protocol), Weight: s.weight, Port: s.port, ProxyProtocol: s.proxyProtocol})
	}
	a.mu.Unlock()
	// A refusal can end the session so fast that yamux reports the hello's
	// write as failed although it went out: read the welcome anyway, so a
	// permanent refusal is not mistaken for a transient failure.
	werr := tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgHello, Hello: hello})
	ctrl.SetReadDeadline(time.Now().Add(a.cfg.DialTimeout))
	msg, err := tunnel.ReadMessage(ctrl)
	if err != nil {
		broken()
		if werr != nil {
			return fmt.Errorf("send hello: %w", werr)
		}
		return fmt.Errorf("read welcome: %w", err)
	}
	ctrl.SetReadDeadline(time.Time{})
	if msg.Type != tunnel.MsgWelcome {
		return fmt.Errorf("gateway sent %q instead of welcome", msg.Type)
	}
	w := msg.Welcome
	if w.Error != "" {
		if w.Permanent {
			return &PermanentError{Msg: w.Error}
		}
		return errors.New(w.Error)
	}
	if w.Datagrams && !sess.EnableDatagrams() {
		log.Warn("the gateway turned QUIC datagrams on for a session without them")
	}
	var granted []tunnel.ServiceGrant
	a.mu.Lock()
	for j, gr := range w.Services {
		if j >= len(asked) {
			break
		}
		s := asked[j]
		if gr.Error != "" {
			log.Error("service refused", "service", s.name, "target", s.target, "err", gr.Error)
			continue
		}
		if s.name == "" && gr.Name != "" {
			// Keep the assigned quick-tunnel name across reconnects.
			s.name = gr.Name
		}
		if gr.Name != "" {
			// Another gateway may have granted another random name to the
			// same service (both asked before either answered): serve both,
			// and ask each gateway again for the name it gave.
			a.byName[gr.Name] = s
			g.granted[s] = gr.Name
		}
		granted = append(granted, gr)
	}
	a.mu.Unlock()
	log.Info("tunnel up", "gateway_id", w.GatewayID, "services", len(granted), "transport", transport, "udp_datagrams", w.Datagrams)
	if g.id != "" && w.GatewayID != g.id {
		log.Warn("the learned gateway reports another id", "listed", g.id, "gateway_id", w.GatewayID)
	}
	a.mu.Lock()
	g.up++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		g.up--
		a.mu.Unlock()
	}()
	a.gotGateways(g, w.GatewayID, w.Gateways)
	if a.onReady != nil {
		a.onReady(g.cfg.Addr, granted)
	}
	// The gateway sends gateways messages on the control stream when its
	// cluster changes (and drain is the agent's only message).
	ctrlDone := make(chan struct{})
	go func() {
		defer close(ctrlDone)
		for {
			m, err := tunnel.ReadMessage(ctrl)
			if err != nil {
				if errors.Is(err, tunnel.ErrMessage) {
					log.Warn("bad control message from the gateway; reconnecting", "err", err)
					sess.Close()
				}
				return
			}
			if m.Type == tunnel.MsgGateways {
				a.gotGateways(g, "", m.Gateways)
			}
		}
	}()

	// Serve streams until the session ends; on ctx end, drain first.
	// streams tracks the stream goroutines (Add only in the accept loop, Wait
	// only after it ended); active tells the drain when none is left.
	var (
		streams   sync.WaitGroup
		active    inflight
		acceptErr error // set before done is closed
	)
	sctx, stopStreams := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			st, err := sess.Accept()
			if err != nil {
				acceptErr = err
				return
			}
			streams.Add(1)
			active.add()
			go func() {
				defer streams.Done()
				defer active.done()
				a.serveStream(sctx, log, sess, st)
			}()
		}
	}()
	// However the session ends, Run returns only after its streams' goroutines.
	defer func() {
		sess.Close()
		<-done
		<-ctrlDone
		stopStreams()
		streams.Wait()
	}()
	select {
	case <-done:
		// The gateway closed the session, or the connection died (a missed
		// keepalive, a reset).
		return fmt.Errorf("session ended after %v: %w", time.Since(start).Round(time.Second), acceptErr)
	case <-ctx.Done():
	}
	tunnel.WriteMessage(ctrl, &tunnel.Message{Type: tunnel.MsgDrain})
	log.Info("draining", "streams", active.count())
	t := time.NewTimer(a.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-active.idle():
	case <-done:
	case <-t.C:
		log.Warn("drain timeout, closing streams", "streams", active.count())
	}
	return nil
}

// warnEvery is how often a warnLimiter logs at most.
const warnEvery = 10 * time.Second

// warnLimiter logs one warning per warnEvery at most, and says how many it
// left out meanwhile. The zero value is ready to use.
type warnLimiter struct {
	mu      sync.Mutex
	last    time.Time // when a warning was last logged; guarded by mu
	dropped int       // warnings left out since then; guarded by mu
}

func (w *warnLimiter) warn(log *slog.Logger, msg string, args ...any) {
	w.mu.Lock()
	now := time.Now()
	if !w.last.IsZero() && now.Sub(w.last) < warnEvery {
		w.dropped++
		w.mu.Unlock()
		return
	}
	dropped := w.dropped
	w.last, w.dropped = now, 0
	w.mu.Unlock()
	if dropped > 0 {
		args = append(args, "suppressed", dropped)
	}
	log.Warn(msg, args...)
}

// inflight counts the streams being served and tells when none is left.
// Unlike a sync.WaitGroup it may go from 0 to 1 while someone waits.
type inflight struct {
	mu     sync.Mutex
	n      int           // guarded by mu
	idleCh chan struct{} // closed when n drops to 0; nil when nobody waits; guarded by mu
}

func (f *inflight) add() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.idleCh != nil {
		close(f.idleCh)
		f.idleCh = nil
	}
	f.mu.Unlock()
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// idle returns a channel closed when no stream is being served.
func (f *inflight) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if f.idleCh == nil {
		f.idleCh = make(chan struct{})
	}
	return f.idleCh
}

func (a *Agent) serveStream(ctx context.Context, log *slog.Logger, sess *tunnel.Session, st net.Conn) {
	st.SetReadDeadline(time.Now().Add(a.cfg.DialTimeout))
	h, err := tunnel.ReadHeader(st)
	if err != nil {
		log.Warn("bad stream from gateway", "err", err)
		st.Close()
		return
	}
	st.SetReadDeadline(time.Time{})
	a.mu.Lock()
	s := a.byName[h.Service]
	a.mu.Unlock()
	if s == nil {
		log.Warn("stream for unknown service", "service", h.Service)
		st.Close()
		return
	}
	if !serves(s.protocol, h.Kind) {
		a.refused.warn(log, "stream kind does not match the service, refused",
			"service", h.Service, "kind", h.Kind.String(), "protocol", string(s.protocol))
		st.Close()
		return
	}
	switch h.Kind {
	case tunnel.KindProbe:
		network := "tcp"
		if s.protocol == model.ProtoUDP {
			network = "udp"
		}
		probe(ctx, st, network, s.addr, a.cfg.DialTimeout)
		return
	case tunnel.KindUDP:
		a.serveUDP(ctx, log, sess.Datagrams(st), s, h)
		return
	}
	// http, h2c, tls and tcp: one TCP connection to the target, bytes
	// relayed both ways, each direction half-closed on its own.
	addr := s.addr
	if h.Kind == tunnel.KindHTTP && s.protocol == model.ProtoTLS {
		addr = s.acmeAddr
	}
	d := net.Dialer{Timeout: a.cfg.DialTimeout}
	back, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		log.Warn("local target unreachable", "service", h.Service, "target", addr, "err", err)
		if h.Kind == tunnel.KindHTTP {
			answerUnreachable(st, s.target, err)
		}
		st.Close()
		return
	}
	proxy.Splice(st, back, 0)
}

// serves reports whether a service of protocol p serves streams of kind k:
// each protocol its own kind, and probes for all of them.
func serves(p model.Protocol, k tunnel.Kind) bool {
	switch k {
	case tunnel.KindProbe:
		return true
	case tunnel.KindHTTP:
		// For tls: ACME HTTP-01 challenges the gateway forwards from its
		// HTTP port (spec.md 5.2), served by the challenge target.
		return p == model.ProtoHTTP || p == model.ProtoTLS
	case tunnel.KindH2C:
		return p == model.ProtoH2C
	case tunnel.KindTLS:
		return p == model.ProtoTLS
	case tunnel.KindTCP:
		return p == model.ProtoTCP
	case tunnel.KindUDP:
		return p == model.ProtoUDP
	}
	return false
}

// serveUDP serves one UDP client session of a udp service (spec.md 5.3):
// datagrams framed on st are sent from a socket connected to the local
// target, and its answers framed back, until the gateway closes the stream,
// the session idles for cfg.UDPIdleTimeout, or ctx ends. It closes st.
func (a *Agent) serveUDP(ctx context.Context, log *slog.Logger, st tunnel.DatagramConn, s *service, h *tunnel.Header) {
	defer st.Close()
	d := net.Dialer{Timeout: a.cfg.DialTimeout}
	back, err := d.DialContext(ctx, "udp", s.addr)
	if err != nil {
		log.Warn("local target unreachable", "service", h.Service, "target", s.target, "err", err)
		return
	}
	defer back.Close()
	err = tunnel.RelayDatagrams(ctx, st, back, a.cfg.UDPIdleTimeout)
	if err != nil && !errors.Is(err, tunnel.ErrIdle) && ctx.Err() == nil {
		log.Debug("udp session ended", "service", h.Service, "client", h.Client, "err", err)
	}
}

// probe answers a health-check stream (spec.md 5.2, kind probe): it dials
// the local target over network ("tcp" or "udp"), answers one byte,
// tunnel.ProbeOK when the dial succeeded or tunnel.ProbeFailed when not,
// closes the target connection without sending anything, and closes the
// stream. A UDP dial sends nothing, so for "udp" ProbeOK only says the
// address resolved and a socket could be connected to it, not that the
// target is alive.
func probe(ctx context.Context, st net.Conn, network, addr string, timeout time.Duration) {
	defer st.Close()
	d := net.Dialer{Timeout: timeout}
	answer := tunnel.ProbeOK
	back, err := d.DialContext(ctx, network, addr)
	if err != nil {
		answer = tunnel.ProbeFailed
	} else {
		back.Close()
	}
	st.SetWriteDeadline(time.Now().Add(timeout))
	st.Write([]byte{answer})
}

// answerUnreachable answers the HTTP/1.1 request on st with a 502 that says
// the local target is down. The gateway's HTTP client drops a response that
// arrives before it has sent its request ("unsolicited response"), so the
// request head is read first; the rest of the request is drained afterwards,
// briefly, so the gateway sees the response rather than a broken stream.
func answerUnreachable(st net.Conn, target string, dialErr error) {
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(st, 4<<10)
	if _, err := http.ReadRequest(br); err != nil {
		return
	}
	body := "webgw agent: the local target " + target + " is unreachable: " + dialErr.Error() + "\n"
	fmt.Fprintf(st, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	st.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(br, 1<<20))
}
