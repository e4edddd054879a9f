package tunnel

// Benchmarks to choose the multiplexer by measurement, all over TLS 1.3 on
// loopback TCP, the gateway opening streams and the agent accepting them as
// in production:
//
//	go test -run XXX -bench Mux -benchtime 2s -count 3 ./internal/tunnel/
//
// The candidates: our Session (yamux, 8 MiB window, batchConn under it),
// our Session over QUIC (quic-go on loopback UDP, QUICConfig), yamux with
// its defaults, smux v2 with large buffers, and smux v2 with the same
// batchConn under it. smux is imported by this test file only, so the
// production binary does not carry it.
//
// Measured on the 2-core development machine (Go 1.26.8, quic-go v0.65.0,
// loopback, -benchtime 2s -count 3, medians; also in spec.md section 8.1):
//
//	benchmark                      session (yamux+batch, TLS)   session-quic
//	Latency, 1 KiB echo, 1 stream  12.5 µs/op                   17.7 µs/op
//	RoundTrip, 64 streams          4.7 µs/op, 5.9 µs CPU        8.9 µs/op, 12.2 µs CPU
//	Bulk, 1 stream                 1764 MB/s, 0.97 CPU-s/GiB    521 MB/s, 2.90 CPU-s/GiB
//	Bulk, 8 streams                1456 MB/s, 1.11 CPU-s/GiB    431 MB/s, 3.22 CPU-s/GiB
//	IdleStreams: open + 16 B echo  30 µs/stream                 23 µs/stream
//	IdleStreams: heap, both ends   3.8 KiB/stream               1.7 KiB/stream (1.4-2.6)
//
// Bulk figures varied by up to ±30% between runs on the shared machine.

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/xtaci/smux"
)

// muxPair is one multiplexed connection seen from both ends.
type muxPair struct {
	open       func() (io.ReadWriteCloser, error) // gateway side
	accept     func() (io.ReadWriteCloser, error) // agent side
	numStreams func() (gateway, agent int)
	close      func()
}

type benchMux struct {
	name string
	make func(agent, gateway net.Conn) (*muxPair, error)
	// quic, when set, makes the pair over QUIC instead (make is not used).
	quic func(b *testing.B) *muxPair
}

// sessionMuxPair drives a pair of our Sessions.
func sessionMuxPair(a, g *Session) *muxPair {
	return &muxPair{
		open:       func() (io.ReadWriteCloser, error) { return g.Open() },
		accept:     func() (io.ReadWriteCloser, error) { return a.Accept() },
		numStreams: func() (int, int) { return g.NumStreams(), a.NumStreams() },
		close:      func() { g.Close(); a.Close() },
	}
}

var benchMuxes = []benchMux{
	{"session", func(ac, gc net.Conn) (*muxPair, error) {
		a, err := Client(ac, nil)
		if err != nil {
			return nil, err
		}
		g, err := Server(gc, nil)
		if err != nil {
			a.Close()
			return nil, err
		}
		return sessionMuxPair(a, g), nil
	}, nil},
	{"session-quic", nil, func(b *testing.B) *muxPair {
		a, g, _ := quicSessions(b, nil, nil)
		return sessionMuxPair(a, g)
	}},
	{"yamux-default", func(ac, gc net.Conn) (*muxPair, error) {
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		a, err := yamux.Client(ac, cfg)
		if err != nil {
			return nil, err
		}
		g, err := yamux.Server(gc, cfg)
		if err != nil {
			a.Close()
			return nil, err
		}
		return &muxPair{
			open:       func() (io.ReadWriteCloser, error) { return g.OpenStream() },
			accept:     func() (io.ReadWriteCloser, error) { return a.AcceptStream() },
			numStreams: func() (int, int) { return g.NumStreams(), a.NumStreams() },
			close:      func() { g.Close(); a.Close() },
		}, nil
	}, nil},
	{"smux-v2", func(ac, gc net.Conn) (*muxPair, error) { return smuxPair(ac, gc) }, nil},
	{"smux-v2-batch", func(ac, gc net.Conn) (*muxPair, error) {
		return smuxPair(newBatchConn(ac), newBatchConn(gc))
	}, nil},
}

