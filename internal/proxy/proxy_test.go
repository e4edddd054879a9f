package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

func TestHostName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"shop.example.com", "shop.example.com"},
		{"shop.example.com:8443", "shop.example.com"},
		{"shop.example.com:443", "shop.example.com"},
		{"SHOP.Example.COM", "shop.example.com"},
		{"Shop.Example.Com.:8080", "shop.example.com"},
		{"shop.example.com.", "shop.example.com"},
		{"localhost:8080", "localhost"},
		{"127.0.0.1:8443", "127.0.0.1"},
		{"[::1]:8443", "::1"},
		{"[2001:DB8::1]:443", "2001:db8::1"},
		{"[::1]", "::1"},
		{"", ""},
		{":8080", ""},
	}
	for _, tt := range tests {
		if got := HostName(tt.in); got != tt.want {
			t.Errorf("HostName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestErrorPage(t *testing.T) {
	rec := httptest.NewRecorder()
	ErrorPage(rec, http.StatusNotFound, `no "<script>" here`)
	if rec.Code != 404 {
		t.Errorf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type %q", ct)
	}
	body := rec.Body.String()
	if strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") {
		t.Errorf("message not escaped: %s", body)
	}
	if !strings.Contains(body, "404 Not Found") {
		t.Errorf("body lacks the status: %s", body)
	}
}

// env is a proxy handler served by an httptest server, over a route table
// whose services are NAME.gw.test.
type env struct {
	table   *route.Table
	metrics *route.Metrics
	p       *HTTP
	srv     *httptest.Server
	logs    *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := newH1Env(t)
	e.srv = httptest.NewServer(e.p)
	t.Cleanup(e.srv.Close)
	return e
}

// addService adds service name with one fake agent serving streams with serve.
func (e *env) addService(t *testing.T, name string, proto model.Protocol, serve func(*tunnel.Header, net.Conn)) (*route.Service, *fakeAgent) {
	t.Helper()
	e.table.Upsert(name, "", proto, false)
	fa := newFakeAgent(t, name+"-agent", serve)
	if err := e.table.Attach(name, fa.agent); err != nil {
		t.Fatal(err)
	}
	return e.table.Lookup(name), fa
}

// do sends req to the proxy with a deadline.
func (e *env) do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), waitTimeout)
	t.Cleanup(cancel)
	resp, err := e.srv.Client().Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (e *env) get(t *testing.T, host, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	return e.do(t, req)
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (e *env) requests(t *testing.T, service, class string) float64 {
	t.Helper()
	var d dto.Metric
	if err := e.metrics.Requests.WithLabelValues(service, class).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnknownHost(t *testing.T) {
	e := newEnv(t)
	e.table.Upsert("pass", "", model.ProtoTLS, false) // passthrough: not served by the proxy
	for _, host := range []string{"nope.gw.test", "other.example", "pass.gw.test", "gw.test"} {
		resp := e.get(t, host, "/")
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", host, resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
			t.Errorf("%s: Content-Type %q, want HTML", host, ct)
		}
		if !strings.Contains(body, HostName(host)) {
			t.Errorf("%s: page does not name the host: %s", host, body)
		}
	}
}

func TestNoUpstream(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	tests := []struct {
		name  string
		setup func(t *testing.T, e *env)
		msg   string
	}{
		{"no agents", func(t *testing.T, e *env) {
			e.table.Upsert("svc", "", model.ProtoHTTP, false)
		}, "No agent"},
		{"only draining agents", func(t *testing.T, e *env) {
			_, fa := e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.NotFoundHandler()))
			fa.agent.Drain()
		}, "No agent"},
		{"session gone", func(t *testing.T, e *env) {
			_, fa := e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.NotFoundHandler()))
			fa.close()
		}, "No agent"},
		{"agent at its stream limit", func(t *testing.T, e *env) {
			svc, fa := e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-block:
				case <-r.Context().Done():
				}
			})))
			fa.agent.MaxStreams = 1
			go func() {
				req, _ := http.NewRequest("GET", e.srv.URL+"/slow", nil)
				req.Host = "svc.gw.test"
				if resp, err := e.srv.Client().Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			eventually(t, "the first request to hold the stream", func() bool { return svc.Agents()[0].Streams() == 1 })
		}, "stream limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.setup(t, e)
			start := time.Now()
			resp := e.get(t, "svc.gw.test", "/")
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503: %s", resp.StatusCode, body)
			}
			if ra := resp.Header.Get("Retry-After"); ra == "" {
				t.Error("no Retry-After")
			}
			if !strings.Contains(body, tt.msg) {
				t.Errorf("page %q does not say %q", body, tt.msg)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("answer took %v; it must come at once", d)
			}
			eventually(t, "the 503 counted as 5xx", func() bool { return e.requests(t, "svc", "5xx") == 1 })
		})
	}
}

