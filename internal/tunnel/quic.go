package tunnel

// The QUIC transport. One QUIC connection (ALPN ALPN, like TLS) carries a
// session; each tunnel stream is one bidirectional QUIC stream. See spec.md,
// section 8.
//
// This package creates no UDP socket. quic-go logs one warning per process
// (with the standard log package, to stderr) when the quic.Transport that
// owns the UDP socket cannot raise its receive or send buffer to about
// 7 MiB (net.core.rmem_max / wmem_max too small, and not root). That
// happens where the socket is wrapped in a quic.Transport (quic.Listen,
// quic.Dial...), i.e. in the gateway's and the agent's wiring; they set
// QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true (or raise the sysctls) and
// report the buffer size through their own logger. The tests here set it.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Window sizes of QUIC connections (see QUICConfig).
const (
	// quicInitialStreamWindow is where a stream's receive window starts;
	// quic-go grows it up to Config.MaxStreamWindow while the reader keeps
	// up, so a stream whose reader is slow (a slow client behind the
	// gateway) holds at most this much unread.
	quicInitialStreamWindow = 512 << 10
	// quicConnWindowFactor times the stream window is the connection window,
	// fixed from the start. It is only a bound on the memory of unread data:
	// when the streams' unread data fills it, every stream of the
	// connection stalls (yamux has no such window), so it is large: 16 full
	// bulk streams, or 256 slow ones.
	quicConnWindowFactor = 16
	// quicServerMaxStreams is how many bidirectional streams the gateway
	// lets a peer hold open. An agent needs one (its control stream), but the
	// gateway's UDP listener also serves HTTP/3 browsers, which use up to
	// about 100 at once.
	quicServerMaxStreams = 100
)

// Application error codes of the QUIC transport.
const (
	// quicCodeClose closes the connection without an error (Session.Close).
	quicCodeClose quic.ApplicationErrorCode = 0
	// quicCodeSilent closes a connection whose peer stopped answering.
	quicCodeSilent quic.ApplicationErrorCode = 2
	// quicCodeStreamClosed cancels a stream direction the local side no
	// longer wants (stream Close, half-close timeout).
	quicCodeStreamClosed quic.StreamErrorCode = 0
)

// QUICConfig is the quic-go configuration for a tunnel QUIC connection
// described by cfg (nil means defaults): server for the gateway's listener,
// !server for the agent's dial. Both sides must use it, as the idle timeout
// is negotiated (the smaller one wins) and ends the session of a dead peer.
//
//   - KeepAlivePeriod is a fifth of KeepAliveInterval (1 s) and
//     MaxIdleTimeout is (KeepAliveInterval+PingTimeout)*2/5 (4 s): an idle
//     connection sends a PING every second, and a connection that has
//     received no packet for 4 s is closed. UDP carries no reset when a
//     peer's process dies, so this timeout is all that tells the gateway
//     that a killed agent is gone (bench/README.md: with 10 s, requests sent
//     to a killed agent hung for 10 s). Unlike a yamux ping, which waits
//     behind queued data, QUIC's PINGs and ACKs are not delayed by the
//     streams' data, so a short timeout does not end a busy healthy
//     connection. A peer that froze or whose packets are dropped is noticed
//     at most 4 s after its last packet arrived (quic-go raises the idle
//     timeout to 3 probe timeouts on a path with a very long RTT).
//   - Stream receive windows start at 512 KiB and grow to MaxStreamWindow
//     (8 MiB, like yamux's) while the reader keeps up; the connection
//     window is 16 times that (128 MiB) from the start, a bound on unread
//     data only.
//   - MaxIncomingStreams: on the agent side AcceptBacklog (1024), the
//     streams the gateway may have open to it at once; on the gateway
//     side 100, as the listener also serves HTTP/3 (an agent opens one).
//   - Datagrams are enabled, reserved for UDP forwarding.
func QUICConfig(cfg *Config, server bool) *quic.Config {
	d := cfg.complete()
	q := &quic.Config{
		KeepAlivePeriod:                d.KeepAliveInterval / 5,
		MaxIdleTimeout:                 (d.KeepAliveInterval + d.PingTimeout) * 2 / 5,
		InitialStreamReceiveWindow:     min(quicInitialStreamWindow, uint64(d.MaxStreamWindow)),
		MaxStreamReceiveWindow:         uint64(d.MaxStreamWindow),
		InitialConnectionReceiveWindow: quicConnWindowFactor * uint64(d.MaxStreamWindow),
		MaxConnectionReceiveWindow:     quicConnWindowFactor * uint64(d.MaxStreamWindow),
		MaxIncomingStreams:             int64(d.AcceptBacklog),
		EnableDatagrams:                true,
	}
	if server {
		q.MaxIncomingStreams = quicServerMaxStreams
		// Unidirectional streams stay at quic-go's default for HTTP/3.
	} else {
		q.MaxIncomingUniStreams = -1 // the gateway opens none
	}
	return q
}

