package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// newH1Env is newEnv without the httptest server: the tests drive ServeH1
// (or their own front server) directly.
func newH1Env(t *testing.T) *env {
	t.Helper()
	m := route.NewMetrics(prometheus.NewRegistry())
	tab := route.NewTable(m)
	logs := &syncBuffer{}
	p := &HTTP{
		Lookup: func(host string) *route.Service {
			label, ok := strings.CutSuffix(host, ".gw.test")
			if !ok {
				return nil
			}
			return tab.Lookup(label)
		},
		Log:       slog.New(slog.NewTextHandler(logs, nil)),
		AccessLog: true,
	}
	return &env{table: tab, metrics: m, p: p, logs: logs}
}

// countOpener counts the streams the gateway opens to an agent.
type countOpener struct {
	route.Opener
	n atomic.Int64
}

func (o *countOpener) Open() (net.Conn, error) {
	o.n.Add(1)
	return o.Opener.Open()
}

// addCounted adds the http service name with one fake agent serving streams
// with serve, and returns the count of streams opened to it.
func (e *env) addCounted(t *testing.T, name string, serve func(*tunnel.Header, net.Conn)) (*route.Service, *countOpener) {
	t.Helper()
	e.table.Upsert(name, "", model.ProtoHTTP, false)
	fa := newFakeAgent(t, name+"-agent", serve)
	co := &countOpener{Opener: fa.gw}
	fa.agent.Session = co
	if err := e.table.Attach(name, fa.agent); err != nil {
		t.Fatal(err)
	}
	return e.table.Lookup(name), co
}

// echoHandler answers "METHOD URI BODY".
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.RequestURI, body)
	})
}

// h1Client is the client end of a connection served by ServeH1.
type h1Client struct {
	t    *testing.T
	c    net.Conn
	br   *bufio.Reader
	done chan struct{} // closed when ServeH1 returned
}

// startH1 serves one end of a loopback TCP pair with ServeH1 and returns
// the other end. The connection is closed, and ServeH1 must have returned,
// when the test ends.
func startH1(t *testing.T, p *HTTP, ctx context.Context, lim ConnLimits) *h1Client {
	t.Helper()
	cc, sc := tcpPair(t)
	cl := &h1Client{t: t, c: cc, br: bufio.NewReader(cc), done: make(chan struct{})}
	go func() {
		defer close(cl.done)
		p.ServeH1(ctx, sc, lim)
	}()
	cc.SetDeadline(time.Now().Add(waitTimeout))
	t.Cleanup(func() {
		cc.Close()
		select {
		case <-cl.done:
		case <-time.After(waitTimeout):
			t.Error("ServeH1 did not return after the client closed")
		}
	})
	return cl
}

func (cl *h1Client) send(s string) {
	cl.t.Helper()
	if _, err := io.WriteString(cl.c, s); err != nil {
		cl.t.Fatalf("send: %v", err)
	}
}

// head reads the next response head; the body is left to the caller.
func (cl *h1Client) head(method string) *http.Response {
	cl.t.Helper()
	resp, err := http.ReadResponse(cl.br, &http.Request{Method: method})
	if err != nil {
		cl.t.Fatalf("read response: %v", err)
	}
	return resp
}

// response reads the next response and its whole body.
func (cl *h1Client) response(method string) (*http.Response, string) {
	cl.t.Helper()
	resp := cl.head(method)
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		cl.t.Fatalf("read body of %d response: %v", resp.StatusCode, err)
	}
	return resp, string(body)
}

// get sends a GET for path to svc.gw.test and returns the 200 answer's body.
func (cl *h1Client) get(path string) string {
	cl.t.Helper()
	cl.send("GET " + path + " HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
	resp, body := cl.response("GET")
	if resp.StatusCode != 200 {
		cl.t.Fatalf("GET %s: status %d: %s", path, resp.StatusCode, body)
	}
	return body
}

// closed checks that the server closed the connection: the client reads the
// end of the stream (or a reset, when the server closed with unread input)
// and no more bytes.
func (cl *h1Client) closed() {
	cl.t.Helper()
	rest, err := io.ReadAll(cl.br)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		cl.t.Fatalf("want the connection closed, read: %v", err)
	}
	if len(rest) > 0 {
		cl.t.Fatalf("want the connection closed, got %q", rest)
	}
	cl.wait()
}

// wait waits for ServeH1 to return.
func (cl *h1Client) wait() {
	cl.t.Helper()
	select {
	case <-cl.done:
	case <-time.After(waitTimeout):
		cl.t.Fatal("ServeH1 did not return")
	}
}

// wireBackend is a backend that records every byte each stream brought it
// and answers each request it can parse with 200 and "METHOD URI BODY".
type wireBackend struct {
	streams chan *wireStream // each stream as it starts
	arrived atomic.Int64     // streams that brought bytes, numbering them
}

func newWireBackend() *wireBackend { return &wireBackend{streams: make(chan *wireStream, 256)} }

// wireStream is what one stream brought the backend.
type wireStream struct {
	b    *wireBackend
	mu   sync.Mutex
	got  bytes.Buffer // guarded by mu
	nth  int64        // in the order of first bytes; guarded by mu
	done chan struct{}
}

func (s *wireStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nth == 0 && len(p) > 0 {
		s.nth = s.b.arrived.Add(1)
	}
	return s.got.Write(p)
}

func (s *wireStream) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.got.Bytes())
}

func (b *wireBackend) serve(_ *tunnel.Header, c net.Conn) {
	s := &wireStream{b: b, done: make(chan struct{})}
	b.streams <- s
	defer close(s.done)
	defer c.Close()
	br := bufio.NewReader(io.TeeReader(c, s))
	bw := bufio.NewWriter(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			break
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			break
		}
		msg := req.Method + " " + req.RequestURI + " " + string(body)
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
		if bw.Flush() != nil {
			break
		}
	}
	// Like a server that cannot parse what came: answer no more (the
	// gateway reads the end), and record whatever else comes.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, br)
}

