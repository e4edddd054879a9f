package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Config tunes a session. The zero value of each field picks the default.
// A nil *Config means all defaults.
type Config struct {
	// MaxStreamWindow is the per-stream receive window; 0 means 8 MiB.
	// Large windows keep one stream's bulk transfer from stalling on round trips;
	// memory is only used when a reader falls behind. Values below 256 KiB
	// are refused.
	MaxStreamWindow uint32
	// KeepAliveInterval is how often the peer is pinged; 0 means 5 s.
	// Over QUIC it is the keepalive period of the QUIC connection (see
	// QUICConfig).
	KeepAliveInterval time.Duration
	// PingTimeout is how long a keepalive ping may go unanswered before the
	// peer is declared dead and the session ends; 0 means 5 s. A dead peer
	// (frozen process, packets silently dropped) ends the session within
	// KeepAliveInterval+PingTimeout. Over QUIC the two together make the idle
	// timeout (see QUICConfig).
	PingTimeout time.Duration
	// WriteTimeout bounds one frame write (yamux only); 0 means 10 s.
	WriteTimeout time.Duration
	// AcceptBacklog bounds streams opened by the peer but not yet accepted
	// (over QUIC: streams the peer may have open at once toward an agent); 0
	// means 1024. Negative values are refused.
	AcceptBacklog int
	// HalfCloseTimeout resets a stream this long after the local side closed
	// it if the peer has not closed too; 0 means 10 min.
	HalfCloseTimeout time.Duration
	// OpenTimeout bounds waiting for the peer to acknowledge a new stream
	// (over QUIC: waiting for the peer's stream limit to allow one more); 0
	// means 10 s.
	OpenTimeout time.Duration
}

// Defaults of Config, applied in one place by complete.
const (
	defaultStreamWindow     = 8 << 20
	minStreamWindow         = 256 << 10 // yamux's initial window
	defaultKeepAlive        = 5 * time.Second
	defaultPingTimeout      = 5 * time.Second
	defaultWriteTimeout     = 10 * time.Second
	defaultAcceptBacklog    = 1024
	defaultHalfCloseTimeout = 10 * time.Minute
	defaultOpenTimeout      = 10 * time.Second
)

// complete returns a copy of c (nil means the zero Config) with every zero
// field set to its default.
func (c *Config) complete() Config {
	var d Config
	if c != nil {
		d = *c
	}
	if d.MaxStreamWindow == 0 {
		d.MaxStreamWindow = defaultStreamWindow
	}
	if d.KeepAliveInterval == 0 {
		d.KeepAliveInterval = defaultKeepAlive
	}
	if d.PingTimeout == 0 {
		d.PingTimeout = defaultPingTimeout
	}
	if d.WriteTimeout == 0 {
		d.WriteTimeout = defaultWriteTimeout
	}
	if d.AcceptBacklog == 0 {
		d.AcceptBacklog = defaultAcceptBacklog
	}
	// A half-closed stream may still carry a long one-way transfer (a client
	// that half-closes, then downloads); reset it only after a long wait.
	if d.HalfCloseTimeout == 0 {
		d.HalfCloseTimeout = defaultHalfCloseTimeout
	}
	if d.OpenTimeout == 0 {
		d.OpenTimeout = defaultOpenTimeout
	}
	return d
}

// validate checks a completed Config.
func (c *Config) validate() error {
	switch {
	case c.MaxStreamWindow < minStreamWindow:
		return fmt.Errorf("tunnel config: MaxStreamWindow %d, want at least %d", c.MaxStreamWindow, minStreamWindow)
	case c.AcceptBacklog < 0:
		return fmt.Errorf("tunnel config: AcceptBacklog %d, want 0 (default) or more", c.AcceptBacklog)
	case c.KeepAliveInterval < 0, c.PingTimeout < 0, c.WriteTimeout < 0, c.HalfCloseTimeout < 0, c.OpenTimeout < 0:
		return errors.New("tunnel config: negative duration; durations must be 0 (default) or positive")
	}
	return nil
}

func (c *Config) yamux() *yamux.Config {
	d := c.complete()
	y := yamux.DefaultConfig()
	y.LogOutput = io.Discard
	y.Logger = nil
	y.MaxStreamWindowSize = d.MaxStreamWindow
	// The session runs its own keepalive with its own deadline (PingTimeout);
	// yamux's would time a ping out only after the write timeout.
	y.EnableKeepAlive = false
	y.KeepAliveInterval = d.KeepAliveInterval
	y.ConnectionWriteTimeout = d.WriteTimeout
	y.AcceptBacklog = d.AcceptBacklog
	y.StreamOpenTimeout = d.OpenTimeout
	y.StreamCloseTimeout = d.HalfCloseTimeout
	return y
}

