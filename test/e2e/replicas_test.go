package e2e

import (
	"strings"
	"syscall"

	"fmt"
	"github.com/gorilla/websocket"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recordingBackend answers every request with its own name and records the
// request ids (the X-Req header) it received.
type recordingBackend struct {
	name string
	url  string
	mu   sync.Mutex
	seen map[string]bool
	hits atomic.Int64
}

func startRecordingBackend(t *testing.T, name string) *recordingBackend {
	b := &recordingBackend{name: name, seen: map[string]bool{}}
	b.url = startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.seen[r.Header.Get("X-Req")] = true
		b.mu.Unlock()
		b.hits.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, b.name)
	}))
	return b
}

func (b *recordingBackend) saw(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[id]
}

// TestReplicaKilledUnderLoad: two agents serve one name; one is killed with
// SIGKILL under continuous GET and POST load from 8 workers. No GET fails (a
// GET in flight on the dead agent is replayed on the other), and at most the
// POSTs in flight at the kill fail (one per worker): a POST with a body that
// was already on its way to the dead agent is not replayed, since the gateway
// cannot know whether it reached the backend.
func TestReplicaKilledUnderLoad(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tok := g.addTenant(t, "acme")
	ba, bb := startRecordingBackend(t, "A"), startRecordingBackend(t, "B")
	agentA, url := g.expose(t, "--token", tok, "--name", "shop", ba.url)
	_, urlB := g.expose(t, "--token", tok, "--name", "shop", bb.url)
	if url != urlB {
		t.Fatalf("replicas got different URLs: %s and %s", url, urlB)
	}
	waitFor(t, 10*time.Second, "both replicas serving", func() bool {
		code, _ := status(t, g.caFile, url)
		return code == "200" && ba.hits.Load() > 0 && bb.hits.Load() > 0
	})

	const workers = 8
	l := startLoad(g.client(t, caPool(t, g.caFile)), url+"/load", workers)
	// Let load run on both replicas, kill A, keep the load going on B.
	l.waitOK(t, 200, "load flowing")
	agentA.kill(t)
	l.waitOK(t, 500, "load flowing after the kill")
	fails := l.stop()

	if got := split(fails, 0, http.MethodGet); len(got) > 0 {
		t.Errorf("%d GETs failed across the kill, want 0: %v", len(got), got)
	}
	failedPOS := split(fails, 0, http.MethodPost)
	if len(failedPOS) > workers {
		t.Errorf("%d POSTs failed across the kill, want at most the %d in flight: %v", len(failedPOS), workers, failedPOS)
	}
	reached := 0
	for _, f := range failedPOS {
		if ba.saw(f.id) {
			reached++
		}
	}
	t.Logf("%d requests ok; %d POSTs failed (%d of them had reached the killed agent's backend)", l.ok.Load(), len(failedPOS), reached)
}

// wsNamedBackend answers plain requests with name (recording them) and
// echoes WebSocket messages prefixed with "name:".
func wsNamedBackend(t *testing.T, name string) *recordingBackend {
	b := &recordingBackend{name: name, seen: map[string]bool{}}
	up := websocket.Upgrader{}
	b.url = startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			for {
				typ, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if err := c.WriteMessage(typ, append([]byte(name+":"), msg...)); err != nil {
					return
				}
			}
		}
		b.mu.Lock()
		b.seen[r.Header.Get("X-Req")] = true
		b.mu.Unlock()
		b.hits.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, name)
	}))
	return b
}

// TestReplicaDrainUnderLoad: of two replicas under continuous GET and POST
// load, one gets SIGTERM: no request fails, a WebSocket it serves keeps
// working until the client closes it, then the agent exits 0; started
// again, it takes traffic again.
func TestReplicaDrainUnderLoad(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tok := g.addTenant(t, "acme")
	ba, bb := wsNamedBackend(t, "A"), wsNamedBackend(t, "B")
	agentA, url := g.expose(t, "--token", tok, "--name", "shop", ba.url)
	g.expose(t, "--token", tok, "--name", "shop", bb.url)
	waitFor(t, 10*time.Second, "both replicas serving", func() bool {
		code, _ := status(t, g.caFile, url)
		return code == "200" && ba.hits.Load() > 0 && bb.hits.Load() > 0
	})

	// A WebSocket that agent A serves.
	var ws *websocket.Conn
	for i := 0; ws == nil; i++ {
		if i == 20 {
			t.Fatal("20 WebSockets all went to replica B")
		}
		c := g.dialWS(t, url)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.WriteMessage(websocket.TextMessage, []byte("who"))
		_, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("websocket: %v", err)
		}
		if string(msg) == "A:who" {
			ws = c
		} else {
			c.Close()
		}
	}
	defer ws.Close()

	l := startLoad(g.client(t, caPool(t, g.caFile)), url+"/drain", 8)
	l.waitOK(t, 200, "load flowing")

	agentA.signal(t, syscall.SIGTERM)
	// Count from when the gateway knows: a loaded machine may take a while
	// to deliver the signal and the agent's drain message.
	waitFor(t, 10*time.Second, "the gateway to see replica A draining", func() bool {
		out, _, _ := run(t, 10*time.Second, append([]string{"service", "show", "shop", "--json"}, g.admin()...)...)
		return strings.Contains(out, `"state": "draining"`)
	})
	a := ba.hits.Load()
	l.waitOK(t, 500, "load flowing while A drains")
	if extra := ba.hits.Load() - a; extra > 8 {
		t.Errorf("a draining replica got %d new requests, want at most the 8 in flight", extra)
	}
	if !agentA.running() {
		t.Fatal("the draining agent exited while its WebSocket was open")
	}
	for i := range 3 {
		msg := fmt.Sprintf("still here %d", i)
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatalf("websocket write while draining: %v", err)
		}
		if _, got, err := ws.ReadMessage(); err != nil || string(got) != "A:"+msg {
			t.Fatalf("websocket echo while draining = %q, %v", got, err)
		}
	}
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	ws.Close()
	if code := agentA.wait(t, 15*time.Second); code != 0 {
		t.Errorf("drained agent exited %d, want 0", code)
	}

	// Back again: it takes traffic.
	a = ba.hits.Load()
	g.expose(t, "--token", tok, "--name", "shop", ba.url)
	waitFor(t, 10*time.Second, "the restarted replica taking traffic", func() bool { return ba.hits.Load() > a+50 })
	if fails := l.stop(); len(fails) > 0 {
		t.Errorf("%d of %d requests failed across a replica's drain and return, want 0: %v", len(fails), int(l.ok.Load())+len(fails), fails[:min(10, len(fails))])
	}
	t.Logf("%d requests ok across the drain", l.ok.Load())
}