// ServerQUIC runs the gateway side of a session over c, a QUIC connection
// accepted with QUICConfig(cfg, true) that negotiated ALPN. Its keepalive is
// QUIC's own (see QUICConfig). Session.Close closes c, not the
// quic.Transport (UDP socket) under it.
func ServerQUIC(c *quic.Conn, cfg *Config) (*Session, error) {
	m, err := newQUICMux(c, cfg)
	if err != nil {
		return nil, fmt.Errorf("tunnel server session: %w", err)
	}
	return newSession(m, cfg, false), nil
}

// ClientQUIC runs the agent side of a session over c, a QUIC connection
// dialled with QUICConfig(cfg, false) that negotiated ALPN.
func ClientQUIC(c *quic.Conn, cfg *Config) (*Session, error) {
	m, err := newQUICMux(c, cfg)
	if err != nil {
		return nil, fmt.Errorf("tunnel client session: %w", err)
	}
	return newSession(m, cfg, false), nil
}

// quicMux is a session over one QUIC connection.
type quicMux struct {
	conn             *quic.Conn    // read-only after creation
	openTimeout      time.Duration // read-only after creation
	halfCloseTimeout time.Duration // read-only after creation

	streams    atomic.Int64 // streams returned by open and accept and not yet ended
	localClose atomic.Bool  // set by close before the connection closes

	dgOnce sync.Once                   // starts receiveDatagrams (EnableDatagrams)
	flowMu sync.Mutex                  // guards flows
	flows  map[quic.StreamID]*quicFlow // udp streams using QUIC datagrams; nil until EnableDatagrams
	// pending holds datagrams of streams without a flow yet; guarded by flowMu.
	pending map[quic.StreamID]*earlyDatagrams
	// dgSent and dgRecv count the udp datagrams that went as QUIC
	// datagrams, and those received for a flow.
	dgSent, dgRecv atomic.Int64
}

var _ muxer = (*quicMux)(nil)

func newQUICMux(c *quic.Conn, cfg *Config) (*quicMux, error) {
	d := cfg.complete()
	if err := d.validate(); err != nil {
		return nil, err
	}
	if p := c.ConnectionState().TLS.NegotiatedProtocol; p != ALPN {
		return nil, fmt.Errorf("quic connection negotiated ALPN %q, want %q", p, ALPN)
	}
	m := &quicMux{conn: c, openTimeout: d.OpenTimeout, halfCloseTimeout: d.HalfCloseTimeout}
	go m.silenceWatch((d.KeepAliveInterval + d.PingTimeout) * 3 / 20)
	return m, nil
}

