package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// h2cReplica is an h2c backend behind its own fake agent that answers its name.
func h2cReplica(t *testing.T, e *env, service, name string, hits *atomic.Int64, hold <-chan struct{}) *fakeAgent {
	t.Helper()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	backend := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/slow" && hold != nil {
			w.WriteHeader(200)
			http.NewResponseController(w).Flush()
			<-hold
		}
		fmt.Fprint(w, name)
	})}
	fa := newFakeAgent(t, name, serveHTTP(t, backend))
	if err := e.table.Attach(service, fa.agent); err != nil {
		t.Fatal(err)
	}
	return fa
}

// TestH2CBalancedAndDrained: requests to an h2c service (gRPC) spread over
// its replicas although HTTP/2 multiplexes them, and a draining replica
// gets no new request while one it serves runs to its end.
func TestH2CBalancedAndDrained(t *testing.T) {
	e := newEnv(t)
	e.table.Upsert("grpc", "", model.ProtoH2C, false)
	var hitsA, hitsB atomic.Int64
	hold := make(chan struct{})
	faA := h2cReplica(t, e, "grpc", "A", &hitsA, hold)
	h2cReplica(t, e, "grpc", "B", &hitsB, nil)

	front := httptest.NewUnstartedServer(e.p)
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)
	get := func(ctx context.Context, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", front.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "grpc.gw.test"
		return front.Client().Do(req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for range 20 {
		resp, err := get(ctx, "/pkg.S/M")
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		resp.Body.Close()
	}
	if hitsA.Load() != 10 || hitsB.Load() != 10 {
		t.Fatalf("20 requests went %d to A and %d to B, want 10 each", hitsA.Load(), hitsB.Load())
	}

	// A long request on A, then A drains.
	var slow *http.Response
	for slow == nil {
		resp, err := get(ctx, "/slow")
		if err != nil {
			t.Fatal(err)
		}
		if hitsA.Load() == 11 { // A answered it (B answers at once)
			slow = resp
			break
		}
		readBody(t, resp)
		resp.Body.Close()
	}
	faA.agent.Drain()
	svc := e.table.Lookup("grpc")
	e.p.DrainIdle(svc)
	a := hitsA.Load()
	for range 10 {
		resp, err := get(ctx, "/pkg.S/M")
		if err != nil {
			t.Fatal(err)
		}
		if body := readBody(t, resp); body != "B" {
			t.Errorf("a request went to %q while A drains", body)
		}
		resp.Body.Close()
	}
	if hitsA.Load() != a {
		t.Errorf("draining A got %d new requests", hitsA.Load()-a)
	}
	close(hold)
	if body := readBody(t, slow); body != "A" {
		t.Errorf("the request A was serving when it began to drain ended with %q, want its whole answer", body)
	}
	slow.Body.Close()
	// A's connection, idle now, is closed while it drains.
	deadline := time.Now().Add(waitTimeout)
	for faA.gw.NumStreams() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the draining agent still has %d streams", faA.gw.NumStreams())
		}
		e.p.DrainIdle(svc)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRetireClosesPool: when the table replaces a service entry (its
// protocol changed), the old entry's pooled streams are closed.
func TestRetireClosesPool(t *testing.T) {
	e := newEnv(t)
	e.table.OnRetire = e.p.Retire
	svc, fa := e.addService(t, "web", model.ProtoHTTP, serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	})))
	resp := e.get(t, "web.gw.test", "/")
	readBody(t, resp)
	resp.Body.Close()
	deadline := time.Now().Add(waitTimeout)
	for fa.agent.Streams() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams open, want the pooled one", fa.agent.Streams())
		}
		time.Sleep(time.Millisecond)
	}
	e.table.Upsert("web", "", model.ProtoH2C, false) // replaces the entry
	if e.table.Lookup("web") == svc {
		t.Fatal("entry not replaced")
	}
	for fa.agent.Streams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open after the entry was retired", fa.agent.Streams())
		}
		time.Sleep(time.Millisecond)
	}
}