// received closes svc's pooled streams, waits for each of the n streams
// the gateway opened to end, and returns what each brought, in the order
// their first bytes came (the order the gateway used them, as it uses one
// at a time for a client connection). Call it once the client is done.
func (b *wireBackend) received(t *testing.T, p *HTTP, svc *route.Service, n int64) [][]byte {
	t.Helper()
	p.CloseIdle(svc)
	var all []*wireStream
	timeout := time.After(waitTimeout)
	for i := int64(0); i < n; i++ {
		select {
		case s := <-b.streams:
			select {
			case <-s.done:
			case <-timeout:
				t.Fatalf("stream %d never ended; it brought %q", i, s.bytes())
			}
			all = append(all, s)
		case <-timeout:
			t.Fatalf("the backend saw %d streams, the gateway opened %d", i, n)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].nth < all[j].nth })
	out := make([][]byte, len(all))
	for i, s := range all {
		out[i] = s.bytes()
	}
	return out
}

// wireRequest is one request as a backend received it.
type wireRequest struct {
	req  *http.Request
	head string // the raw head, through its blank line
	body string
}

// parseWire parses b as consecutive requests. Every byte must belong to a
// well-formed request, except that the body of the last one may be cut
// short (truncated), as when the client went away in the middle of it.
func parseWire(b []byte) (reqs []wireRequest, truncated bool, err error) {
	r := bytes.NewReader(b)
	br := bufio.NewReader(r)
	off := func() int { return len(b) - r.Len() - br.Buffered() }
	for {
		if _, err := br.Peek(1); err == io.EOF {
			return reqs, false, nil
		}
		start := off()
		req, err := http.ReadRequest(br)
		if err != nil {
			return reqs, false, fmt.Errorf("request %d at byte %d (%q): %w", len(reqs), start, b[start:], err)
		}
		head := string(b[start:off()])
		if err := checkHead(head); err != nil {
			return reqs, false, fmt.Errorf("request %d: %w", len(reqs), err)
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) && r.Len() == 0 && br.Buffered() == 0 {
				return append(reqs, wireRequest{req, head, string(body)}), true, nil
			}
			return reqs, false, fmt.Errorf("request %d body: %w", len(reqs), err)
		}
		reqs = append(reqs, wireRequest{req, head, string(body)})
	}
}

// checkHead checks a request head the gateway wrote: CRLF lines only,
// header names that are tokens, one Host, and at most one framing header.
func checkHead(head string) error {
	if !strings.HasSuffix(head, "\r\n\r\n") {
		return fmt.Errorf("head does not end in CRLF CRLF: %q", head)
	}
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
	count := map[string]int{}
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n\x00") {
			return fmt.Errorf("bare CR, LF or NUL in line %q", l)
		}
		if i == 0 {
			continue
		}
		name, _, ok := strings.Cut(l, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return fmt.Errorf("malformed header line %q", l)
		}
		for _, c := range []byte(name) {
			if !validHeaderFieldByte(c) {
				return fmt.Errorf("header name %q is not a token", name)
			}
		}
		count[http.CanonicalHeaderKey(name)]++
	}
	if count["Host"] != 1 {
		return fmt.Errorf("%d Host lines in %q", count["Host"], head)
	}
	if count["Content-Length"]+count["Transfer-Encoding"] > 1 {
		return fmt.Errorf("more than one framing header in %q", head)
	}
	for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if count[h] != 1 {
			return fmt.Errorf("%d %s lines in %q", count[h], h, head)
		}
	}
	return nil
}

func validHeaderFieldByte(c byte) bool {
	return c > ' ' && c < 0x7f && !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, rune(c))
}

func TestH1KeepAlive(t *testing.T) {
	e := newH1Env(t)
	_, co := e.addCounted(t, "svc", serveHandler(t, echoHandler()))
	cl := startH1(t, e.p, context.Background(), ConnLimits{})

	const n = 20
	for i := 0; i < n; i++ {
		path := fmt.Sprintf("/seq/%d", i)
		if body := cl.get(path); body != "GET "+path+" " {
			t.Fatalf("request %d: body %q", i, body)
		}
	}
	if got := co.n.Load(); got != 1 {
		t.Errorf("%d sequential requests used %d streams, want 1 pooled", n, got)
	}

	// Pipelined: three requests, one with a body, in one write; the answers
	// come in order.
	cl.send("GET /p/1 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n" +
		"POST /p/2 HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /p/3 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
	for _, want := range []string{"GET /p/1 ", "POST /p/2 hello", "GET /p/3 "} {
		resp, body := cl.response("GET")
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("pipelined: status %d body %q, want %q", resp.StatusCode, body, want)
		}
	}
	if got := co.n.Load(); got != 1 {
		t.Errorf("pipelined requests opened more streams (%d in all)", got)
	}
	eventually(t, "access log lines", func() bool { return strings.Count(e.logs.String(), "msg=request") == n+3 })
	if got := e.requests(t, "svc", "2xx"); got != n+3 {
		t.Errorf("%v requests counted as 2xx, want %d", got, n+3)
	}
}

