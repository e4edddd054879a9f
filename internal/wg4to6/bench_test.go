package wg4to6

import (
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkThroughput moves 256 MiB over one TCP connection between the
// client and the internet host (netns_test.go), through the tunnel and,
// in the same run, over the plain IPv4 path (client -> gateway -> internet,
// routed by the gateway's kernel, no tunnel). Run it with -benchtime=1x:
//
//	go test -run '^$' -bench Throughput -benchtime=1x ./internal/wg4to6/
func BenchmarkThroughput(b *testing.B) {
	tb := newTestbed(b, false)
	const size = 256 << 20
	for _, c := range []struct {
		name, network, addr string
		upload              bool
	}{
		{"tunnel-upload", "tcp6", "[" + tbInetAddr + "]:0", true},
		{"tunnel-download", "tcp6", "[" + tbInetAddr + "]:0", false},
		{"plain-v4-upload", "tcp4", tbInetV4 + ":0", true},
		{"plain-v4-download", "tcp4", tbInetV4 + ":0", false},
	} {
		b.Run(c.name, func(b *testing.B) {
			ln := listen(b, tb.inet, c.network, c.addr)
			b.SetBytes(size)
			for range b.N {
				transfer(b, ln, dialUntil(b, tb.client, c.network, ln.Addr().String(), 20*time.Second), size, c.upload)
			}
		})
	}
}

// BenchmarkThroughputNAT66 is BenchmarkThroughput's tunnel part with the
// engine in NAT66 mode (every packet rewritten).
func BenchmarkThroughputNAT66(b *testing.B) {
	tb := newTestbed(b, true)
	const size = 256 << 20
	for _, upload := range []bool{true, false} {
		name := "tunnel-download"
		if upload {
			name = "tunnel-upload"
		}
		b.Run(name, func(b *testing.B) {
			ln := listen(b, tb.inet, "tcp6", "["+tbInetAddr+"]:0")
			b.SetBytes(size)
			for range b.N {
				transfer(b, ln, dialUntil(b, tb.client, "tcp6", ln.Addr().String(), 20*time.Second), size, upload)
			}
		})
	}
}

// transfer moves size bytes over a connection the client made (cc) and
// the internet host accepts on ln: from the client when upload, else to it.
func transfer(b *testing.B, ln net.Listener, cc net.Conn, size int64, upload bool) {
	defer cc.Close()
	sc, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	src, dst := sc, cc
	if upload {
		src, dst = cc, sc
	}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		var err error
		for sent := int64(0); sent < size && err == nil; sent += int64(len(buf)) {
			_, err = src.Write(buf)
		}
		src.(*net.TCPConn).CloseWrite()
		done <- err
	}()
	n, err := io.Copy(io.Discard, dst)
	if err != nil || n != size {
		b.Fatalf("received %d of %d bytes: %v", n, size, err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPolicy is the policy's cost per packet of an established TCP
// flow, one packet each way (parse, device lookup, flow table).
func BenchmarkPolicy(b *testing.B) {
	p := testPolicy(b, false)
	out := ip6(devA, remote, protoTCP, tcpSeg(40000, 443, tcpACK, make([]byte, 1300)...))
	in := ip6(remote, devA, protoTCP, tcpSeg(443, 40000, tcpACK, make([]byte, 1300)...))
	b.SetBytes(int64(len(out) + len(in)))
	for i := range b.N {
		if p.out(int64(i), out) != pass || p.in(int64(i), in) != pass {
			b.Fatal("dropped")
		}
	}
}