// smuxPair runs smux v2 (per-stream flow control) with large buffers: 16 MiB
// per session, 8 MiB per stream, like our yamux window.
func smuxPair(ac, gc io.ReadWriteCloser) (*muxPair, error) {
	cfg := smux.DefaultConfig()
	cfg.Version = 2
	cfg.MaxReceiveBuffer = 16 << 20
	cfg.MaxStreamBuffer = 8 << 20
	a, err := smux.Client(ac, cfg)
	if err != nil {
		return nil, err
	}
	g, err := smux.Server(gc, cfg)
	if err != nil {
		a.Close()
		return nil, err
	}
	return &muxPair{
		open:       func() (io.ReadWriteCloser, error) { return g.OpenStream() },
		accept:     func() (io.ReadWriteCloser, error) { return a.AcceptStream() },
		numStreams: func() (int, int) { return g.NumStreams(), a.NumStreams() },
		close:      func() { g.Close(); a.Close() },
	}, nil
}

func newMuxPair(b *testing.B, m benchMux) *muxPair {
	b.Helper()
	if m.quic != nil {
		p := m.quic(b)
		b.Cleanup(p.close)
		return p
	}
	ac, gc := tlsPair(b)
	p, err := m.make(ac, gc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.close)
	return p
}

// BenchmarkMuxRoundTrip: 64 streams, each doing 1 KiB request -> 1 KiB
// response round trips concurrently; one op is one round trip.
func BenchmarkMuxRoundTrip(b *testing.B) {
	const streams, size = 64, 1 << 10
	for _, m := range benchMuxes {
		b.Run(m.name, func(b *testing.B) {
			p := newMuxPair(b, m)
			go func() {
				for {
					st, err := p.accept()
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						buf := make([]byte, size)
						for {
							if _, err := io.ReadFull(st, buf); err != nil {
								return
							}
							if _, err := st.Write(buf); err != nil {
								return
							}
						}
					}()
				}
			}()
			conns := make([]io.ReadWriteCloser, streams)
			for i := range conns {
				st, err := p.open()
				if err != nil {
					b.Fatal(err)
				}
				conns[i] = st
			}
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			var wg sync.WaitGroup
			for _, st := range conns {
				wg.Go(func() {
					req, resp := make([]byte, size), make([]byte, size)
					for left.Add(-1) >= 0 {
						if _, err := st.Write(req); err != nil {
							b.Error(err)
							return
						}
						if _, err := io.ReadFull(st, resp); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			reportCPU(b, processCPU()-cpu, 1, "cpu-ns/op")
			for _, st := range conns {
				st.Close()
			}
		})
	}
}

// BenchmarkMuxBulk: 64 MiB per op from the agent to the gateway (the
// direction of a download), over one stream or spread over 8 streams.
func BenchmarkMuxBulk(b *testing.B) {
	const size, chunk = 64 << 20, 32 << 10
	for _, streams := range []int{1, 8} {
		for _, m := range benchMuxes {
			b.Run(fmt.Sprintf("streams=%d/%s", streams, m.name), func(b *testing.B) {
				p := newMuxPair(b, m)
				go func() {
					for {
						st, err := p.accept()
						if err != nil {
							return
						}
						go func() {
							defer st.Close()
							buf := make([]byte, chunk)
							for {
								if _, err := st.Write(buf); err != nil {
									return
								}
							}
						}()
					}
				}()
				conns := make([]io.ReadWriteCloser, streams)
				for i := range conns {
					st, err := p.open()
					if err != nil {
						b.Fatal(err)
					}
					defer st.Close()
					// smux and QUIC announce a stream with its first frame.
					if _, err := st.Write([]byte{0}); err != nil {
						b.Fatal(err)
					}
					conns[i] = st
				}
				b.SetBytes(size)
				b.ResetTimer()
				cpu := processCPU()
				for range b.N {
					var wg sync.WaitGroup
					for _, st := range conns {
						wg.Go(func() {
							buf := make([]byte, chunk)
							want := size / streams
							for got := 0; got < want; {
								n, err := st.Read(buf[:min(len(buf), want-got)])
								if err != nil {
									b.Error(err)
									return
								}
								got += n
							}
						})
					}
					wg.Wait()
				}
				b.StopTimer()
				// CPU seconds per GiB carried, both ends together.
				reportCPU(b, processCPU()-cpu, float64(size)/(1<<30)*1e9, "cpu-s/GiB")
			})
		}
	}
}

// BenchmarkMuxLatency: one stream, one 1 KiB request -> 1 KiB response
// round trip at a time; ns/op is the request/response latency.
func BenchmarkMuxLatency(b *testing.B) {
	const size = 1 << 10
	for _, m := range benchMuxes {
		b.Run(m.name, func(b *testing.B) {
			p := newMuxPair(b, m)
			go func() {
				st, err := p.accept()
				if err != nil {
					return
				}
				defer st.Close()
				buf := make([]byte, size)
				for {
					if _, err := io.ReadFull(st, buf); err != nil {
						return
					}
					if _, err := st.Write(buf); err != nil {
						return
					}
				}
			}()
			st, err := p.open()
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			req, resp := make([]byte, size), make([]byte, size)
			b.ResetTimer()
			cpu := processCPU()
			for range b.N {
				if _, err := st.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(st, resp); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportCPU(b, processCPU()-cpu, 1, "cpu-ns/op")
		})
	}
}

// BenchmarkMuxIdleStreams: open 1000 streams that each do one 16-byte round
// trip and then stay open, idle; report the heap they hold (both ends, after
// GC) per stream. ns/op is the time to open the 1000 and do their round trips.
func BenchmarkMuxIdleStreams(b *testing.B) {
	const streams, size = 1000, 16
	for _, m := range benchMuxes {
		b.Run(m.name, func(b *testing.B) {
			p := newMuxPair(b, m)
			var mu sync.Mutex
			var accepted []io.ReadWriteCloser // guarded by mu
			go func() {
				buf := make([]byte, size)
				for {
					st, err := p.accept()
					if err != nil {
						return
					}
					if _, err := io.ReadFull(st, buf); err != nil {
						return
					}
					if _, err := st.Write(buf); err != nil {
						return
					}
					mu.Lock()
					accepted = append(accepted, st)
					mu.Unlock()
				}
			}()
			var ms runtime.MemStats
			var heap int64
			opened := make([]io.ReadWriteCloser, 0, streams)
			buf := make([]byte, size)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&ms)
				before := ms.HeapAlloc
				b.StartTimer()
				for range streams {
					st, err := p.open()
					if err != nil {
						b.Fatal(err)
					}
					if _, err := st.Write(buf); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(st, buf); err != nil {
						b.Fatal(err)
					}
					opened = append(opened, st)
				}
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&ms)
				heap += int64(ms.HeapAlloc) - int64(before)
				// Close both ends and wait until both muxes forgot the streams.
				for _, st := range opened {
					st.Close()
				}
				clear(opened) // drop the references, so the next GC frees them
				opened = opened[:0]
				if !waitFor(10*time.Second, func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(accepted) == streams
				}) {
					b.Fatal("agent did not get every stream")
				}
				mu.Lock()
				for _, st := range accepted {
					st.Close()
				}
				clear(accepted)
				accepted = accepted[:0]
				mu.Unlock()
				if !waitFor(10*time.Second, func() bool { g, a := p.numStreams(); return g == 0 && a == 0 }) {
					g, a := p.numStreams()
					b.Fatalf("streams still open after Close: gateway %d, agent %d", g, a)
				}
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(float64(heap)/float64(b.N*streams), "B/stream")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*streams), "ns/stream")
		})
	}
}

// reportCPU reports the process CPU time used per op divided by per (so
// per=1 gives ns per op), both ends of the tunnel together. Measured from
// the operating system, it is less disturbed than ns/op by other load on
// the machine.
func reportCPU(b *testing.B, used time.Duration, per float64, unit string) {
	if used <= 0 || b.N == 0 {
		return
	}
	b.ReportMetric(float64(used.Nanoseconds())/float64(b.N)/per, unit)
}
