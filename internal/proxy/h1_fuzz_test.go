package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// halfClosedConn is the gateway's end of a net.Pipe whose client, once
// done sending, goes on reading: writes after the client end closed are
// taken and dropped, as by a client that half-closed and drains the answers.
type halfClosedConn struct{ net.Conn }

func (c halfClosedConn) Write(p []byte) (int, error) {
	c.Conn.Write(p)
	return len(p), nil
}

// fuzzSeeds are valid, pipelined and smuggling requests for FuzzServeH1.
var fuzzSeeds = []string{
	"GET / HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
	"GET /a?b=c HTTP/1.1\r\nHost: svc.gw.test\r\nConnection: close\r\n\r\n",
	"HEAD / HTTP/1.0\r\nHost: svc.gw.test\r\nConnection: keep-alive\r\n\r\n",
	"POST /cl HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 5\r\n\r\nhello",
	"POST /ch HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
	"GET /1 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\nPOST /2 HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: nope.gw.test\r\n\r\nGET /4 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2e\r\nGET /smuggled HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 0\r\nContent-Length: 46\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 51\r\nX-Pad: x\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.0\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
	"GET /lf HTTP/1.1\nHost: svc.gw.test\n\n",
	"GET http://svc.gw.test/abs HTTP/1.1\r\nHost: other.example\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
	"GET svc.gw.test:443 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
	"GET /ws HTTP/1.1\r\nHost: svc.gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw",
	"POST /e HTTP/1.1\r\nHost: svc.gw.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
	"POST /short HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 100\r\n\r\nonly ten b",
	"POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: grpc.gw.test\r\n\r\nGET / HTTP/1.1\r\nHost: svc.gw.test\r\nTe: trailers\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
}

// FuzzServeH1 feeds arbitrary client bytes to ServeH1 over net.Pipe. It
// must not panic, must return once the client is done, and every stream
// the backend gets must parse as well-framed requests, each one the client
// sent (no smuggled one, no bytes between them), in the client's order.
func FuzzServeH1(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e := newH1Env(t)
		wb := newWireBackend()
		svc, co := e.addCounted(t, "svc", wb.serve)
		e.table.Upsert("grpc", "", model.ProtoH2C, false)

		cc, sc := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			e.p.ServeH1(context.Background(), halfClosedConn{sc}, ConnLimits{MaxHeaderBytes: 4 << 10})
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, cc)
		}()
		// Write returns once ServeH1 has read every byte (or closed).
		cc.Write(data)
		cc.Close()
		<-drained
		select {
		case <-done:
		case <-time.After(waitTimeout):
			t.Fatalf("ServeH1 did not return after the client closed; input %q", data)
		}

		streams := wb.received(t, e.p, svc, co.n.Load())
		type recv struct {
			wireRequest
			stream int
		}
		var got []recv
		for i, b := range streams {
			reqs, truncated, err := parseWire(b)
			if err != nil {
				t.Fatalf("stream %d: %v\ninput %q", i, err, data)
			}
			if truncated && i != len(streams)-1 {
				t.Fatalf("stream %d of %d ends in a cut request\ninput %q", i, len(streams), data)
			}
			if truncated {
				reqs = reqs[:len(reqs)-1] // cut short with the client's input
			}
			for _, r := range reqs {
				got = append(got, recv{r, i})
			}
		}

		// What the client sent, parsed as the gateway's parser does.
		var sent []wireRequest
		br := bufio.NewReader(bytes.NewReader(data))
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				break
			}
			body, err := io.ReadAll(req.Body)
			if err != nil {
				break
			}
			sent = append(sent, wireRequest{req: req, body: string(body)})
		}
		// Each request the backend got is one the client sent, in order.
		j := 0
		for _, g := range got {
			for j < len(sent) && !sameRequest(g.wireRequest, sent[j]) {
				j++
			}
			if j == len(sent) {
				t.Fatalf("the backend got a request the client did not send (or not in this order): %q\nbody %q\nclient sent %s\ninput %q",
					g.head, g.body, describe(sent), data)
			}
			j++
		}
	})
}

// sameRequest reports whether the backend's request g forwards the
// client's request s.
func sameRequest(g, s wireRequest) bool {
	return g.req.Method == s.req.Method &&
		g.req.URL.RequestURI() == s.req.URL.RequestURI() &&
		g.req.Host == s.req.Host &&
		g.req.Header.Get("X-Forwarded-Host") == s.req.Host &&
		g.body == s.body
}

func describe(reqs []wireRequest) string {
	var b bytes.Buffer
	for _, r := range reqs {
		fmt.Fprintf(&b, "\n  %s %s Host %q body %q", r.req.Method, r.req.URL.RequestURI(), r.req.Host, r.body)
	}
	return b.String()
}