// silenceWatch closes the connection when packets went out but none came
// back for limit (at least 1 s, or three round trips with their variation
// if longer):
// a peer that died without a word (a killed agent: UDP carries no reset)
// is noticed in about 1.5 s instead of the 4 s idle timeout. A live peer
// always answers within that time: both sides send a PING after 1 s
// without sending, and every PING is acknowledged. It ends with the
// connection.
func (m *quicMux) silenceWatch(limit time.Duration) {
	limit = max(limit, time.Second)
	t := time.NewTicker(limit / 5)
	defer t.Stop()
	st := m.conn.ConnectionStats()
	recv, sent, heard := st.PacketsReceived, st.PacketsSent, time.Now()
	for {
		select {
		case <-m.conn.Context().Done():
			return
		case now := <-t.C:
			st := m.conn.ConnectionStats()
			if st.PacketsReceived != recv {
				recv, sent, heard = st.PacketsReceived, st.PacketsSent, now
				continue
			}
			wait := max(limit, 3*(st.SmoothedRTT+4*st.MeanDeviation))
			if st.PacketsSent > sent && now.Sub(heard) > wait {
				m.conn.CloseWithError(quicCodeSilent, "peer silent")
				return
			}
		}
	}
}

// open opens a stream at once, without a round trip: QUIC announces a
// stream with its first frame. It waits (at most openTimeout) only while
// the peer's stream limit is reached.
func (m *quicMux) open() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(m.conn.Context(), m.openTimeout)
	defer cancel()
	st, err := m.conn.OpenStreamSync(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && m.conn.Context().Err() == nil {
			return nil, fmt.Errorf("open tunnel stream: peer's stream limit reached for %v: %w", m.openTimeout, err)
		}
		return nil, m.streamErr(err)
	}
	return m.newStream(st), nil
}

func (m *quicMux) accept() (net.Conn, error) {
	st, err := m.conn.AcceptStream(context.Background())
	if err != nil {
		return nil, m.streamErr(err)
	}
	return m.newStream(st), nil
}

// streamErr maps an error of open or accept, which both fail only when the
// connection has ended (open's own timeout aside): ErrSessionClosed,
// wrapping the cause when it is not a local close. quic-go may return the
// error just before the connection's context is done.
func (m *quicMux) streamErr(err error) error {
	if m.localClose.Load() {
		return ErrSessionClosed
	}
	if cause := context.Cause(m.conn.Context()); cause != nil {
		err = cause
	}
	return fmt.Errorf("%w: %w", ErrSessionClosed, err)
}

func (m *quicMux) newStream(st *quic.Stream) *quicStream {
	m.streams.Add(1)
	return &quicStream{st: st, m: m}
}

func (m *quicMux) numStreams() int       { return int(m.streams.Load()) }
func (m *quicMux) done() <-chan struct{} { return m.conn.Context().Done() }
func (m *quicMux) isClosed() bool        { return m.conn.Context().Err() != nil }
func (m *quicMux) remoteAddr() net.Addr  { return m.conn.RemoteAddr() }
func (m *quicMux) transport() string     { return "quic" }
func (m *quicMux) reads() uint64         { return 0 } // no tunnel keepalive over QUIC

// ping returns the smoothed RTT that quic-go keeps from acknowledgements;
// the connection's own keepalive guarantees a sample at least every
// KeepAliveInterval.
func (m *quicMux) ping() (time.Duration, error) {
	if m.isClosed() {
		return 0, m.streamErr(context.Cause(m.conn.Context()))
	}
	return m.conn.ConnectionStats().SmoothedRTT, nil
}

func (m *quicMux) close() error {
	m.localClose.Store(true)
	return m.conn.CloseWithError(quicCodeClose, "")
}