func TestH1RequestFraming(t *testing.T) {
	tests := []struct {
		name       string
		send       string
		wantHeader map[string]string // "" means absent
		wantBody   string
		wantTE     bool
		trailer    map[string]string
	}{
		{
			name:       "content-length",
			send:       "POST /cl HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 11\r\n\r\nhello world",
			wantHeader: map[string]string{"Content-Length": "11", "Transfer-Encoding": ""},
			wantBody:   "hello world",
		},
		{
			name: "chunked with trailers",
			send: "POST /ch HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
				"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
			wantHeader: map[string]string{"Content-Length": ""},
			wantBody:   "hello world",
			wantTE:     true,
			trailer:    map[string]string{"X-Sum": "42"},
		},
		{
			name:       "no body",
			send:       "GET /get HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n",
			wantHeader: map[string]string{"Content-Length": "", "Transfer-Encoding": ""},
		},
		{
			name:       "empty content-length body",
			send:       "POST /empty HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 0\r\n\r\n",
			wantHeader: map[string]string{"Transfer-Encoding": ""},
		},
		{
			name:       "HTTP/1.0 with a body",
			send:       "POST /old HTTP/1.0\r\nHost: svc.gw.test\r\nContent-Length: 3\r\n\r\nabc",
			wantHeader: map[string]string{"Content-Length": "3"},
			wantBody:   "abc",
		},
		{
			name:       "absolute form",
			send:       "GET http://svc.gw.test/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
			wantHeader: map[string]string{"Content-Length": ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newH1Env(t)
			wb := newWireBackend()
			svc, co := e.addCounted(t, "svc", wb.serve)
			cl := startH1(t, e.p, context.Background(), ConnLimits{})
			cl.send(tt.send)
			resp, _ := cl.response("POST")
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			cl.c.Close()
			cl.wait()
			streams := wb.received(t, e.p, svc, co.n.Load())
			if len(streams) != 1 {
				t.Fatalf("%d streams, want 1", len(streams))
			}
			reqs, truncated, err := parseWire(streams[0])
			if err != nil || truncated || len(reqs) != 1 {
				t.Fatalf("backend got %q: %d requests, truncated %v, %v", streams[0], len(reqs), truncated, err)
			}
			got := reqs[0]
			if got.req.Proto != "HTTP/1.1" || got.req.Host != "svc.gw.test" {
				t.Errorf("backend got %s with Host %q", got.req.Proto, got.req.Host)
			}
			for k, v := range tt.wantHeader {
				if g := headerLine(got.head, k); g != v {
					t.Errorf("%s: %q, want %q in %q", k, g, v, got.head)
				}
			}
			if te := len(got.req.TransferEncoding) > 0; te != tt.wantTE {
				t.Errorf("chunked %v, want %v", te, tt.wantTE)
			}
			if got.body != tt.wantBody {
				t.Errorf("body %q, want %q", got.body, tt.wantBody)
			}
			for k, v := range tt.trailer {
				if g := got.req.Trailer.Get(k); g != v {
					t.Errorf("trailer %s = %q, want %q", k, g, v)
				}
			}
		})
	}
}