// Session is one multiplexed tunnel connection between an agent and a
// gateway, over TLS+TCP (yamux) or over QUIC.
type Session struct {
	mux muxer // set at creation, then read-only

	// localClose is set by Close, before the muxer closes, so errors after a
	// local Close are exactly ErrSessionClosed.
	localClose atomic.Bool
	// deadErr is why the keepalive ended the session; nil if it did not.
	// Guarded by deadMu.
	deadMu  sync.Mutex
	deadErr error

	kaStop chan struct{} // closed by Close to stop the keepalive loop
	kaDone chan struct{} // closed when the keepalive loop has exited (already closed without one)
	// closeOnce guards closing kaStop.
	closeOnce sync.Once
}

// muxer is what a Session needs from a multiplexer: yamux over a byte
// stream, or QUIC. Errors of open and accept after the session ended wrap
// ErrSessionClosed (exactly ErrSessionClosed after a local close).
type muxer interface {
	open() (net.Conn, error)
	accept() (net.Conn, error)
	numStreams() int
	done() <-chan struct{}
	isClosed() bool
	ping() (time.Duration, error)
	remoteAddr() net.Addr
	close() error
	transport() string
	// reads counts progress of the connection (bytes read, writes done):
	// proof of life while a ping waits behind queued data. 0 when not
	// counted (QUIC).
	reads() uint64
}

// ErrSessionClosed is returned by Open and Accept once the session has ended,
// for whatever reason; test with errors.Is, as it may wrap the cause.
var ErrSessionClosed = errors.New("tunnel session closed")

// errPingTimeout is the cause of a session ended by a missed keepalive.
var errPingTimeout = errors.New("keepalive: peer did not answer")

// Server runs the gateway side of a session over conn (already authenticated TLS).
func Server(conn net.Conn, cfg *Config) (*Session, error) {
	m, err := newYamuxMux(conn, cfg, true)
	if err != nil {
		return nil, fmt.Errorf("tunnel server session: %w", err)
	}
	return newSession(m, cfg, true), nil
}

// Client runs the agent side of a session over conn.
func Client(conn net.Conn, cfg *Config) (*Session, error) {
	m, err := newYamuxMux(conn, cfg, false)
	if err != nil {
		return nil, fmt.Errorf("tunnel client session: %w", err)
	}
	return newSession(m, cfg, true), nil
}

// newSession wraps m; with keepalive it runs the session's keepalive loop.
func newSession(m muxer, cfg *Config, keepalive bool) *Session {
	s := &Session{mux: m, kaStop: make(chan struct{}), kaDone: make(chan struct{})}
	if !keepalive {
		close(s.kaDone)
		return s
	}
	d := cfg.complete()
	go s.keepalive(d.KeepAliveInterval, d.PingTimeout)
	return s
}

// keepalive pings the peer every interval and ends the session when an
// answer has not come within timeout (or the ping failed).
func (s *Session) keepalive(interval, timeout time.Duration) {
	defer close(s.kaDone)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-s.kaStop:
			return
		case <-s.mux.done():
			return
		}
		// The ping runs apart, so a ping stuck behind a blocked write cannot
		// hold the deadline; it returns once the session is closed.
		res := make(chan error, 1)
		go func() {
			_, err := s.mux.ping()
			res <- err
		}()
		// A ping waits behind the data queued before it, which on a slow
		// link may take longer than timeout to drain: while bytes keep
		// arriving from the peer, or our writes keep being taken by it, it
		// is alive and the wait goes on. Only a timeout with no progress
		// at all ends the session.
		deadline := time.NewTimer(timeout)
		var dead error
		seen := s.mux.reads()
	wait:
		for {
			select {
			case err := <-res:
				res = nil // received
				if err != nil && !s.mux.isClosed() {
					dead = fmt.Errorf("%w: %w", errPingTimeout, err)
				}
			case <-deadline.C:
				if n := s.mux.reads(); n != seen {
					seen = n
					deadline.Reset(timeout)
					continue
				}
				dead = fmt.Errorf("%w within %v", errPingTimeout, timeout)
			case <-s.kaStop:
			case <-s.mux.done():
			}
			break wait
		}
		deadline.Stop()
		if dead != nil {
			s.deadMu.Lock()
			s.deadErr = dead
			s.deadMu.Unlock()
			s.mux.close()
		}
		if res != nil {
			// The session is closed or closing: the ping returns.
			<-res
			return
		}
		if dead != nil || s.mux.isClosed() {
			return
		}
	}
}

// Open opens a new stream to the peer. Over QUIC the peer's Accept sees
// the stream only once its first byte (or its close) arrives.
func (s *Session) Open() (net.Conn, error) {
	c, err := s.mux.open()
	if err != nil {
		return nil, s.streamErr(err)
	}
	return c, nil
}