func TestForwardedHeaders(t *testing.T) {
	e := newEnv(t)
	_, fa := e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(map[string]string{
			"host":   r.Host,
			"xff":    strings.Join(r.Header.Values("X-Forwarded-For"), ","),
			"proto":  strings.Join(r.Header.Values("X-Forwarded-Proto"), ","),
			"xhost":  strings.Join(r.Header.Values("X-Forwarded-Host"), ","),
			"fwd":    r.Header.Get("Forwarded"),
			"uri":    r.RequestURI,
			"body":   string(body),
			"custom": r.Header.Get("X-Custom"),
		})
	})))

	tests := []struct {
		name   string
		header http.Header
	}{
		{"plain", nil},
		{"client-supplied forwarding headers", http.Header{
			"X-Forwarded-For":   {"6.6.6.6", "7.7.7.7"},
			"X-Forwarded-Proto": {"http"},
			"X-Forwarded-Host":  {"evil.example"},
			"Forwarded":         {"for=6.6.6.6;proto=http"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("POST", e.srv.URL+"/path/x?q=1&r=2", strings.NewReader("request body"))
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "Svc.GW.test:8443"
			for k, v := range tt.header {
				req.Header[k] = v
			}
			req.Header.Set("X-Custom", "kept")
			resp := e.do(t, req)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			var got map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				"host":   "Svc.GW.test:8443",
				"xff":    "127.0.0.1",
				"proto":  "https",
				"xhost":  "Svc.GW.test:8443",
				"fwd":    "",
				"uri":    "/path/x?q=1&r=2",
				"body":   "request body",
				"custom": "kept",
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("backend saw %s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
	h := fa.nextHeader(t)
	if h.Kind != tunnel.KindHTTP || h.Service != "svc" {
		t.Errorf("stream header %+v, want kind http for svc", h)
	}
	// The handler counts after the response is out, so the client may be first.
	eventually(t, "two requests counted as 2xx", func() bool { return e.requests(t, "svc", "2xx") == 2 })
	eventually(t, "access log lines", func() bool { return strings.Count(e.logs.String(), "msg=request") == 2 })
	if l := e.logs.String(); !strings.Contains(l, "service=svc") || !strings.Contains(l, "status=200") {
		t.Errorf("access log lacks service or status: %s", l)
	}
}

func TestStreamingFlushes(t *testing.T) {
	e := newEnv(t)
	next := make(chan struct{})
	const events = 3
	e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < events; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	})))
	resp := e.get(t, "svc.gw.test", "/events")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for i := 0; i < events; i++ {
		// The backend sends event i+1 only after the test has read event i,
		// so a proxy that buffers makes this read time out.
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprintf("data: %d\n", i); line != want {
			t.Fatalf("event %d: %q, want %q", i, line, want)
		}
		if blank, err := br.ReadString('\n'); err != nil || blank != "\n" {
			t.Fatalf("event %d end: %q %v", i, blank, err)
		}
		next <- struct{}{}
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the events: %q %v", rest, err)
	}
}

