package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// bufSize is the copy buffer size for splicing; large enough for TLS records.
const bufSize = 32 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

type bufPool struct{}

func (bufPool) Get() []byte  { return *(pool.Get().(*[]byte)) }
func (bufPool) Put(b []byte) { pool.Put(&b) }

type closeWriter interface{ CloseWrite() error }

// Splice copies bytes both ways between a and b until both directions end,
// half-closing each side's write when its source reaches EOF, then closes
// both. idle > 0 closes both when no byte moved in either direction for that
// long (a write the peer does not take counts as no movement). It returns
// the bytes copied a->b and b->a.
func Splice(a, b net.Conn, idle time.Duration) (ab, ba int64) {
	var last atomic.Int64 // unix nanos when a byte last moved either way; used when idle > 0
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba = copyHalf(a, b, idle, &last)
	}()
	ab = copyHalf(b, a, idle, &last)
	wg.Wait()
	a.Close()
	b.Close()
	return ab, ba
}

// copyHalf copies src to dst, then half-closes dst (or closes both when dst
// cannot half-close or the copy failed, which also ends the other direction).
func copyHalf(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	var n int64
	var err error
	if idle > 0 {
		n, err = copyIdle(dst, src, idle, last)
	} else {
		n, err = copyBuf(dst, src)
	}
	if cw, ok := dst.(closeWriter); !ok || err != nil || cw.CloseWrite() != nil {
		dst.Close()
		src.Close()
	}
	return n
}

func copyBuf(dst, src net.Conn) (int64, error) {
	// Let the runtime splice(2) when both ends are TCP.
	_, dt := dst.(*net.TCPConn)
	_, st := src.(*net.TCPConn)
	if dt && st {
		return io.Copy(dst, src)
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}

// copyIdle copies like copyBuf, but gives up when no byte moved either way
// (last, shared with the other direction) for idle: reads and writes get
// deadlines at last+idle, and a deadline that passes while the other
// direction kept the stream busy is simply moved on.
func copyIdle(dst, src net.Conn, idle time.Duration, last *atomic.Int64) (int64, error) {
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	deadline := func() time.Time { return time.Unix(0, last.Load()).Add(idle) }
	// stillBusy reports whether err is a deadline that passed while the
	// stream as a whole was not idle.
	stillBusy := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline())
	}
	var total int64
	for {
		src.SetReadDeadline(deadline())
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			p := buf[:nr]
			for len(p) > 0 {
				dst.SetWriteDeadline(deadline())
				nw, werr := dst.Write(p)
				total += int64(nw)
				p = p[nw:]
				if nw > 0 {
					last.Store(time.Now().UnixNano())
				}
				if werr != nil && !stillBusy(werr) {
					return total, werr
				}
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil && !stillBusy(rerr) {
			return total, rerr
		}
	}
}
