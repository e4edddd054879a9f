package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/tunnel"
)

// h2Front serves e.p over TLS with HTTP/2, as the edge's net/http server
// does for HTTP/2 clients; requests for http services take serveDirect.
type h2Front struct {
	srv *httptest.Server
}

func newH2Front(t *testing.T, e *env) *h2Front {
	t.Helper()
	srv := httptest.NewUnstartedServer(e.p)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &h2Front{srv: srv}
}

// request builds a request for path on host NAME.gw.test.
func (f *h2Front) request(t *testing.T, ctx context.Context, method, name, path string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, f.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = name + ".gw.test"
	return req
}

// do sends req over HTTP/2 and checks that HTTP/2 was used.
func (f *h2Front) do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	if _, ok := req.Context().Deadline(); !ok {
		ctx, cancel := context.WithTimeout(req.Context(), waitTimeout)
		t.Cleanup(cancel)
		req = req.WithContext(ctx)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.ProtoMajor != 2 {
		t.Fatalf("the client spoke %s, want HTTP/2", resp.Proto)
	}
	return resp
}

func TestDirectH2(t *testing.T) {
	e := newH1Env(t)
	next := make(chan struct{})
	cancelled := make(chan struct{})
	started := make(chan struct{}, 1)
	e.addCounted(t, "svc", serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "piece %d\n", i)
				w.(http.Flusher).Flush()
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc")
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "final")
		case "/head":
			w.Header().Set("Content-Length", "1234")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		case "/hang":
			started <- struct{}{}
			<-r.Context().Done() // the gateway ends the stream when the client goes
			close(cancelled)
		case "/duplex":
			// Echo each piece of the body as it comes, upper-cased.
			http.NewResponseController(w).EnableFullDuplex()
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			buf := make([]byte, 64)
			for {
				n, err := r.Body.Read(buf)
				if n > 0 {
					w.Write([]byte(strings.ToUpper(string(buf[:n]))))
					w.(http.Flusher).Flush()
				}
				if err != nil {
					return
				}
			}
		default:
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %s xff=%s", r.Method, r.RequestURI, body, r.Header.Get("X-Forwarded-For"))
		}
	})))
	wb := newWireBackend()
	wsvc, wco := e.addCounted(t, "wire", wb.serve)
	e.addCounted(t, "trunc", func(_ *tunnel.Header, c net.Conn) {
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
	})
	f := newH2Front(t, e)
	bg := context.Background()

	t.Run("GET", func(t *testing.T) {
		resp := f.do(t, f.request(t, bg, "GET", "svc", "/get?q=1", nil))
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "GET /get?q=1  xff=127.0.0.1" {
			t.Errorf("status %d body %q", resp.StatusCode, body)
		}
	})
	t.Run("POST of unknown length", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			io.WriteString(pw, "hello ")
			io.WriteString(pw, "world")
			pw.Close()
		}()
		req := f.request(t, bg, "POST", "wire", "/up", pr)
		req.ContentLength = -1
		resp := f.do(t, req)
		if body := readBody(t, resp); body != "POST /up hello world" {
			t.Fatalf("body %q", body)
		}
		streams := wb.received(t, e.p, wsvc, wco.n.Load())
		if len(streams) != 1 {
			t.Fatalf("%d streams", len(streams))
		}
		reqs, truncated, err := parseWire(streams[0])
		if err != nil || truncated || len(reqs) != 1 {
			t.Fatalf("backend got %q: %v", streams[0], err)
		}
		if h := reqs[0].head; headerLine(h, "Transfer-Encoding") != "chunked" || headerLine(h, "Content-Length") != "" {
			t.Errorf("head %q, want chunked framing", h)
		}
	})
	t.Run("POST of known length", func(t *testing.T) {
		resp := f.do(t, f.request(t, bg, "POST", "svc", "/cl", strings.NewReader("12345")))
		if body := readBody(t, resp); body != "POST /cl 12345 xff=127.0.0.1" {
			t.Errorf("body %q", body)
		}
	})
	t.Run("streaming", func(t *testing.T) {
		resp := f.do(t, f.request(t, bg, "GET", "svc", "/stream", nil))
		br := bufio.NewReader(resp.Body)
		for i := 0; i < 3; i++ {
			line, err := br.ReadString('\n')
			if want := fmt.Sprintf("piece %d\n", i); err != nil || line != want {
				t.Fatalf("piece %d: %q %v", i, line, err)
			}
			next <- struct{}{}
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
			t.Errorf("after the pieces: %q %v", rest, err)
		}
	})
	t.Run("request body streamed", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		req := f.request(t, bg, "POST", "svc", "/duplex", pr)
		resp := f.do(t, req)
		// The request's deadline does not end a body read while the
		// request body is still open; closing the body does.
		watchdog := time.AfterFunc(waitTimeout, func() { resp.Body.Close() })
		defer watchdog.Stop()
		br := bufio.NewReader(resp.Body)
		for _, piece := range []string{"one\n", "two\n"} {
			// The next piece is written only once the last came back.
			if _, err := io.WriteString(pw, piece); err != nil {
				t.Fatal(err)
			}
			if line, err := br.ReadString('\n'); err != nil || line != strings.ToUpper(piece) {
				t.Fatalf("echo of %q: %q %v", piece, line, err)
			}
		}
	})
	t.Run("trailers", func(t *testing.T) {
		resp := f.do(t, f.request(t, bg, "GET", "svc", "/trailers", nil))
		if body := readBody(t, resp); body != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
			t.Errorf("body %q trailer %v", body, resp.Trailer)
		}
	})
	t.Run("103 Early Hints", func(t *testing.T) {
		var hints []textproto.MIMEHeader
		ctx := httptrace.WithClientTrace(bg, &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				if code == http.StatusEarlyHints {
					hints = append(hints, h)
				}
				return nil
			},
		})
		resp := f.do(t, f.request(t, ctx, "GET", "svc", "/hints", nil))
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "final" {
			t.Errorf("status %d body %q", resp.StatusCode, body)
		}
		if len(hints) != 1 || hints[0].Get("Link") == "" {
			t.Errorf("early hints %v, want one with Link", hints)
		}
		if l := resp.Header.Get("Link"); l != "" {
			t.Errorf("the 103's Link came with the final answer too: %q", l)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		resp := f.do(t, f.request(t, bg, "HEAD", "svc", "/head", nil))
		if resp.StatusCode != 200 || resp.ContentLength != 1234 {
			t.Errorf("status %d, Content-Length %d, want 1234", resp.StatusCode, resp.ContentLength)
		}
	})
	t.Run("204 and 304", func(t *testing.T) {
		for _, code := range []int{204, 304} {
			resp := f.do(t, f.request(t, bg, "GET", "svc", fmt.Sprintf("/%d", code), nil))
			if body := readBody(t, resp); resp.StatusCode != code || body != "" {
				t.Errorf("status %d, body %q, want %d", resp.StatusCode, body, code)
			}
			if cl, ok := resp.Header["Content-Length"]; ok {
				t.Errorf("%d with Content-Length %q", code, cl)
			}
		}
	})
	t.Run("client cancels", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		errc := make(chan error, 1)
		go func() {
			resp, err := f.srv.Client().Do(f.request(t, ctx, "GET", "svc", "/hang", nil))
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		select {
		case <-started:
		case <-time.After(waitTimeout):
			t.Fatal("the request never reached the backend")
		}
		cancel()
		select {
		case <-cancelled:
		case <-time.After(waitTimeout):
			t.Fatal("the backend's request was not cancelled")
		}
		if err := <-errc; err == nil {
			t.Error("the cancelled request succeeded")
		}
	})
	t.Run("truncated answer", func(t *testing.T) {
		// The error may come before the head (the head and the start of
		// the body were still buffered) or in the body.
		ctx, cancel := context.WithTimeout(bg, waitTimeout)
		defer cancel()
		resp, err := f.srv.Client().Do(f.request(t, ctx, "GET", "trunc", "/", nil))
		if err != nil {
			return
		}
		defer resp.Body.Close()
		if body, err := io.ReadAll(resp.Body); err == nil {
			t.Fatalf("the client took %q as the whole body", body)
		}
	})
}

// TestDirectBadTarget sends a request target that is neither origin nor
// absolute form through net/http's HTTP/1.1 server (a connection the fast
// path does not take): it must not reach the backend as "GET 443".
func TestDirectBadTarget(t *testing.T) {
	e := newEnv(t)
	wb := newWireBackend()
	svc, co := e.addCounted(t, "svc", wb.serve)
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	io.WriteString(c, "GET svc.gw.test:443 HTTP/1.1\r\nHost: svc.gw.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d, want 400", resp.StatusCode)
	}
	if n := len(wb.received(t, e.p, svc, co.n.Load())); n != 0 {
		t.Errorf("the request reached the backend on %d streams", n)
	}
}