// Accept waits for the next stream the peer opens.
func (s *Session) Accept() (net.Conn, error) {
	c, err := s.mux.accept()
	if err != nil {
		return nil, s.streamErr(err)
	}
	return c, nil
}

// streamErr adds the keepalive's verdict to an error of Open or Accept:
// once the session has ended, whatever the cause (local Close, the peer or
// the connection going away, a missed keepalive), the error is
// ErrSessionClosed, wrapping the cause when it is not the local Close.
func (s *Session) streamErr(err error) error {
	if !errors.Is(err, ErrSessionClosed) || s.localClose.Load() {
		return err
	}
	s.deadMu.Lock()
	dead := s.deadErr
	s.deadMu.Unlock()
	if dead != nil {
		return fmt.Errorf("%w: %w", ErrSessionClosed, dead)
	}
	return err
}

// NumStreams is the number of open streams.
func (s *Session) NumStreams() int { return s.mux.numStreams() }

// CloseChan is closed when the session ends.
func (s *Session) CloseChan() <-chan struct{} { return s.mux.done() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.mux.isClosed() }

// Ping measures one round trip to the peer. Over yamux it sends a ping and
// waits for the answer (at most WriteTimeout); over QUIC it returns the
// connection's smoothed RTT, which QUIC keeps current from the
// acknowledgements of every packet, keepalives included.
func (s *Session) Ping() (time.Duration, error) {
	rtt, err := s.mux.ping()
	if err != nil {
		return 0, fmt.Errorf("tunnel ping: %w", err)
	}
	return rtt, nil
}

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.mux.remoteAddr() }

// Transport says what the session runs over: "tcp" (yamux over TLS or
// another byte stream) or "quic".
func (s *Session) Transport() string { return s.mux.transport() }

// Close ends the session and every stream in it, and waits for the
// session's keepalive loop to exit.
func (s *Session) Close() error {
	s.localClose.Store(true)
	s.closeOnce.Do(func() { close(s.kaStop) })
	err := s.mux.close()
	<-s.kaDone
	return err
}

// yamuxMux is a yamux session over a byte stream, with batchConn under it.
type yamuxMux struct {
	mux *yamux.Session // read-only after creation
	bc  *batchConn     // read-only after creation
}

var _ muxer = (*yamuxMux)(nil)

func newYamuxMux(conn net.Conn, cfg *Config, server bool) (*yamuxMux, error) {
	d := cfg.complete()
	if err := d.validate(); err != nil {
		return nil, err
	}
	bc := newBatchConn(conn)
	newMux := yamux.Client
	if server {
		newMux = yamux.Server
	}
	m, err := newMux(bc, cfg.yamux())
	if err != nil {
		bc.Close()
		return nil, err
	}
	return &yamuxMux{mux: m, bc: bc}, nil
}

func (y *yamuxMux) open() (net.Conn, error) {
	st, err := y.mux.OpenStream()
	if err != nil {
		return nil, y.streamErr("open", err)
	}
	return stream{st}, nil
}

func (y *yamuxMux) accept() (net.Conn, error) {
	st, err := y.mux.AcceptStream()
	if err != nil {
		return nil, y.streamErr("accept", err)
	}
	return stream{st}, nil
}

