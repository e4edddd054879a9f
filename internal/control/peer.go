package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// DefaultMaxPeerStreams bounds the streams one peer session carries at
// once, on both ends: the relaying gateway's route.Agent for the peer
// (MaxStreams) and PeerServer.MaxStreams.
const DefaultMaxPeerStreams = 4096

// peerHeaderTimeout bounds reading a relayed stream's header, and
// peerDialTimeout dialling the local upstream for it.
const (
	peerHeaderTimeout = 10 * time.Second
	peerDialTimeout   = 10 * time.Second
)

// PeerServer accepts the peer sessions of the other gateways of the
// cluster (spec.md section 9) and serves the streams they relay from this
// gateway's own upstreams: its agents and direct upstreams, never another
// peer, so a relay cannot loop. Fields are set before the first ServeConn
// and not changed after.
type PeerServer struct {
	Table *route.Table
	// GatewayID is this gateway's id: a hello must be addressed to it.
	GatewayID string
	// Secret is the cluster secret that keys the hello's token. Never logged.
	Secret []byte
	// Member reports whether id is a live member of the cluster.
	Member func(id string) bool
	// Log receives session events; nil discards.
	Log *slog.Logger
	// HandshakeTimeout bounds the wait for the peer's hello; 0 means 10 s.
	HandshakeTimeout time.Duration
	// MaxPending bounds connections that completed TLS with the peer ALPN
	// but have not sent a valid hello yet; more are closed at once. 0
	// means 16.
	MaxPending int
	// MaxStreams bounds the streams of one session served at once; more
	// are closed at once. 0 means DefaultMaxPeerStreams.
	MaxStreams int

	pendingOnce sync.Once
	pending     chan struct{} // a slot per session waiting for its hello; made once

	mu     sync.Mutex
	byPeer map[string]*tunnel.Session // the live session of each peer gateway; guarded by mu

	relayed atomic.Int64 // streams relayed to a local upstream
}

func (s *PeerServer) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Relayed is the number of streams served for peers so far.
func (s *PeerServer) Relayed() int64 { return s.relayed.Load() }

// ServeConn runs one peer session over c, an established TLS connection
// that negotiated tunnel.PeerALPN. It returns when the session ends (or
// ctx does) and its streams have ended.
func (s *PeerServer) ServeConn(ctx context.Context, c net.Conn) {
	remote := c.RemoteAddr().String()
	// Peers open many streams: the default backlog.
	sess, err := tunnel.Server(c, nil)
	if err != nil {
		s.log().Warn("peer session", "remote", remote, "err", err)
		c.Close()
		return
	}
	defer sess.Close()
	log := s.log().With("remote", remote)
	from, ok := s.handshake(sess, log)
	if !ok {
		return
	}
	log = log.With("peer", from)

	// A later session from the same gateway replaces this one (it redialled
	// before this one was seen to die).
	s.mu.Lock()
	if s.byPeer == nil {
		s.byPeer = make(map[string]*tunnel.Session)
	}
	if old := s.byPeer[from]; old != nil {
		go old.Close() // may take a second to let frames out
	}
	s.byPeer[from] = sess
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.byPeer[from] == sess {
			delete(s.byPeer, from)
		}
		s.mu.Unlock()
	}()
	log.Info("peer gateway connected")

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(sctx, func() { sess.Close() })
	defer stop()
	limit := s.MaxStreams
	if limit == 0 {
		limit = DefaultMaxPeerStreams
	}
	var (
		wg     sync.WaitGroup
		active atomic.Int64
		served int64
	)
	for {
		st, err := sess.Accept()
		if err != nil {
			break
		}
		if active.Add(1) > int64(limit) {
			active.Add(-1)
			st.Close()
			continue
		}
		served++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer active.Add(-1)
			s.serveStream(sctx, st, log)
		}()
	}
	cancel()
	wg.Wait()
	log.Info("peer gateway disconnected", "streams", served)
}

// pendingSlots is the channel of sessions waiting for their hello, made
// at the first use.
func (s *PeerServer) pendingSlots() chan struct{} {
	s.pendingOnce.Do(func() {
		n := s.MaxPending
		if n == 0 {
			n = 16
		}
		s.pending = make(chan struct{}, n)
	})
	return s.pending
}

