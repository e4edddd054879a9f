package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// DatagramConn carries the datagrams of one udp stream (spec.md section
// 5.3) in both directions: framed on the stream, and, on a QUIC session with
// datagrams on (section 5.4), also as QUIC datagrams. Get one with
// Session.Datagrams.
type DatagramConn interface {
	// ReadDatagram reads the next datagram into buf (see
	// DatagramReader.ReadDatagram). It returns io.EOF once the peer ended
	// the stream at a frame boundary.
	ReadDatagram(buf []byte) (int, error)
	// WriteDatagram sends p as one datagram.
	WriteDatagram(p []byte) error
	// SetReadDeadline and SetWriteDeadline work as net.Conn's; a time in
	// the past unblocks a waiting call.
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	// Close closes the stream; later calls fail.
	Close() error
}

// streamDatagrams is a DatagramConn of a stream alone.
type streamDatagrams struct {
	st net.Conn
	dr *DatagramReader
}

// StreamDatagrams returns the DatagramConn of a udp stream carrying all its
// datagrams framed (spec.md section 5.3).
func StreamDatagrams(st net.Conn) DatagramConn {
	return &streamDatagrams{st: st, dr: NewDatagramReader(st)}
}

func (d *streamDatagrams) ReadDatagram(buf []byte) (int, error) { return d.dr.ReadDatagram(buf) }
func (d *streamDatagrams) WriteDatagram(p []byte) error         { return WriteDatagram(d.st, p) }
func (d *streamDatagrams) SetReadDeadline(t time.Time) error    { return d.st.SetReadDeadline(t) }
func (d *streamDatagrams) SetWriteDeadline(t time.Time) error   { return d.st.SetWriteDeadline(t) }
func (d *streamDatagrams) Close() error                         { return d.st.Close() }

// EnableDatagrams turns on QUIC datagrams for the udp streams of s (spec.md
// section 5.4), once both ends said they support them (hello and welcome
// "datagrams"). It reports whether they are on: never on a session that is
// not over QUIC.
func (s *Session) EnableDatagrams() bool {
	m, ok := s.mux.(*quicMux)
	if !ok || !m.conn.ConnectionState().SupportsDatagrams.Remote {
		return false
	}
	m.dgOnce.Do(func() {
		m.flows = make(map[quic.StreamID]*quicFlow)
		go m.receiveDatagrams()
	})
	return true
}

// DatagramStats counts the udp datagrams this end sent as QUIC datagrams and
// received as QUIC datagrams for a flow; zero without them.
func (s *Session) DatagramStats() (sent, received int64) {
	if m, ok := s.mux.(*quicMux); ok {
		return m.dgSent.Load(), m.dgRecv.Load()
	}
	return 0, 0
}

// DatagramsEnabled reports whether EnableDatagrams turned datagrams on.
func (s *Session) DatagramsEnabled() bool {
	m, ok := s.mux.(*quicMux)
	return ok && m.datagramsOn()
}

// Datagrams returns the DatagramConn of st, a udp stream of s (from Open
// or Accept, possibly wrapped by a net.Conn with a NetConn method, as
// crypto/tls's): with datagrams enabled, datagrams that fit in a QUIC
// datagram go as one, tagged with the stream's ID, and larger ones framed on
// the stream; otherwise all go framed on the stream.
func (s *Session) Datagrams(st net.Conn) DatagramConn {
	m, ok := s.mux.(*quicMux)
	if !ok || !m.datagramsOn() {
		return StreamDatagrams(st)
	}
	qs := unwrapQUICStream(st)
	if qs == nil || qs.m != m {
		return StreamDatagrams(st)
	}
	return m.newFlow(st, qs.st.StreamID())
}