// headerLine returns the value of header name in a raw head, "" if absent.
func headerLine(head, name string) string {
	for _, l := range strings.Split(head, "\r\n")[1:] {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestH1Smuggling sends requests whose framing a lenient backend could read
// differently; the smuggled request /smuggled must never reach the backend
// as a request of its own.
func TestH1Smuggling(t *testing.T) {
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n"
	chunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	tests := []struct {
		name   string
		send   string
		status []int // the answers the client gets, in order; then the connection ends or idles
		closed bool  // the gateway closes the connection after them
		want   int   // requests the backend sees
		cut    bool  // the last one's body is cut short
		check  func(t *testing.T, reqs []wireRequest)
	}{
		{
			// Transfer-Encoding wins (RFC 9112 6.3); the smuggled request
			// is the chunk data of the one request forwarded, which carries
			// no Content-Length.
			name:   "content-length and chunked",
			send:   "POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
			status: []int{200},
			want:   1,
			check: func(t *testing.T, reqs []wireRequest) {
				if headerLine(reqs[0].head, "Content-Length") != "" || reqs[0].body != smuggled {
					t.Errorf("forwarded %q with body %q", reqs[0].head, reqs[0].body)
				}
			},
		},
		{
			name:   "chunked and content-length",
			send:   "POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunk,
			status: []int{200},
			want:   1,
		},
		{
			name:   "two content-lengths",
			send:   fmt.Sprintf("POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled),
			status: []int{400},
			closed: true,
		},
		{
			name:   "content-length list",
			send:   fmt.Sprintf("POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 0, %d\r\n\r\n%s", len(smuggled), smuggled),
			status: []int{400},
			closed: true,
		},
		{
			name:   "signed content-length",
			send:   fmt.Sprintf("POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: +%d\r\n\r\n%s", len(smuggled), smuggled),
			status: []int{400},
			closed: true,
		},
		{
			name:   "gzip, chunked",
			send:   "POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunk,
			status: []int{400},
			closed: true,
		},
		{
			name:   "chunked twice",
			send:   "POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
			status: []int{400},
			closed: true,
		},
		{
			name:   "vertical tab before chunked",
			send:   "POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 5\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
			status: []int{400},
			closed: true,
		},
		{
			// A backend that does not unfold could take the folded line
			// for a Transfer-Encoding of its own; the gateway sends it
			// unfolded, as part of X-Pad.
			name: "obs-fold hiding transfer-encoding",
			send: fmt.Sprintf("POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: %d\r\nX-Pad: x\r\n Transfer-Encoding: chunked\r\n\r\n%s",
				len("0\r\n\r\n"+smuggled), "0\r\n\r\n"+smuggled),
			status: []int{200},
			want:   1,
			check: func(t *testing.T, reqs []wireRequest) {
				if got := reqs[0].req.Header.Get("X-Pad"); got != "x Transfer-Encoding: chunked" {
					t.Errorf("X-Pad %q", got)
				}
				if headerLine(reqs[0].head, "Transfer-Encoding") != "" {
					t.Errorf("a Transfer-Encoding line reached the backend: %q", reqs[0].head)
				}
			},
		},
		{
			// Whitespace between a header name and its colon: net/http's
			// server refuses it (a lenient backend may trim it and read
			// chunked framing the gateway did not use).
			name: "space before colon",
			send: fmt.Sprintf("POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: %d\r\nTransfer-Encoding : chunked\r\n\r\n%s",
				len("0\r\n\r\n"+smuggled), "0\r\n\r\n"+smuggled),
			status: []int{400},
			closed: true,
		},
		{
			name:   "NUL in a header value",
			send:   "GET / HTTP/1.1\r\nHost: svc.gw.test\r\nX-Bad: a\x00b\r\n\r\n" + smuggled,
			status: []int{400},
			closed: true,
		},
		{
			name:   "bare CR in a header value",
			send:   "GET / HTTP/1.1\r\nHost: svc.gw.test\r\nX-Bad: a\rTransfer-Encoding: chunked\r\n\r\n" + smuggled,
			status: []int{400},
			closed: true,
		},
		{
			name:   "obs-fold in the first header",
			send:   "GET / HTTP/1.1\r\n Host: svc.gw.test\r\n\r\n" + smuggled,
			status: []int{400},
			closed: true,
		},
		{
			// Bare LF line ends are accepted; the backend gets CRLF only
			// (checked by parseWire).
			name:   "bare LF",
			send:   "GET /lf HTTP/1.1\nHost: svc.gw.test\nX-A: 1\n\n",
			status: []int{200},
			want:   1,
		},
		{
			// HTTP/1.0 has no chunked coding: Content-Length frames it.
			name: "HTTP/1.0 chunked",
			send: fmt.Sprintf("POST / HTTP/1.0\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n%s",
				len("0\r\n\r\n"+smuggled), "0\r\n\r\n"+smuggled),
			status: []int{200},
			closed: true,
			want:   1,
			check: func(t *testing.T, reqs []wireRequest) {
				if len(reqs[0].req.TransferEncoding) > 0 || reqs[0].body != "0\r\n\r\n"+smuggled {
					t.Errorf("forwarded %q with body %q", reqs[0].head, reqs[0].body)
				}
			},
		},
		{
			// A chunk-size line that is not hex: the body breaks off, and
			// the stream with it; the backend must not see what follows as
			// a request.
			name:   "bad chunk size",
			send:   "POST / HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n" + smuggled,
			status: []int{502},
			closed: true,
			want:   1,
			cut:    true,
		},
		{
			name:   "two Host headers",
			send:   "GET / HTTP/1.1\r\nHost: svc.gw.test\r\nHost: other.gw.test\r\n\r\n" + smuggled,
			status: []int{400},
			closed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newH1Env(t)
			wb := newWireBackend()
			svc, co := e.addCounted(t, "svc", wb.serve)
			cl := startH1(t, e.p, context.Background(), ConnLimits{})
			cl.send(tt.send)
			for i, want := range tt.status {
				resp, body := cl.response("POST")
				if resp.StatusCode != want {
					t.Fatalf("answer %d: status %d, want %d: %s", i, resp.StatusCode, want, body)
				}
			}
			if tt.closed {
				cl.closed()
			} else {
				cl.c.Close()
				cl.wait()
			}
			var reqs []wireRequest
			for i, b := range wb.received(t, e.p, svc, co.n.Load()) {
				rs, truncated, err := parseWire(b)
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				if truncated != tt.cut {
					t.Errorf("stream %d: last request cut short: %v, want %v", i, truncated, tt.cut)
				}
				reqs = append(reqs, rs...)
			}
			for _, r := range reqs {
				if r.req.URL.Path == "/smuggled" {
					t.Fatalf("the smuggled request reached the backend: %q", r.head)
				}
			}
			if len(reqs) != tt.want {
				t.Fatalf("backend saw %d requests, want %d", len(reqs), tt.want)
			}
			if tt.check != nil {
				tt.check(t, reqs)
			}
		})
	}
}

func TestH1HopByHop(t *testing.T) {
	e := newH1Env(t)
	e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		w.Header().Set("Connection", "X-Internal")
		w.Header().Set("X-Internal", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Kept", "yes")
		json.NewEncoder(w).Encode(h)
	})))
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	cl.send("GET /h HTTP/1.1\r\nHost: Svc.GW.test:8443\r\n" +
		"Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\n" +
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nTe: trailers\r\n" +
		"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Host: evil.example\r\n" +
		"X-Forwarded-Proto: http\r\nForwarded: for=6.6.6.6;proto=http\r\nX-Custom: kept\r\n\r\n")
	resp, body := cl.response("GET")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got http.Header
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"Host":              {"Svc.GW.test:8443"},
		"X-Forwarded-For":   {"127.0.0.1"},
		"X-Forwarded-Host":  {"Svc.GW.test:8443"},
		"X-Forwarded-Proto": {"https"},
		"Te":                {"trailers"},
		"X-Custom":          {"kept"},
	}
	for k, v := range want {
		if g := got[k]; strings.Join(g, "|") != strings.Join(v, "|") {
			t.Errorf("backend saw %s = %q, want %q", k, g, v)
		}
	}
	for _, k := range []string{"Connection", "Keep-Alive", "X-Secret", "Proxy-Authorization", "Proxy-Connection", "Forwarded"} {
		if g, ok := got[k]; ok {
			t.Errorf("backend saw %s = %q", k, g)
		}
	}
	for _, k := range []string{"X-Internal", "Keep-Alive", "Proxy-Authenticate"} {
		if g, ok := resp.Header[k]; ok {
			t.Errorf("client saw %s = %q", k, g)
		}
	}
	if resp.Header.Get("X-Kept") != "yes" {
		t.Errorf("client lost X-Kept: %v", resp.Header)
	}
	// Te other than exactly "trailers" is dropped.
	cl.send("GET /h HTTP/1.1\r\nHost: svc.gw.test\r\nTe: gzip\r\n\r\n")
	if _, body := cl.response("GET"); strings.Contains(body, `"Te"`) {
		t.Errorf("Te: gzip reached the backend: %s", body)
	}
}