// handshake reads and checks the peer's hello and answers it. It reports
// the peer's id and whether the session was admitted.
func (s *PeerServer) handshake(sess *tunnel.Session, log *slog.Logger) (string, bool) {
	// Sessions not yet admitted are a stranger's: bound how many there are.
	pending := s.pendingSlots()
	select {
	case pending <- struct{}{}:
	default:
		log.Warn("too many peer connections waiting for their hello; refused")
		return "", false
	}
	defer func() { <-pending }()
	hto := s.HandshakeTimeout
	if hto == 0 {
		hto = 10 * time.Second
	}
	timer := time.AfterFunc(hto, func() { sess.Close() })
	ctrl, err := sess.Accept()
	if err != nil {
		timer.Stop()
		log.Info("peer gave no control stream", "err", err)
		return "", false
	}
	msg, err := tunnel.ReadPeerMessage(ctrl)
	if !timer.Stop() {
		log.Info("peer handshake timed out")
		return "", false
	}
	if err != nil {
		log.Info("peer hello unreadable", "err", err)
		return "", false
	}
	if msg.Type != tunnel.MsgHello {
		log.Info("peer sent no hello", "type", msg.Type)
		return "", false
	}
	h := msg.Hello
	w := &tunnel.PeerWelcome{GatewayID: s.GatewayID}
	switch {
	case h.Version < tunnel.PeerProtocolVersion:
		w.Error = fmt.Sprintf("peer protocol version %d not supported; this gateway speaks %d", h.Version, tunnel.PeerProtocolVersion)
	case h.To != s.GatewayID:
		// The address is now another gateway's (or a stale record's).
		w.Error = fmt.Sprintf("this is gateway %s, not %s", s.GatewayID, h.To)
	case h.From == s.GatewayID || s.Member == nil || !s.Member(h.From):
		w.Error = fmt.Sprintf("gateway %s is not a live member of this cluster", h.From)
	case len(s.Secret) == 0 || !tunnel.CheckPeerToken(s.Secret, h.From, h.To, h.Token):
		w.Error = "token refused: not made with this cluster's secret"
	}
	werr := tunnel.WritePeerMessage(ctrl, &tunnel.PeerMessage{Type: tunnel.MsgWelcome, Welcome: w})
	if w.Error != "" {
		log.Warn("peer refused", "peer", h.From, "err", w.Error)
		return "", false
	}
	if werr != nil {
		log.Info("peer welcome failed", "peer", h.From, "err", werr)
		return "", false
	}
	// The control stream carries nothing more; its end ends the session.
	go func() {
		for {
			if _, err := tunnel.ReadPeerMessage(ctrl); err != nil {
				sess.Close()
				return
			}
		}
	}()
	return h.From, true
}

// serveStream relays one stream of a peer to a local upstream of its
// service, and closes it.
func (s *PeerServer) serveStream(ctx context.Context, st net.Conn, log *slog.Logger) {
	st.SetReadDeadline(time.Now().Add(peerHeaderTimeout))
	h, err := tunnel.ReadHeader(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		log.Debug("peer stream header", "err", err)
		st.Close()
		return
	}
	svc := s.Table.Lookup(h.Service)
	if svc == nil || !kindFits(h.Kind, svc.Protocol) {
		log.Debug("peer stream for a service not served here", "service", h.Service, "kind", h.Kind.String())
		st.Close()
		return
	}
	var accept func(*route.Upstream) bool
	if pp := svc.ProxyProtocol(); pp != 0 && (h.Kind == tunnel.KindHTTP || h.Kind == tunnel.KindH2C) {
		// The stream starts with the peer's PROXY header, which cannot
		// go inside TLS to an https upstream (as on the relaying side).
		accept = func(u *route.Upstream) bool { return u.Direct == nil || !u.Direct.TLS }
	}
	dctx, cancel := context.WithTimeout(ctx, peerDialTimeout)
	up, u, err := svc.DialLocal(dctx, h, clientHost(h.Client), accept)
	cancel()
	if err != nil {
		log.Debug("peer stream: no local upstream", "service", h.Service, "err", err)
		if h.Kind == tunnel.KindProbe {
			st.Write([]byte{tunnel.ProbeFailed})
		}
		st.Close()
		return
	}
	s.relayed.Add(1)
	svc.CountRequest()
	switch {
	case h.Kind == tunnel.KindProbe && u.Direct != nil:
		// Reached: that is the answer an agent would give.
		up.Close()
		st.Write([]byte{tunnel.ProbeOK})
		st.Close()
	case h.Kind == tunnel.KindUDP:
		s.relayUDP(ctx, st, up, u, log)
	default:
		proxy.Splice(st, up, 0)
	}
}

