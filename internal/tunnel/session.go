package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Config tunes a session. The zero value of each field picks the default.
type Config struct {
	// MaxStreamWindow is the per-stream receive window; 0 means 8 MiB.
	// Large windows keep one stream's bulk transfer from stalling on round trips;
	// memory is only used when a reader falls behind.
	MaxStreamWindow uint32
	// KeepAliveInterval is how often the session is pinged; 0 means 15 s.
	// A peer that does not answer a ping within WriteTimeout is declared dead
	// and the session ends.
	KeepAliveInterval time.Duration
	// WriteTimeout bounds one frame write; 0 means 10 s.
	WriteTimeout time.Duration
	// AcceptBacklog bounds streams opened by the peer but not yet accepted; 0 means 1024.
	AcceptBacklog int
	// HalfCloseTimeout resets a stream this long after the local side closed
	// it if the peer has not closed too; 0 means 10 min.
	HalfCloseTimeout time.Duration
	// OpenTimeout bounds waiting for the peer to acknowledge a new stream; 0 means 10 s.
	OpenTimeout time.Duration
}

func (c *Config) yamux() *yamux.Config {
	if c == nil {
		c = &Config{}
	}
	y := yamux.DefaultConfig()
	y.LogOutput = io.Discard
	y.Logger = nil
	y.MaxStreamWindowSize = 8 << 20
	if c.MaxStreamWindow != 0 {
		y.MaxStreamWindowSize = c.MaxStreamWindow
	}
	y.KeepAliveInterval = 15 * time.Second
	if c.KeepAliveInterval != 0 {
		y.KeepAliveInterval = c.KeepAliveInterval
	}
	y.ConnectionWriteTimeout = 10 * time.Second
	if c.WriteTimeout != 0 {
		y.ConnectionWriteTimeout = c.WriteTimeout
	}
	y.AcceptBacklog = 1024
	if c.AcceptBacklog != 0 {
		y.AcceptBacklog = c.AcceptBacklog
	}
	y.StreamOpenTimeout = 10 * time.Second
	if c.OpenTimeout != 0 {
		y.StreamOpenTimeout = c.OpenTimeout
	}
	// A half-closed stream may still carry a long one-way transfer (a client
	// that half-closes, then downloads); reset it only after a long wait.
	y.StreamCloseTimeout = 10 * time.Minute
	if c.HalfCloseTimeout != 0 {
		y.StreamCloseTimeout = c.HalfCloseTimeout
	}
	return y
}

// Session is one multiplexed tunnel connection between an agent and a gateway.
type Session struct {
	mux *yamux.Session
	bc  *batchConn
}

// ErrSessionClosed is returned by Open and Accept once the session has ended,
// for whatever reason; test with errors.Is, as it may wrap the cause.
var ErrSessionClosed = errors.New("tunnel session closed")

// Server runs the gateway side of a session over conn (already authenticated TLS).
func Server(conn net.Conn, cfg *Config) (*Session, error) {
	bc := newBatchConn(conn)
	m, err := yamux.Server(bc, cfg.yamux())
	if err != nil {
		bc.Close()
		return nil, fmt.Errorf("tunnel server session: %w", err)
	}
	return &Session{mux: m, bc: bc}, nil
}

// Client runs the agent side of a session over conn.
func Client(conn net.Conn, cfg *Config) (*Session, error) {
	bc := newBatchConn(conn)
	m, err := yamux.Client(bc, cfg.yamux())
	if err != nil {
		bc.Close()
		return nil, fmt.Errorf("tunnel client session: %w", err)
	}
	return &Session{mux: m, bc: bc}, nil
}

// Open opens a new stream to the peer.
func (s *Session) Open() (net.Conn, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, s.streamErr("open", err)
	}
	return stream{st}, nil
}

// Accept waits for the next stream the peer opens.
func (s *Session) Accept() (net.Conn, error) {
	st, err := s.mux.AcceptStream()
	if err != nil {
		return nil, s.streamErr("accept", err)
	}
	return stream{st}, nil
}

// streamErr maps an error of Open or Accept. Once the session has ended,
// whatever the cause (local Close, the peer or the connection going away, a
// missed keepalive), the error is ErrSessionClosed, wrapping the cause when
// it is not the local Close.
func (s *Session) streamErr(op string, err error) error {
	switch {
	case errors.Is(err, yamux.ErrSessionShutdown):
		return ErrSessionClosed
	case s.mux.IsClosed():
		return fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	return fmt.Errorf("%s tunnel stream: %w", op, err)
}

// NumStreams is the number of open streams.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// CloseChan is closed when the session ends.
func (s *Session) CloseChan() <-chan struct{} { return s.mux.CloseChan() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.mux.IsClosed() }

// Ping measures one round trip to the peer.
func (s *Session) Ping() (time.Duration, error) { return s.mux.Ping() }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.bc.conn.RemoteAddr() }

// Close ends the session and every stream in it.
func (s *Session) Close() error {
	err := s.mux.Close()
	s.bc.Close()
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

func (b *batchConn) Read(p []byte) (int, error) { return b.conn.Read(p) }

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

		_, err := b.conn.Write(out)
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