func TestH1Responses(t *testing.T) {
	next := make(chan struct{})
	var streamed atomic.Int32
	e := newH1Env(t)
	e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cl":
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, "hello world")
		case "/stream":
			// Each piece is written only after the client read the last,
			// so a proxy that buffers makes the client time out.
			streamed.Add(1)
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			w.(http.Flusher).Flush()
			io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc")
		case "/head":
			w.Header().Set("Content-Length", "1234")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		case "/continue":
			body, _ := io.ReadAll(r.Body) // this sends the 100 Continue
			fmt.Fprintf(w, "got %s", body)
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "final")
		}
	})))

	t.Run("content-length", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("GET /cl HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
		resp, body := cl.response("GET")
		if resp.ContentLength != 11 || body != "hello world" || resp.Close {
			t.Errorf("Content-Length %d, body %q, close %v", resp.ContentLength, body, resp.Close)
		}
	})
	t.Run("streaming", func(t *testing.T) {
		for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
			cl := startH1(t, e.p, context.Background(), ConnLimits{})
			cl.send("GET /stream " + proto + "\r\nHost: svc.gw.test\r\n\r\n")
			resp := cl.head("GET")
			if proto == "HTTP/1.1" && (len(resp.TransferEncoding) != 1 || resp.Close) {
				t.Errorf("%s: Transfer-Encoding %q, close %v; want chunked, kept alive", proto, resp.TransferEncoding, resp.Close)
			}
			if proto == "HTTP/1.0" && (len(resp.TransferEncoding) != 0 || !resp.Close) {
				t.Errorf("%s: Transfer-Encoding %q, close %v; want delimited by the close", proto, resp.TransferEncoding, resp.Close)
			}
			br := bufio.NewReader(resp.Body)
			for i := 0; i < 3; i++ {
				line, err := br.ReadString('\n')
				if want := fmt.Sprintf("data: %d\n", i); err != nil || line != want {
					t.Fatalf("%s: event %d: %q %v, want %q", proto, i, line, err, want)
				}
				if blank, err := br.ReadString('\n'); err != nil || blank != "\n" {
					t.Fatalf("%s: event %d end: %q %v", proto, i, blank, err)
				}
				next <- struct{}{}
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Errorf("%s: after the events: %q %v", proto, rest, err)
			}
			if proto == "HTTP/1.0" {
				cl.closed()
			} else if body := cl.get("/cl"); body != "hello world" {
				t.Errorf("after the stream: %q", body)
			}
		}
	})
	t.Run("trailers", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("GET /trailers HTTP/1.1\r\nHost: svc.gw.test\r\nTe: trailers\r\n\r\n")
		resp, body := cl.response("GET")
		if body != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
			t.Errorf("body %q, trailer %v", body, resp.Trailer)
		}
		if resp.Header.Get("X-Checksum") != "" {
			t.Errorf("the trailer came as a header")
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("HEAD /head HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
		resp, body := cl.response("HEAD")
		if resp.StatusCode != 200 || resp.ContentLength != 1234 || body != "" {
			t.Errorf("status %d, Content-Length %d, body %q", resp.StatusCode, resp.ContentLength, body)
		}
		// No body bytes were sent: the next answer parses.
		if body := cl.get("/cl"); body != "hello world" {
			t.Errorf("after HEAD: %q", body)
		}
	})
	t.Run("204 and 304", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		for _, path := range []string{"/204", "/304"} {
			cl.send("GET " + path + " HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
			resp, body := cl.response("GET")
			if path[1:] != fmt.Sprint(resp.StatusCode) || body != "" || len(resp.TransferEncoding) > 0 {
				t.Errorf("%s: status %d, Transfer-Encoding %q, body %q", path, resp.StatusCode, resp.TransferEncoding, body)
			}
			if cl, ok := resp.Header["Content-Length"]; ok {
				t.Errorf("%s: Content-Length %q", path, cl)
			}
		}
		if body := cl.get("/cl"); body != "hello world" {
			t.Errorf("after 204 and 304: %q", body)
		}
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("GET /cl HTTP/1.0\r\nHost: svc.gw.test\r\nConnection: keep-alive\r\n\r\n")
		resp, body := cl.response("GET")
		if body != "hello world" || resp.Header.Get("Connection") != "keep-alive" {
			t.Errorf("body %q, Connection %q; want kept alive", body, resp.Header.Get("Connection"))
		}
		cl.send("GET /cl HTTP/1.0\r\nHost: svc.gw.test\r\n\r\n")
		resp, body = cl.response("GET")
		if body != "hello world" || !resp.Close {
			t.Errorf("body %q, close %v; want closed", body, resp.Close)
		}
		cl.closed()
	})
	t.Run("100 Continue", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("POST /continue HTTP/1.1\r\nHost: svc.gw.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
		if resp := cl.head("POST"); resp.StatusCode != http.StatusContinue {
			t.Fatalf("status %d, want 100 before the body is sent", resp.StatusCode)
		}
		cl.send("hello")
		if resp, body := cl.response("POST"); resp.StatusCode != 200 || body != "got hello" {
			t.Errorf("status %d body %q", resp.StatusCode, body)
		}
	})
	t.Run("103 Early Hints", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("GET /hints HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
		resp := cl.head("GET")
		if resp.StatusCode != http.StatusEarlyHints || resp.Header.Get("Link") == "" {
			t.Fatalf("status %d, Link %q; want 103 with Link", resp.StatusCode, resp.Header.Get("Link"))
		}
		if resp, body := cl.response("GET"); resp.StatusCode != 200 || body != "final" {
			t.Errorf("status %d body %q", resp.StatusCode, body)
		}
		// An HTTP/1.0 client must not get a 1xx (RFC 9110 15.2): it would
		// take it for the answer.
		cl.send("GET /hints HTTP/1.0\r\nHost: svc.gw.test\r\n\r\n")
		if resp, body := cl.response("GET"); resp.StatusCode != 200 || body != "final" {
			t.Errorf("HTTP/1.0: status %d body %q, want 200", resp.StatusCode, body)
		}
	})
	if streamed.Load() != 2 {
		t.Errorf("the streaming handler ran %d times", streamed.Load())
	}
}

