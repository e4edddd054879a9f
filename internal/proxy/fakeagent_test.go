package proxy

import (
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// waitTimeout bounds every wait in these tests; a healthy run takes
// milliseconds, so reaching it means the behaviour under test is broken.
const waitTimeout = 5 * time.Second

// fakeAgent is a tunnel session over net.Pipe whose agent side reads each
// stream's header and hands the stream to serve, which owns it.
type fakeAgent struct {
	gw      *tunnel.Session // the gateway side; route.Agent.Session
	ag      *tunnel.Session
	agent   *route.Agent
	headers chan *tunnel.Header // every header read, buffered
	wg      sync.WaitGroup
}

func newFakeAgent(t testing.TB, id string, serve func(h *tunnel.Header, c net.Conn)) *fakeAgent {
	t.Helper()
	c1, c2 := net.Pipe()
	gw, err := tunnel.Server(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := tunnel.Client(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{gw: gw, ag: ag, headers: make(chan *tunnel.Header, 1024)}
	fa.agent = &route.Agent{ID: id, Session: gw, Connected: time.Now()}
	fa.wg.Add(1)
	go func() {
		defer fa.wg.Done()
		for {
			st, err := ag.Accept()
			if err != nil {
				return
			}
			fa.wg.Add(1)
			go func() {
				defer fa.wg.Done()
				h, err := tunnel.ReadHeader(st)
				if err != nil {
					st.Close()
					return
				}
				select {
				case fa.headers <- h:
				default:
				}
				serve(h, st)
			}()
		}
	}()
	t.Cleanup(fa.close)
	return fa
}

// close ends both sessions (and with them every stream) and waits for the
// agent's goroutines.
func (fa *fakeAgent) close() {
	fa.gw.Close()
	fa.ag.Close()
	fa.wg.Wait()
}

// nextHeader returns the next stream header the agent read.
func (fa *fakeAgent) nextHeader(t *testing.T) *tunnel.Header {
	t.Helper()
	select {
	case h := <-fa.headers:
		return h
	case <-time.After(waitTimeout):
		t.Fatal("the agent read no stream header")
		return nil
	}
}

// serveHTTP returns a serve function that hands streams to srv, which it
// starts; srv is closed when the test ends.
func serveHTTP(t testing.TB, srv *http.Server) func(*tunnel.Header, net.Conn) {
	t.Helper()
	ln := &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return func(_ *tunnel.Header, c net.Conn) {
		select {
		case ln.ch <- c:
		case <-ln.done:
			c.Close()
		}
	}
}

// serveHandler serves h with HTTP/1.1 on every stream.
func serveHandler(t testing.TB, h http.Handler) func(*tunnel.Header, net.Conn) {
	return serveHTTP(t, &http.Server{Handler: h})
}

// connListener is a net.Listener fed through a channel.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
