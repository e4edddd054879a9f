package proxy

import (
	"io"
	"net"
	"sync"
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
// long. It returns the bytes copied a->b and b->a.
func Splice(a, b net.Conn, idle time.Duration) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba = copyHalf(a, b, idle)
	}()
	ab = copyHalf(b, a, idle)
	wg.Wait()
	a.Close()
	b.Close()
	return ab, ba
}

// copyHalf copies src to dst, then half-closes dst (or closes it when it
// cannot half-close, which also ends the other direction).
func copyHalf(dst, src net.Conn, idle time.Duration) int64 {
	var n int64
	var err error
	if idle > 0 {
		n, err = copyIdle(dst, src, idle)
	} else {
		n, err = copyBuf(dst, src)
	}
	if cw, ok := dst.(closeWriter); ok && err == nil {
		cw.CloseWrite()
	} else {
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

func copyIdle(dst, src net.Conn, idle time.Duration) (int64, error) {
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	var total int64
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			total += int64(nw)
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}
