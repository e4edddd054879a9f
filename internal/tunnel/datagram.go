package tunnel

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// MaxDatagramLen is the largest datagram a udp stream carries (spec.md
// section 5.3): the most a 2-byte length can say, and the UDP maximum.
const MaxDatagramLen = 65535

// datagramReadBuffer is the DatagramReader's buffer: a few typical
// datagrams (DNS, QUIC, WireGuard: up to ~1500 bytes) arrive in one Read
// of the stream.
const datagramReadBuffer = 8 << 10

// smallFrame is the size of the pooled buffers WriteDatagram uses for
// typical datagrams; larger ones take a buffer of the largest frame.
const smallFrame = 2 + 2048

var (
	smallFrames = sync.Pool{New: func() any { b := make([]byte, smallFrame); return &b }}
	largeFrames = sync.Pool{New: func() any { b := make([]byte, 2+MaxDatagramLen); return &b }}
)

// ErrDatagramTooLong is returned by WriteDatagram for a datagram longer
// than MaxDatagramLen.
var ErrDatagramTooLong = errors.New("datagram longer than 65535 bytes")

// ErrIdle is returned by RelayUDP when no datagram moved for the idle
// timeout.
var ErrIdle = errors.New("udp session idle")

// WriteDatagram writes p to w as one frame of a udp stream: a 2-byte
// big-endian length, then p. It makes one Write call. p may be empty.
func WriteDatagram(w io.Writer, p []byte) error {
	if len(p) > MaxDatagramLen {
		return fmt.Errorf("write datagram of %d bytes: %w", len(p), ErrDatagramTooLong)
	}
	pool := &smallFrames
	if 2+len(p) > smallFrame {
		pool = &largeFrames
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	b := (*bp)[:2+len(p)]
	binary.BigEndian.PutUint16(b, uint16(len(p)))
	copy(b[2:], p)
	_, err := w.Write(b)
	return err
}

// A DatagramReader reads the frames of a udp stream (see WriteDatagram). It
// buffers, so small datagrams cost no extra Read of the stream, and may
// read past the last frame it returns: once a stream has a DatagramReader,
// read it only through the reader.
type DatagramReader struct {
	br *bufio.Reader
}

// NewDatagramReader returns a DatagramReader of r.
func NewDatagramReader(r io.Reader) *DatagramReader {
	return &DatagramReader{br: bufio.NewReaderSize(r, datagramReadBuffer)}
}

// ReadDatagram reads the next datagram into buf and returns its length.
//
// At the end of the stream it returns io.EOF when the stream ended at a
// frame boundary, and an error wrapping io.ErrUnexpectedEOF when it ended
// inside a frame. When buf is shorter than the datagram, it returns 0 and
// an error wrapping io.ErrShortBuffer; the frame is consumed all the same,
// so the next call reads the next datagram (a buffer of MaxDatagramLen
// bytes is never short). Other errors of the stream are returned wrapped.
func (d *DatagramReader) ReadDatagram(buf []byte) (n int, err error) {
	var hdr [2]byte
	if k, err := io.ReadFull(d.br, hdr[:]); err != nil {
		if err == io.EOF && k == 0 {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("read datagram length: %w", err)
	}
	n = int(binary.BigEndian.Uint16(hdr[:]))
	if n > len(buf) {
		if _, err := d.br.Discard(n); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("skip datagram of %d bytes: %w", n, err)
		}
		return 0, fmt.Errorf("datagram of %d bytes, buffer of %d: %w", n, len(buf), io.ErrShortBuffer)
	}
	if _, err := io.ReadFull(d.br, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("read datagram of %d bytes: %w", n, err)
	}
	return n, nil
}

// RelayUDP relays datagrams between a udp stream (framed, see
// WriteDatagram) and udp, a connected UDP socket, one datagram per Read and
// Write, in both directions, until one of:
//
//   - the stream ends at a frame boundary (the peer closed it): nil;
//   - nothing moved in either direction for idle (0: no idle timeout): ErrIdle;
//   - ctx is done: context.Cause(ctx);
//   - a read or write of either side fails: that error.
//
// A datagram from the stream that the socket refuses as too large
// (EMSGSIZE) is dropped, as spec.md section 5.3 asks of agents. A refused
// destination (ECONNREFUSED, from an ICMP unreachable) is an error.
//
// Both conns must support deadlines. RelayUDP closes neither: the caller
// owns and closes both. It stops its reads and writes by setting deadlines
// in the past, and clears the deadlines before it returns; it returns only
// after both directions have stopped. The stream may be left inside a frame (and bytes buffered by
// RelayUDP are lost), so it is of no further use for datagrams.
//
// It holds two buffers of MaxDatagramLen bytes while it runs.
func RelayUDP(ctx context.Context, stream net.Conn, udp net.Conn, idle time.Duration) error {
	// The datagram from udp lands after room for its length, so a frame is
	// written in one Write without copying.
	toStream := func(buf []byte, n int) error {
		binary.BigEndian.PutUint16(buf, uint16(n))
		_, err := stream.Write(buf[:2+n])
		return err
	}
	return relay(ctx, NewDatagramReader(stream).ReadDatagram, toStream, stream.SetDeadline, udp, idle)
}

// RelayDatagrams is RelayUDP for any DatagramConn, such as one with QUIC
// datagrams (Session.Datagrams).
func RelayDatagrams(ctx context.Context, dc DatagramConn, udp net.Conn, idle time.Duration) error {
	if sd, ok := dc.(*streamDatagrams); ok {
		return RelayUDP(ctx, sd.st, udp, idle)
	}
	toPeer := func(buf []byte, n int) error { return dc.WriteDatagram(buf[2 : 2+n]) }
	setDeadline := func(t time.Time) error {
		dc.SetReadDeadline(t)
		return dc.SetWriteDeadline(t)
	}
	return relay(ctx, dc.ReadDatagram, toPeer, setDeadline, udp, idle)
}

// relay is RelayUDP's loop: fromPeer reads a datagram of the peer (io.EOF
// at its end), toPeer sends the n bytes at buf[2:] to it.
func relay(ctx context.Context, fromPeer func([]byte) (int, error), toPeer func(buf []byte, n int) error,
	setPeerDeadline func(time.Time) error, udp net.Conn, idle time.Duration) error {
	start := time.Now()
	var last atomic.Int64 // time.Since(start) when a datagram last moved
	errc := make(chan error, 2)

	go func() { // stream -> udp
		buf := make([]byte, MaxDatagramLen)
		for {
			n, err := fromPeer(buf)
			if err == io.EOF {
				errc <- nil
				return
			}
			if err != nil {
				errc <- fmt.Errorf("read udp stream: %w", err)
				return
			}
			if _, err := udp.Write(buf[:n]); err != nil && !errors.Is(err, syscall.EMSGSIZE) {
				errc <- fmt.Errorf("write udp: %w", err)
				return
			}
			last.Store(int64(time.Since(start)))
		}
	}()
	go func() { // udp -> stream
		buf := make([]byte, 2+MaxDatagramLen)
		for {
			n, err := udp.Read(buf[2:])
			if err != nil {
				errc <- fmt.Errorf("read udp: %w", err)
				return
			}
			if err := toPeer(buf, n); err != nil {
				errc <- fmt.Errorf("write udp stream: %w", err)
				return
			}
			last.Store(int64(time.Since(start)))
		}
	}()

	var idleC <-chan time.Time
	var idleT *time.Timer
	if idle > 0 {
		idleT = time.NewTimer(idle)
		defer idleT.Stop()
		idleC = idleT.C
	}
	var err error
	running := 2
loop:
	for {
		select {
		case err = <-errc:
			running--
			break loop
		case <-ctx.Done():
			err = context.Cause(ctx)
			break loop
		case <-idleC:
			quiet := time.Since(start) - time.Duration(last.Load())
			if quiet >= idle {
				err = ErrIdle
				break loop
			}
			idleT.Reset(idle - quiet)
		}
	}

	// Unblock the direction still running, wait for it, then clear the
	// deadlines so the caller gets its conns back as they were.
	past := time.Unix(1, 0)
	setPeerDeadline(past)
	udp.SetDeadline(past)
	for ; running > 0; running-- {
		<-errc
	}
	setPeerDeadline(time.Time{})
	udp.SetDeadline(time.Time{})
	return err
}