func TestH1Errors(t *testing.T) {
	e := newH1Env(t)
	e.addCounted(t, "svc", serveHandler(t, echoHandler()))
	e.table.Upsert("grpc", "", model.ProtoH2C, false)
	e.table.Upsert("down", "", model.ProtoHTTP, false)
	e.addCounted(t, "hangup", func(_ *tunnel.Header, c net.Conn) {
		// Read the request head, then hang up without answering.
		http.ReadRequest(bufio.NewReader(c))
		c.Close()
	})
	big := strings.Repeat("x", 8<<10)
	tests := []struct {
		name   string
		send   string
		status int
		header map[string]string
		body   string // a substring of the page
		closed bool   // false: the connection must still serve svc
	}{
		{"head too large", "GET / HTTP/1.1\r\nHost: svc.gw.test\r\nX-Big: " + big + "\r\n\r\n", 431, nil, "", true},
		{"request line too large", "GET /" + big + " HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n", 431, nil, "", true},
		{"garbage", "HELLO WORLD\r\n\r\n", 400, nil, "could not be parsed", true},
		{"binary", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, nil, "", true},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400, nil, "no Host", true},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, nil, "", true},
		{"CONNECT", "CONNECT svc.gw.test:443 HTTP/1.1\r\nHost: svc.gw.test:443\r\n\r\n", 405, nil, "not a forward proxy", true},
		{"authority-form target", "GET svc.gw.test:443 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n", 400, nil, "target", true},
		{"opaque target", "GET mailto:a@b HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n", 400, nil, "target", true},
		{"unknown host", "GET / HTTP/1.1\r\nHost: nope.gw.test\r\n\r\n", 404, map[string]string{"Content-Type": "text/html; charset=utf-8"}, "nope.gw.test", false},
		{"unknown host with a body", "POST / HTTP/1.1\r\nHost: nope.gw.test\r\nContent-Length: 3\r\n\r\nabc", 404, nil, "", true},
		{"h2c service", "GET / HTTP/1.1\r\nHost: grpc.gw.test\r\n\r\n", 421, nil, "grpc.gw.test", false},
		{"no agent", "GET / HTTP/1.1\r\nHost: down.gw.test\r\n\r\n", 503, map[string]string{"Retry-After": "1"}, "No agent", false},
		{"agent hangs up", "GET / HTTP/1.1\r\nHost: hangup.gw.test\r\n\r\n", 502, nil, "could not be reached", true},
		{"client asks to close", "GET / HTTP/1.1\r\nHost: nope.gw.test\r\nConnection: close\r\n\r\n", 404, nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := startH1(t, e.p, context.Background(), ConnLimits{MaxHeaderBytes: 1 << 10})
			cl.send(tt.send)
			resp, body := cl.response("GET")
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			for k, v := range tt.header {
				if g := resp.Header.Get(k); g != v {
					t.Errorf("%s: %q, want %q", k, g, v)
				}
			}
			if !strings.Contains(body, tt.body) {
				t.Errorf("page %q does not say %q", body, tt.body)
			}
			if resp.Close != tt.closed {
				t.Errorf("Connection: close is %v, want %v", resp.Close, tt.closed)
			}
			if tt.closed {
				cl.closed()
				return
			}
			if got := cl.get("/after"); got != "GET /after " {
				t.Errorf("next request on the connection: %q", got)
			}
		})
	}
}

func TestH1DeadPooledStream(t *testing.T) {
	t.Run("closed while idle", func(t *testing.T) {
		// Each stream answers one request and ends: the pooled stream is
		// dead when the next request comes.
		e := newH1Env(t)
		_, co := e.addCounted(t, "svc", func(_ *tunnel.Header, c net.Conn) {
			defer c.Close()
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		})
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		for _, path := range []string{"/1", "/2", "/3"} {
			if body := cl.get(path); body != path {
				t.Fatalf("body %q, want %q", body, path)
			}
		}
		if got := co.n.Load(); got != 3 {
			t.Errorf("%d streams opened, want 3", got)
		}
	})

	// The first stream takes a second request and hangs up without an
	// answer, as when the agent closes a pooled stream just as it is
	// reused: a request without a body is sent again on a new stream; one
	// with a body (already consumed) is not.
	for _, tt := range []struct {
		name, method, body string
		status             int
		seen               int // times the backend saw the second request
	}{
		{"GET replayed", "GET", "", 200, 2},
		{"POST with a body not replayed", "POST", "data", 502, 1},
		{"POST without a body not replayed", "POST", "", 502, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newH1Env(t)
			var streamN atomic.Int32
			var seen atomic.Int32
			_, co := e.addCounted(t, "svc", func(_ *tunnel.Header, c net.Conn) {
				defer c.Close()
				first := streamN.Add(1) == 1
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if req.URL.Path == "/second" {
						seen.Add(1)
					}
					if first && i == 1 {
						return // hang up instead of answering
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			})
			cl := startH1(t, e.p, context.Background(), ConnLimits{})
			cl.get("/first")
			cl.send(fmt.Sprintf("%s /second HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: %d\r\n\r\n%s", tt.method, len(tt.body), tt.body))
			resp, body := cl.response(tt.method)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.status == 200 {
				if got := co.n.Load(); got != 2 {
					t.Errorf("%d streams opened, want 2", got)
				}
				cl.get("/third")
			} else {
				cl.closed()
			}
			if got := seen.Load(); got != int32(tt.seen) {
				t.Errorf("the backend saw the request %d times, want %d", got, tt.seen)
			}
		})
	}
}