// streamErr maps an error of Open or Accept: ErrSessionClosed once the
// session has ended, wrapping the cause when it is not a local Close.
func (y *yamuxMux) streamErr(op string, err error) error {
	switch {
	case errors.Is(err, yamux.ErrSessionShutdown):
		return ErrSessionClosed
	case y.mux.IsClosed():
		return fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	return fmt.Errorf("%s tunnel stream: %w", op, err)
}

func (y *yamuxMux) numStreams() int              { return y.mux.NumStreams() }
func (y *yamuxMux) done() <-chan struct{}        { return y.mux.CloseChan() }
func (y *yamuxMux) isClosed() bool               { return y.mux.IsClosed() }
func (y *yamuxMux) ping() (time.Duration, error) { return y.mux.Ping() }
func (y *yamuxMux) remoteAddr() net.Addr         { return y.bc.conn.RemoteAddr() }
func (y *yamuxMux) transport() string            { return "tcp" }
func (y *yamuxMux) reads() uint64                { return y.bc.progress.Load() }

func (y *yamuxMux) close() error {
	err := y.mux.Close()
	y.bc.Close()
	return err
}

// stream is one multiplexed stream. yamux's Close only ends the sending
// direction (it sends FIN and still reads until the peer's FIN; if that has
// not come 10 min later, the stream is reset), so it is also exposed as
// CloseWrite for half-close aware copying.
type stream struct{ *yamux.Stream }

// CloseWrite ends the sending direction; the peer reads EOF after the data.
func (s stream) CloseWrite() error { return s.Stream.Close() }

// batchConn coalesces the mux's small writes (yamux writes each frame's
// 12-byte header and its body separately) into one write of the underlying
// connection: one TLS record and one syscall for many frames. Writers append
// to a buffer; a single flusher goroutine writes whatever has accumulated
// while its previous write was in flight.
type batchConn struct {
	conn net.Conn
	// progress counts reads that brought bytes and writes that completed:
	// the keepalive's proof of life (a write completes once the peer's
	// kernel has taken its bytes, when the socket buffer was full).
	progress atomic.Uint64

	// wmu serialises Write calls, so the bytes of one Write stay contiguous
	// even when it must wait for room (as with a net.Conn).
	wmu sync.Mutex

	mu      sync.Mutex
	cond    sync.Cond     // signalled on buffer change and close; uses mu
	buf     []byte        // pending bytes; guarded by mu
	err     error         // sticky write error; guarded by mu
	closed  bool          // guarded by mu
	flushed chan struct{} // closed when the flusher has exited
}

const (
	batchMax     = 256 << 10 // writers wait when this much is pending
	flushSlice   = 64 << 10  // the flusher's largest single write
	batchInitCap = 16 << 10
	// closeFlushWait bounds how long Close lets pending bytes out before it
	// closes the connection under a blocked write.
	closeFlushWait = time.Second
)

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{conn: c, buf: make([]byte, 0, batchInitCap), flushed: make(chan struct{})}
	b.cond.L = &b.mu
	go b.flushLoop()
	return b
}

func (b *batchConn) Read(p []byte) (int, error) {
	n, err := b.conn.Read(p)
	if n > 0 {
		b.progress.Add(1)
	}
	return n, err
}

// Write queues p for the flusher. It returns once p is queued, not written;
// it waits only while batchMax bytes are pending. A write error of the
// flusher is returned by every later Write.
func (b *batchConn) Write(p []byte) (int, error) {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	written := 0
	b.mu.Lock()
	for len(p) > 0 {
		for len(b.buf) >= batchMax && b.err == nil && !b.closed {
			b.cond.Wait()
		}
		if b.err != nil || b.closed {
			err := b.err
			if err == nil {
				err = net.ErrClosed
			}
			b.mu.Unlock()
			return written, err
		}
		// Large bodies go in slices, so the pending buffer stays bounded.
		n := min(len(p), batchMax-len(b.buf))
		wake := len(b.buf) == 0
		b.buf = append(b.buf, p[:n]...)
		p = p[n:]
		written += n
		if wake {
			b.cond.Broadcast()
		}
	}
	b.mu.Unlock()
	return written, nil
}

func (b *batchConn) flushLoop() {
	defer close(b.flushed)
	spare := make([]byte, 0, batchInitCap)
	for {
		b.mu.Lock()
		for len(b.buf) == 0 && !b.closed {
			b.cond.Wait()
		}
		if len(b.buf) == 0 && b.closed {
			b.mu.Unlock()
			return
		}
		out := b.buf
		b.buf = spare[:0]
		b.mu.Unlock()
		b.cond.Broadcast() // wake writers waiting for room

		// Written in slices, so the keepalive sees progress on a slow link
		// (a write returns once the peer has taken enough of the bytes).
		var err error
		for rest := out; len(rest) > 0 && err == nil; {
			n := min(len(rest), flushSlice)
			_, err = b.conn.Write(rest[:n])
			rest = rest[n:]
			b.progress.Add(1)
		}
		spare = out[:0]
		if err != nil {
			b.mu.Lock()
			b.err = err
			b.buf = nil
			b.mu.Unlock()
			b.cond.Broadcast()
			b.conn.Close()
			return
		}
	}
}

// Close stops accepting writes, lets the pending bytes out for at most
// closeFlushWait (a peer that stopped reading cannot make it hang), then
// closes the connection, which also ends a write still in flight.
func (b *batchConn) Close() error {
	b.mu.Lock()
	already := b.closed
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
	if already {
		return nil
	}
	// Let pending frames (a go-away, a final close) out, but never wait long.
	select {
	case <-b.flushed:
	case <-time.After(closeFlushWait):
	}
	return b.conn.Close()
}

func (b *batchConn) LocalAddr() net.Addr                { return b.conn.LocalAddr() }
func (b *batchConn) RemoteAddr() net.Addr               { return b.conn.RemoteAddr() }
func (b *batchConn) SetDeadline(t time.Time) error      { return b.conn.SetDeadline(t) }
func (b *batchConn) SetReadDeadline(t time.Time) error  { return b.conn.SetReadDeadline(t) }
func (b *batchConn) SetWriteDeadline(t time.Time) error { return b.conn.SetWriteDeadline(t) }