func TestUpgrade(t *testing.T) {
	e := newEnv(t)
	e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		brw.WriteString("hello from backend\n")
		brw.Flush()
		// Echo lines upper-cased until the client is done.
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(strings.ToUpper(line))
			brw.Flush()
		}
	})))

	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: svc.gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("response %d, Upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	if line, err := br.ReadString('\n'); err != nil || line != "hello from backend\n" {
		t.Fatalf("first server message: %q %v", line, err)
	}
	for _, msg := range []string{"ping\n", "second message\n"} {
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != strings.ToUpper(msg) {
			t.Fatalf("echo of %q: %q %v", msg, line, err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after half-close: %q %v", rest, err)
	}
	eventually(t, "the upgrade counted as 1xx", func() bool { return e.requests(t, "svc", "1xx") == 1 })
	if got := e.requests(t, "svc", "2xx"); got != 0 {
		t.Errorf("the upgrade also counted as 2xx (%v)", got)
	}
}

func TestAgentClosesMidRequest(t *testing.T) {
	e := newEnv(t)
	e.addService(t, "svc", model.ProtoHTTP, func(_ *tunnel.Header, c net.Conn) {
		// Read part of the request, then hang up without answering.
		buf := make([]byte, 10)
		io.ReadFull(c, buf)
		c.Close()
	})
	start := time.Now()
	resp := e.get(t, "svc.gw.test", "/")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502: %s", resp.StatusCode, body)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "502") {
		t.Errorf("not the 502 page: %q", body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("502 took %v", d)
	}
	eventually(t, "the 502 counted as 5xx", func() bool { return e.requests(t, "svc", "5xx") == 1 })
}

func TestH2C(t *testing.T) {
	e := newEnv(t)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	backend := &http.Server{
		Protocols: &protos,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "Grpc-Status")
			fmt.Fprintf(w, "proto=%d host=%s xff=%s", r.ProtoMajor, r.Host, r.Header.Get("X-Forwarded-For"))
			w.Header().Set("Grpc-Status", "0")
		}),
	}
	_, fa := e.addService(t, "grpc", model.ProtoH2C, serveHTTP(t, backend))
	// HTTP/2 end to end, as gRPC needs: the client speaks h2 over TLS.
	front := httptest.NewUnstartedServer(e.p)
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", front.URL+"/pkg.Service/Method", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "grpc.gw.test"
		resp, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("status %d over %s: %s", resp.StatusCode, resp.Proto, body)
		}
		if want := "proto=2 host=grpc.gw.test xff=127.0.0.1"; body != want {
			t.Errorf("backend said %q, want %q", body, want)
		}
		if resp.Trailer.Get("Grpc-Status") != "0" {
			t.Errorf("trailer Grpc-Status = %q, want 0", resp.Trailer.Get("Grpc-Status"))
		}
	}
	if h := fa.nextHeader(t); h.Kind != tunnel.KindH2C || h.Service != "grpc" {
		t.Errorf("stream header %+v, want kind h2c for grpc", h)
	}
	// HTTP/2 multiplexes: the three requests share one stream.
	select {
	case h := <-fa.headers:
		t.Errorf("a second stream was opened (%+v); h2c should multiplex", h)
	default:
	}
}

func TestCloseIdle(t *testing.T) {
	e := newEnv(t)
	ended := make(chan error, 1)
	svc, fa := e.addService(t, "svc", model.ProtoHTTP, func(_ *tunnel.Header, c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				ended <- err
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	for i := 0; i < 2; i++ {
		resp := e.get(t, "svc.gw.test", "/")
		if body := readBody(t, resp); body != "ok" {
			t.Fatalf("body %q", body)
		}
	}
	fa.nextHeader(t)
	select {
	case h := <-fa.headers:
		t.Fatalf("keep-alive: a second stream was opened (%+v)", h)
	default:
	}
	if n := fa.agent.Streams(); n != 1 {
		t.Fatalf("%d streams open, want the one pooled", n)
	}
	// The stream goes back to the pool just after the response; close idle
	// streams until the agent sees the end.
	deadline := time.After(waitTimeout)
	for done := false; !done; {
		e.p.CloseIdle(svc)
		select {
		case err := <-ended:
			if !errors.Is(err, io.EOF) {
				t.Errorf("agent saw %v, want EOF", err)
			}
			done = true
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatal("the agent never saw the pooled stream end")
		}
	}
	if n := fa.agent.Streams(); n != 0 {
		t.Errorf("%d streams open after CloseIdle", n)
	}
}

func TestClientGoesAway(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{})
	e.addService(t, "svc", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done() // the proxy cancels the upstream request
	})))
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "svc.gw.test"
	errc := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Do(req)
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
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client error %v, want context.Canceled", err)
	}
	eventually(t, "the abandoned request counted as 4xx", func() bool { return e.requests(t, "svc", "4xx") == 1 })
	eventually(t, "the access log line", func() bool { return strings.Contains(e.logs.String(), "status=499") })
	if got := e.requests(t, "svc", "2xx"); got != 0 {
		t.Errorf("the abandoned request counted as 2xx")
	}
}