func TestH1TruncatedResponse(t *testing.T) {
	for _, tt := range []struct{ name, answer string }{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n"},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\nzz\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newH1Env(t)
			e.addCounted(t, "svc", func(_ *tunnel.Header, c net.Conn) {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, tt.answer)
			})
			cl := startH1(t, e.p, context.Background(), ConnLimits{})
			cl.send("GET / HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
			// The head may never come (a known length is sent in one
			// piece); if it does, the body must end in an error.
			if resp, err := http.ReadResponse(cl.br, nil); err == nil {
				body, err := io.ReadAll(resp.Body)
				if err == nil {
					t.Fatalf("the client took %q as the whole body", body)
				}
				if !strings.HasPrefix("only ten b", string(body)) {
					t.Errorf("body so far %q", body)
				}
			}
			cl.closed()
		})
	}
}

func TestH1Timeouts(t *testing.T) {
	e := newH1Env(t)
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(w, "done")
	})))

	t.Run("slow head", func(t *testing.T) {
		const rht = 150 * time.Millisecond
		cl := startH1(t, e.p, context.Background(), ConnLimits{ReadHeaderTimeout: rht, IdleTimeout: time.Minute})
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			// Trickle a head that would take 5 s to complete.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			head := "GET / HTTP/1.1\r\nHost: svc.gw.test\r\nX-Slow: " + strings.Repeat("z", 500)
			for i := 0; i < len(head); i++ {
				if _, err := cl.c.Write([]byte{head[i]}); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-stop:
					return
				}
			}
		}()
		// The gateway may answer 400 (the parser takes the line cut off by
		// the deadline for a whole one), and closes.
		rest, err := io.ReadAll(cl.br)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("want the connection closed, read: %v", err)
		}
		if len(rest) > 0 && !strings.HasPrefix(string(rest), "HTTP/1.1 400 ") {
			t.Errorf("want the connection closed, got %q", rest)
		}
		cl.wait()
		if d := time.Since(start); d < rht || d > 3*time.Second {
			t.Errorf("closed after %v, want about %v", d, rht)
		}
	})
	t.Run("idle", func(t *testing.T) {
		cl := startH1(t, e.p, context.Background(), ConnLimits{IdleTimeout: 100 * time.Millisecond})
		cl.get("/")
		cl.closed()
	})
	t.Run("shutdown while idle", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cl := startH1(t, e.p, ctx, ConnLimits{})
		cl.get("/")
		cancel()
		cl.closed()
	})
	t.Run("shutdown before the first request", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cl := startH1(t, e.p, ctx, ConnLimits{})
		cancel()
		cl.closed()
	})
	t.Run("shutdown in flight", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cl := startH1(t, e.p, ctx, ConnLimits{})
		cl.send("GET /slow HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
		select {
		case <-arrived:
		case <-time.After(waitTimeout):
			t.Fatal("the request never reached the backend")
		}
		cancel()
		release <- struct{}{}
		if resp, body := cl.response("GET"); resp.StatusCode != 200 || body != "done" {
			t.Errorf("status %d body %q", resp.StatusCode, body)
		}
		cl.closed()
	})
}

func TestH1Upgrade(t *testing.T) {
	e := newH1Env(t)
	heads := make(chan string, 1)
	e.addCounted(t, "svc", func(_ *tunnel.Header, c net.Conn) {
		defer c.Close()
		var head bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c, &head))
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		heads <- head.String()
		if req.Header.Get("Upgrade") != "websocket" {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		// Echo lines upper-cased until the client is done.
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, strings.ToUpper(line))
		}
	})
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	// The first message rides in the same write as the head.
	cl.send("GET /ws HTTP/1.1\r\nHost: svc.gw.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\nearly\n")
	resp := cl.head("GET")
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("status %d, Upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	head := <-heads
	if strings.Count(head, "Upgrade: websocket\r\n") != 1 || strings.Count(head, "Connection: Upgrade\r\n") != 1 {
		t.Errorf("backend got head %q", head)
	}
	for _, msg := range []string{"early\n", "ping\n", "second message\n"} {
		if msg != "early\n" {
			cl.send(msg)
		}
		if line, err := cl.br.ReadString('\n'); err != nil || line != strings.ToUpper(msg) {
			t.Fatalf("echo of %q: %q %v", msg, line, err)
		}
	}
	closeWrite(t, cl.c)
	cl.closed()
	eventually(t, "the upgrade counted as 1xx", func() bool { return e.requests(t, "svc", "1xx") == 1 })
}

// TestH1EarlyAnswer has the backend refuse a large body without reading it.
func TestH1EarlyAnswer(t *testing.T) {
	e := newH1Env(t)
	e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})))
	const size = 12 << 20 // more than a stream's window, so the gateway cannot absorb it
	for _, tt := range []struct {
		name  string
		stall bool // the client stops sending after 64 KiB and waits
	}{
		{"client keeps sending", false},
		{"client stalls", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cl := startH1(t, e.p, context.Background(), ConnLimits{})
			cl.send(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: %d\r\n\r\n", size))
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				chunk := make([]byte, 64<<10)
				for n := 0; n < size; n += len(chunk) {
					if _, err := cl.c.Write(chunk); err != nil || tt.stall {
						return
					}
				}
			}()
			resp, body := cl.response("POST")
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			cl.closed()
			<-sent
		})
	}
}

