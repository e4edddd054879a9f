package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// benchBody is what the bench backend answers.
const benchBody = "hello, world\n"

// benchServe is a minimal HTTP/1.1 backend for the benchmarks: it reads
// request heads (bodyless GETs) and answers each with benchBody, allocating
// nothing per request, so allocations counted are the gateway's.
func benchServe(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(benchBody)) + "\r\n\r\n" + benchBody)
	if proxyHeader(br) == nil {
		return
	}
	for {
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(line) <= 2 {
				break
			}
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// proxyHeader skips a PROXY protocol header at the start of br, if any;
// it returns nil when the connection broke.
func proxyHeader(br *bufio.Reader) []byte {
	b, err := br.Peek(5)
	if err != nil {
		return nil
	}
	switch {
	case string(b) == "PROXY":
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil
		}
		return bytes.Clone(line)
	case b[0] == '\r':
		h, err := br.Peek(16)
		if err != nil {
			return nil
		}
		n := 16 + int(h[14])<<8 | int(h[15])
		out := make([]byte, n)
		if _, err := io.ReadFull(br, out); err != nil {
			return nil
		}
		return out
	}
	return []byte{}
}

// benchClient sends b.N bodyless GETs on c, one at a time, and reads the
// answers.
func benchClient(b *testing.B, c net.Conn) {
	b.Helper()
	req := []byte("GET /bench HTTP/1.1\r\nHost: svc.gw.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	br := bufio.NewReader(c)
	body := make([]byte, len(benchBody))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		status, err := br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if !bytes.HasPrefix(status, []byte("HTTP/1.1 200 ")) {
			b.Fatalf("status line %q", status)
		}
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(line) <= 2 {
				break
			}
		}
		if _, err := io.ReadFull(br, body); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
}

// benchTCPPair is tcpPair for benchmarks.
func benchTCPPair(b *testing.B) (net.Conn, net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c2 := <-ch
	if c2 == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}

// benchH1 runs the HTTP/1.1 fast path for one client connection against
// svc.gw.test, configured with sv, whose upstream add attaches.
func benchH1(b *testing.B, pp int, direct bool) {
	tab := route.NewTable(nil)
	p := &HTTP{Lookup: func(host string) *route.Service {
		label, _ := strings.CutSuffix(host, ".gw.test")
		return tab.Lookup(label)
	}}
	sv := model.Service{Name: "svc", Tenant: "t", Protocol: model.ProtoHTTP, ProxyProtocol: pp}
	if direct {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go benchServe(c)
			}
		}()
		tab.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", u.HostPort())
		}
		sv.Upstreams = []model.Upstream{{URL: "http://" + ln.Addr().String()}}
		tab.Configure(sv)
	} else {
		tab.Configure(sv)
		fa := newFakeAgent(b, "agent", func(_ *tunnel.Header, c net.Conn) { benchServe(c) })
		if err := tab.Attach("svc", fa.agent); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(tab.Close)
	cc, sc := benchTCPPair(b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.ServeH1(context.Background(), sc, ConnLimits{})
	}()
	benchClient(b, cc)
	cc.Close()
	<-done
	p.CloseIdle(tab.Lookup("svc"))
}

func BenchmarkH1(b *testing.B) {
	b.Run("tunnel", func(b *testing.B) { benchH1(b, 0, false) })
	b.Run("direct", func(b *testing.B) { benchH1(b, 0, true) })
	b.Run("tunnel-pp2", func(b *testing.B) { benchH1(b, 2, false) })
	b.Run("direct-pp2", func(b *testing.B) { benchH1(b, 2, true) })
}