// relayUDP relays the framed datagrams of a peer's udp stream to up, the
// local upstream: a connected UDP socket (direct), or an agent's udp
// stream, whose datagrams go as QUIC datagrams where its session has them.
func (s *PeerServer) relayUDP(ctx context.Context, st, up net.Conn, u *route.Upstream, log *slog.Logger) {
	defer st.Close()
	defer up.Close()
	local := up
	if u.Direct == nil {
		var dc tunnel.DatagramConn
		if ds, ok := u.Agent.Session.(datagramSession); ok {
			dc = ds.Datagrams(up)
		} else {
			dc = tunnel.StreamDatagrams(up)
		}
		defer dc.Close()
		local = datagramConn{DatagramConn: dc, Conn: up}
	}
	// No idle timeout of its own: the relaying gateway ends idle sessions.
	if err := tunnel.RelayUDP(ctx, st, local, 0); err != nil && !errors.Is(err, context.Canceled) {
		log.Debug("peer udp relay", "err", err)
	}
}

// datagramSession is a tunnel session that may carry a udp stream's
// datagrams as QUIC datagrams (*tunnel.Session).
type datagramSession interface {
	Datagrams(st net.Conn) tunnel.DatagramConn
}

// datagramConn is a DatagramConn as a connected UDP socket: one Read or
// Write is one datagram (what tunnel.RelayUDP relays to).
type datagramConn struct {
	tunnel.DatagramConn
	net.Conn // addresses only
}

func (d datagramConn) Read(p []byte) (int, error)  { return d.ReadDatagram(p) }
func (d datagramConn) Write(p []byte) (int, error) { return len(p), d.WriteDatagram(p) }
func (d datagramConn) Close() error                { return d.DatagramConn.Close() }
func (d datagramConn) SetDeadline(t time.Time) error {
	d.DatagramConn.SetReadDeadline(t)
	return d.DatagramConn.SetWriteDeadline(t)
}
func (d datagramConn) SetReadDeadline(t time.Time) error  { return d.DatagramConn.SetReadDeadline(t) }
func (d datagramConn) SetWriteDeadline(t time.Time) error { return d.DatagramConn.SetWriteDeadline(t) }

// kindFits reports whether a stream of kind k can be for a service of
// protocol p: udp streams for udp services only (they carry framed
// datagrams), and probes for any.
func kindFits(k tunnel.Kind, p model.Protocol) bool {
	switch k {
	case tunnel.KindProbe:
		return true
	case tunnel.KindUDP:
		return p == model.ProtoUDP
	}
	return p != model.ProtoUDP
}

// clientHost is the IP of a stream header's client "ip:port", for hashing.
func clientHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// PeerRefusedError is DialPeer's error when the other gateway answered the
// hello with a refusal.
type PeerRefusedError struct{ Reason string }

func (e *PeerRefusedError) Error() string { return "peer gateway refused the session: " + e.Reason }

// DialPeer runs the dialling side of a peer session (spec.md section 9)
// over c, an established TLS connection to gateway to that negotiated
// tunnel.PeerALPN: it sends the hello as gateway from, with the token made
// of secret, and waits (within timeout; 0 means 10 s) for the welcome. It
// returns the session, whose streams only the caller opens (a stream the
// other side opens ends the session).
// On error c is closed.
func DialPeer(c net.Conn, from, to string, secret []byte, timeout time.Duration) (*tunnel.Session, error) {
	// The other side opens no stream: the smallest backlog.
	sess, err := tunnel.Client(c, &tunnel.Config{AcceptBacklog: 1})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("peer session: %w", err)
	}
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	timer := time.AfterFunc(timeout, func() { sess.Close() })
	defer timer.Stop()
	ctrl, err := sess.Open()
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("peer control stream: %w", err)
	}
	hello := &tunnel.PeerHello{Version: tunnel.PeerProtocolVersion, From: from, To: to, Token: tunnel.PeerToken(secret, from, to)}
	// A refusal may close the session right after the welcome: read it
	// whatever the write said.
	werr := tunnel.WritePeerMessage(ctrl, &tunnel.PeerMessage{Type: tunnel.MsgHello, Hello: hello})
	m, err := tunnel.ReadPeerMessage(ctrl)
	if !timer.Stop() {
		sess.Close()
		return nil, fmt.Errorf("peer handshake: no welcome within %v", timeout)
	}
	switch {
	case err != nil && werr != nil:
		err = werr
	case err == nil && m.Type != tunnel.MsgWelcome:
		err = fmt.Errorf("peer handshake: got %q, want welcome", m.Type)
	case err == nil && m.Welcome.Error != "":
		err = &PeerRefusedError{Reason: m.Welcome.Error}
	}
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("peer handshake: %w", err)
	}
	go func() {
		// Streams are ours to open: one from the other side breaks the
		// protocol; the end of its control stream ends the session.
		if st, err := sess.Accept(); err == nil {
			st.Close()
			sess.Close()
		}
	}()
	go func() {
		for {
			if _, err := tunnel.ReadPeerMessage(ctrl); err != nil {
				sess.Close()
				return
			}
		}
	}()
	return sess, nil
}