// TestH1ClientGoesAway checks that a client leaving mid-exchange ends the
// exchange with the backend too, whatever the backend does.
func TestH1ClientGoesAway(t *testing.T) {
	t.Run("in the request body", func(t *testing.T) {
		e := newH1Env(t)
		bodyErr := make(chan error, 1)
		e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, err := io.ReadAll(r.Body)
			bodyErr <- err
		})))
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		// More than the gateway buffers, so the backend has the head and
		// waits for the rest of the body.
		cl.send("POST / HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("b", 10000))
		cl.c.Close()
		cl.wait()
		select {
		case err := <-bodyErr:
			if err == nil {
				t.Error("the backend read a whole body")
			}
		case <-time.After(waitTimeout):
			t.Fatal("the backend never saw the body end")
		}
	})
	t.Run("in an endless response", func(t *testing.T) {
		// The backend streams until its writes fail and does not watch its
		// side of the stream: the gateway must not drain it forever.
		e := newH1Env(t)
		e.addCounted(t, "svc", func(_ *tunnel.Header, c net.Conn) {
			defer c.Close()
			if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
			piece := []byte("5\r\ntick\n\r\n")
			for {
				if _, err := c.Write(piece); err != nil {
					return
				}
			}
		})
		cl := startH1(t, e.p, context.Background(), ConnLimits{})
		cl.send("GET / HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
		resp := cl.head("GET")
		if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		cl.c.Close()
		cl.wait()
	})
}

// TestH1StreamedRequestBody has the backend answer each piece of a chunked
// request body before the client sends the next: the pieces must not wait
// in the gateway's buffers.
func TestH1StreamedRequestBody(t *testing.T) {
	e := newH1Env(t)
	e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(bytes.ToUpper(buf[:n]))
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	})))
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	cl.send("POST /duplex HTTP/1.1\r\nHost: svc.gw.test\r\nTransfer-Encoding: chunked\r\n\r\n")
	resp := cl.head("POST")
	br := bufio.NewReader(resp.Body)
	for _, piece := range []string{"one\n", "two\n"} {
		cl.send(fmt.Sprintf("%x\r\n%s\r\n", len(piece), piece))
		if line, err := br.ReadString('\n'); err != nil || line != strings.ToUpper(piece) {
			t.Fatalf("echo of %q: %q %v", piece, line, err)
		}
	}
	cl.send("0\r\n\r\n")
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the pieces: %q %v", rest, err)
	}
	if body := cl.get("/next"); body != "" {
		t.Errorf("next request: %q", body)
	}
}

// TestH1StrayBytesAfterAnswer has a backend send more than the answer it
// owes (a body with its answer to HEAD): the stream must not be reused, or
// the next request, perhaps another client's, reads the stray bytes as its
// answer.
func TestH1StrayBytesAfterAnswer(t *testing.T) {
	e := newH1Env(t)
	_, co := e.addCounted(t, "svc", func(_ *tunnel.Header, c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if req.Method == http.MethodHead {
				// Wrong: a body after the head, in the same write.
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
				continue
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		}
	})
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	cl.send("HEAD / HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
	if resp, _ := cl.response("HEAD"); resp.StatusCode != 200 {
		t.Fatalf("HEAD: status %d", resp.StatusCode)
	}
	for _, method := range []string{"POST", "GET"} {
		cl.send(method + " /mine HTTP/1.1\r\nHost: svc.gw.test\r\nContent-Length: 0\r\n\r\n")
		resp, body := cl.response(method)
		if resp.StatusCode != 200 || body != "/mine" {
			t.Errorf("%s after HEAD: status %d, body %q; want 200 /mine", method, resp.StatusCode, body)
		}
	}
	if got := co.n.Load(); got < 2 {
		t.Errorf("%d streams opened; the one with stray bytes was reused", got)
	}
}

func TestH1BlankLinesBeforeRequest(t *testing.T) {
	e := newH1Env(t)
	e.addCounted(t, "svc", serveHandler(t, echoHandler()))
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	// Some clients send a CRLF after a POST body; RFC 9112 section 2.2.
	cl.send("\r\n\r\nGET /after-blank HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
	resp, body := cl.response("GET")
	if resp.StatusCode != 200 || body != "GET /after-blank " {
		t.Fatalf("status %d body %q, want 200 and the echo", resp.StatusCode, body)
	}
	if body := cl.get("/next"); body != "GET /next " {
		t.Fatalf("next request on the connection: %q", body)
	}
}

// A draining agent's pooled streams are not reused: new requests go to the
// other replica, and the draining agent's streams all close as their
// exchanges end, so its drain can complete.
func TestH1DrainingAgentGetsNoNewRequests(t *testing.T) {
	e := newH1Env(t)
	svc, coA := e.addCounted(t, "svc", serveHandler(t, echoHandler()))
	agentA := svc.Agents()[0]
	faB := newFakeAgent(t, "svc-agent-b", serveHandler(t, echoHandler()))
	coB := &countOpener{Opener: faB.gw}
	faB.agent.Session = coB
	if err := e.table.Attach("svc", faB.agent); err != nil {
		t.Fatal(err)
	}
	cl := startH1(t, e.p, context.Background(), ConnLimits{})
	for i := 0; i < 4; i++ {
		cl.get(fmt.Sprintf("/before/%d", i))
	}
	agentA.Drain()
	openedA := coA.n.Load()
	for i := 0; i < 20; i++ {
		cl.get(fmt.Sprintf("/after/%d", i))
	}
	if got := coA.n.Load(); got != openedA {
		t.Errorf("%d new streams opened to the draining agent", got-openedA)
	}
	if coB.n.Load() == 0 {
		t.Error("the other replica got no stream")
	}
	eventually(t, "the draining agent's streams all closed", func() bool { return agentA.Streams() == 0 })
}
