//go:build smuxbench

package tunnel

// smux, the alternative multiplexer, for the benchmarks of mux_bench_test.go.
// It is behind a build tag because go.mod does not require smux; to run it
// without touching go.mod, give the go command a module file that does:
//
//	cp go.mod /tmp/bench.mod && cp go.sum /tmp/bench.sum
//	go mod edit -modfile=/tmp/bench.mod -require=github.com/xtaci/smux@v1.5.58
//	go test -modfile=/tmp/bench.mod -mod=mod -tags smuxbench -run XXX -bench Mux ./internal/tunnel/

import (
	"io"
	"net"

	"github.com/xtaci/smux"
)

func init() {
	benchMuxes = append(benchMuxes,
		benchMux{"smux-v2", func(ac, gc net.Conn) (*muxPair, error) { return smuxPair(ac, gc) }},
		benchMux{"smux-v2-batch", func(ac, gc net.Conn) (*muxPair, error) {
			return smuxPair(newBatchConn(ac), newBatchConn(gc))
		}},
	)
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