// quicStream is one tunnel stream over a bidirectional QUIC stream, a
// net.Conn. Differences from the yamux stream:
//
//   - CloseWrite sends FIN (quic Stream.Close): the peer reads EOF after the
//     data, and this side still reads. Close ends both directions: FIN for
//     sending, and STOP_SENDING for receiving (Read returns an error at
//     once; the peer's Write fails, as after a yamux RST). yamux's Close
//     is only a half-close.
//   - After CloseWrite, if the peer has not ended its direction within
//     HalfCloseTimeout, receiving is cancelled (STOP_SENDING), like
//     yamux's reset after its stream close timeout.
//   - The peer's Accept sees the stream only when its first frame arrives
//     (data or FIN), not at Open.
//   - A stream counts in NumStreams until both directions have ended here:
//     sending by CloseWrite, Close or a Write that failed for good;
//     receiving by Close or a Read that returned an error other than a
//     deadline (EOF included). A stream whose data the application never
//     reads to the end stays counted (until HalfCloseTimeout after its
//     CloseWrite), where yamux frees it on the peer's FIN.
type quicStream struct {
	st *quic.Stream // safe for concurrent Read and Write; Write and Close serialised by wmu
	m  *quicMux     // read-only

	// wmu serialises Write with closing the send side, which quic-go
	// requires.
	wmu sync.Mutex

	sendDone  atomic.Bool // sending has ended
	recvDone  atomic.Bool // receiving has ended
	countDone atomic.Bool // the stream was taken out of the count

	tmu sync.Mutex
	// halfClose cancels receiving HalfCloseTimeout after CloseWrite.
	// Guarded by tmu.
	halfClose *time.Timer
}

var _ net.Conn = (*quicStream)(nil)

func (s *quicStream) Read(p []byte) (int, error) {
	n, err := s.st.Read(p)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		s.endRecv()
	}
	return n, err
}

func (s *quicStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n, err := s.st.Write(p)
	if err != nil && s.st.Context().Err() != nil { // reset or closed: sending is over
		s.endSend()
	}
	return n, err
}

// CloseWrite ends the sending direction; the peer reads EOF after the data.
func (s *quicStream) CloseWrite() error {
	err := s.closeSend()
	s.tmu.Lock()
	if s.halfClose == nil && !s.countDone.Load() {
		s.halfClose = time.AfterFunc(s.m.halfCloseTimeout, func() {
			s.st.CancelRead(quicCodeStreamClosed)
			s.endRecv()
		})
	}
	s.tmu.Unlock()
	if err != nil {
		return fmt.Errorf("close tunnel stream: %w", err)
	}
	return nil
}

// Close ends both directions: data already written is still delivered,
// then the peer reads EOF; this side stops reading at once.
func (s *quicStream) Close() error {
	s.st.CancelRead(quicCodeStreamClosed)
	s.endRecv()
	if err := s.closeSend(); err != nil {
		return fmt.Errorf("close tunnel stream: %w", err)
	}
	return nil
}

// closeSend sends FIN after the data written so far. A Write blocked in
// another goroutine (on flow control) is ended first, as yamux does.
func (s *quicStream) closeSend() error {
	if s.sendDone.Load() {
		return nil
	}
	s.st.SetWriteDeadline(time.Unix(1, 0)) // unblock a Write in flight; no Write may follow
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.st.Close()
	s.endSend()
	return err
}

func (s *quicStream) endSend() {
	if !s.sendDone.Swap(true) && s.recvDone.Load() {
		s.ended()
	}
}

func (s *quicStream) endRecv() {
	if !s.recvDone.Swap(true) && s.sendDone.Load() {
		s.ended()
	}
}

// ended takes the stream out of the count once, and stops the half-close
// timer.
func (s *quicStream) ended() {
	if s.countDone.Swap(true) {
		return
	}
	s.m.streams.Add(-1)
	s.tmu.Lock()
	if s.halfClose != nil {
		s.halfClose.Stop()
	}
	s.tmu.Unlock()
}

func (s *quicStream) LocalAddr() net.Addr                { return s.m.conn.LocalAddr() }
func (s *quicStream) RemoteAddr() net.Addr               { return s.m.conn.RemoteAddr() }
func (s *quicStream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s *quicStream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s *quicStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

var quietOnce sync.Once

// QuietQUICBufferWarning stops quic-go from printing, with the standard
// logger, that it could not enlarge a UDP socket's buffers; callers say it
// through slog where it matters (the gateway's listener). A value already
// set in the environment is kept.
func QuietQUICBufferWarning() {
	quietOnce.Do(func() {
		const env = "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING"
		if _, set := os.LookupEnv(env); !set {
			os.Setenv(env, "true")
		}
	})
}