func unwrapQUICStream(c net.Conn) *quicStream {
	for range 8 {
		switch x := c.(type) {
		case *quicStream:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// flowQueue is how many datagrams of a flow wait to be read; more that
// arrive as QUIC datagrams are dropped (UDP semantics), while framed ones
// wait (the stream's flow control holds the sender).
const flowQueue = 128

// quicFlow is the DatagramConn of a udp stream on a QUIC session with
// datagrams on. A pump goroutine reads the stream's frames; the session's
// datagram receiver hands it the QUIC datagrams tagged with its stream ID.
type quicFlow struct {
	st     net.Conn
	m      *quicMux
	id     quic.StreamID
	prefix []byte      // the stream ID as a QUIC varint
	in     chan []byte // received datagrams, from both paths

	pumpDone chan struct{} // closed when the pump ended; pumpErr is then set
	pumpErr  error
	done     chan struct{} // closed by Close
	once     sync.Once

	dlMu sync.Mutex
	rdl  time.Time     // read deadline; guarded by dlMu
	poke chan struct{} // wakes a waiting ReadDatagram when the deadline changes
}

func (m *quicMux) datagramsOn() bool {
	m.flowMu.Lock()
	defer m.flowMu.Unlock()
	return m.flows != nil
}

func (m *quicMux) newFlow(st net.Conn, id quic.StreamID) *quicFlow {
	f := &quicFlow{st: st, m: m, id: id, prefix: quicvarint.Append(nil, uint64(id)),
		in: make(chan []byte, flowQueue), pumpDone: make(chan struct{}), done: make(chan struct{}), poke: make(chan struct{}, 1)}
	m.flowMu.Lock()
	m.flows[id] = f
	early := m.pending[id]
	delete(m.pending, id)
	m.flowMu.Unlock()
	if early != nil {
		for _, p := range early.data {
			f.in <- p // at most maxEarly, fewer than flowQueue
		}
	}
	go f.pump()
	return f
}

// Datagrams may arrive before the flow of their stream is made (the peer
// sent its first one right behind the stream's header): up to maxEarly per
// stream, for up to earlyTTL, and for at most maxEarlyStreams streams at
// once, wait for it.
const (
	maxEarly        = 8
	maxEarlyStreams = 64
	earlyTTL        = 2 * time.Second
)

// earlyDatagrams are datagrams of a stream without a flow yet.
type earlyDatagrams struct {
	first time.Time
	data  [][]byte
}

// keepEarlyLocked keeps p, a datagram of stream id, which has no flow yet.
func (m *quicMux) keepEarlyLocked(id quic.StreamID, p []byte) {
	now := time.Now()
	if m.pending == nil {
		m.pending = make(map[quic.StreamID]*earlyDatagrams)
	}
	e := m.pending[id]
	if e == nil {
		for k, old := range m.pending {
			if now.Sub(old.first) > earlyTTL {
				delete(m.pending, k)
			}
		}
		if len(m.pending) >= maxEarlyStreams {
			return
		}
		e = &earlyDatagrams{first: now}
		m.pending[id] = e
	}
	if len(e.data) < maxEarly {
		e.data = append(e.data, p)
	}
}

// receiveDatagrams hands each QUIC datagram to its flow until the
// connection ends. Datagrams of unknown flows, or of flows whose queue is
// full, are dropped.
func (m *quicMux) receiveDatagrams() {
	for {
		b, err := m.conn.ReceiveDatagram(context.Background())
		if err != nil {
			return
		}
		id, n, err := quicvarint.Parse(b)
		if err != nil {
			continue
		}
		m.flowMu.Lock()
		f := m.flows[quic.StreamID(id)]
		if f == nil {
			m.keepEarlyLocked(quic.StreamID(id), b[n:])
		}
		m.flowMu.Unlock()
		if f == nil {
			continue
		}
		select {
		case f.in <- b[n:]:
			m.dgRecv.Add(1)
		default:
		}
	}
}

// pump reads the stream's frames into f.in until the stream ends.
func (f *quicFlow) pump() {
	dr := NewDatagramReader(f.st)
	buf := make([]byte, MaxDatagramLen)
	defer close(f.pumpDone)
	for {
		n, err := dr.ReadDatagram(buf)
		if errors.Is(err, io.ErrShortBuffer) {
			continue
		}
		if err != nil {
			f.pumpErr = err
			return
		}
		p := make([]byte, n)
		copy(p, buf[:n])
		select {
		case f.in <- p:
		case <-f.done:
			f.pumpErr = net.ErrClosed
			return
		}
	}
}

func (f *quicFlow) ReadDatagram(buf []byte) (int, error) {
	for {
		f.dlMu.Lock()
		dl := f.rdl
		f.dlMu.Unlock()
		var (
			timer   *time.Timer
			timeout <-chan time.Time
		)
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			timeout = timer.C
		}
		n, err, again := f.wait(buf, timeout)
		if timer != nil {
			timer.Stop()
		}
		if !again {
			return n, err
		}
	}
}

// wait is one wait of ReadDatagram; again says the deadline changed.
func (f *quicFlow) wait(buf []byte, timeout <-chan time.Time) (n int, err error, again bool) {
	select {
	case p := <-f.in:
		n, err = deliver(buf, p)
		return n, err, false
	case <-f.pumpDone:
		// The stream ended: what was queued before still counts.
		select {
		case p := <-f.in:
			n, err = deliver(buf, p)
			return n, err, false
		default:
		}
		return 0, f.pumpErr, false
	case <-f.done:
		return 0, net.ErrClosed, false
	case <-f.poke:
		return 0, nil, true
	case <-timeout:
		return 0, os.ErrDeadlineExceeded, false
	}
}

func deliver(buf, p []byte) (int, error) {
	if len(p) > len(buf) {
		return 0, fmt.Errorf("datagram of %d bytes, buffer of %d: %w", len(p), len(buf), io.ErrShortBuffer)
	}
	return copy(buf, p), nil
}

// dgramBufs hold the tagged datagrams being sent; quic-go copies them.
var dgramBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1500); return &b }}

func (f *quicFlow) WriteDatagram(p []byte) error {
	select {
	case <-f.done:
		return net.ErrClosed
	default:
	}
	if len(p) > MaxDatagramLen {
		return fmt.Errorf("write datagram of %d bytes: %w", len(p), ErrDatagramTooLong)
	}
	if len(f.prefix)+len(p) <= 1500 {
		bp := dgramBufs.Get().(*[]byte)
		b := append(append((*bp)[:0], f.prefix...), p...)
		err := f.m.conn.SendDatagram(b)
		*bp = b
		dgramBufs.Put(bp)
		var tooLarge *quic.DatagramTooLargeError
		if !errors.As(err, &tooLarge) {
			if err == nil {
				f.m.dgSent.Add(1)
			}
			return err
		}
	}
	return WriteDatagram(f.st, p) // too large for a QUIC datagram: framed on the stream
}

func (f *quicFlow) SetReadDeadline(t time.Time) error {
	f.dlMu.Lock()
	f.rdl = t
	f.dlMu.Unlock()
	select {
	case f.poke <- struct{}{}:
	default:
	}
	return nil
}

func (f *quicFlow) SetWriteDeadline(t time.Time) error { return f.st.SetWriteDeadline(t) }

func (f *quicFlow) Close() error {
	var err error
	f.once.Do(func() {
		close(f.done)
		f.m.flowMu.Lock()
		delete(f.m.flows, f.id)
		f.m.flowMu.Unlock()
		err = f.st.Close()
	})
	return err
}
