package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// steadyLoad is continuous load for the scenarios (failover, new upstream):
// conns workers, each sending GET /small and POST /small (1 KiB body) in
// turn over a keep-alive connection, until stopped. Every request is
// recorded; nothing is measured while it runs except the per-backend
// counters, which scenarios poll.
type steadyLoad struct {
	start  time.Time // the load's time origin (monotonic)
	cancel context.CancelFunc
	wg     sync.WaitGroup
	tr     *http.Transport
	// hits counts successful answers per backend id (backendIDHeader). The
	// map is fixed at start; its values are updated by the workers.
	hits      map[string]*atomic.Int64
	okN, errN atomic.Int64 // answers and failures so far
	workers   [][]reqEvent // one slice per worker, owned by it until stop returns
}

// reqEvent is one finished request of a steadyLoad.
type reqEvent struct {
	start, end time.Duration // since steadyLoad.start
	post       bool
	ok         bool   // status 200 and the whole body
	backend    string // backendIDHeader of the answer; "" when failed
	recv       int64  // backendRecvHeader: arrival at the backend, Unix ns; 0 when failed
	err        string // why it failed; "" when ok
}

var postBody = body1k

// startSteadyLoad starts conns workers against t. ids are the backend ids
// whose answers are counted live.
func startSteadyLoad(ctx context.Context, t *target, conns int, ids ...string) *steadyLoad {
	lctx, cancel := context.WithCancel(ctx)
	l := &steadyLoad{start: time.Now(), cancel: cancel, tr: t.transport(false, conns),
		hits: map[string]*atomic.Int64{}, workers: make([][]reqEvent, conns)}
	l.tr.ResponseHeaderTimeout = 30 * time.Second
	for _, id := range ids {
		l.hits[id] = new(atomic.Int64)
	}
	want := int64(len(smallBody))
	for i := range conns {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			buf := make([]byte, 4<<10)
			events := make([]reqEvent, 0, 1<<14)
			defer func() { l.workers[i] = events }()
			for n := i; lctx.Err() == nil; n++ {
				post := n%2 == 1
				var req *http.Request
				if post {
					req, _ = http.NewRequestWithContext(lctx, "POST", t.base+"/small", bytes.NewReader(postBody))
				} else {
					req, _ = http.NewRequestWithContext(lctx, "GET", t.base+"/small", nil)
				}
				ev := reqEvent{start: time.Since(l.start), post: post}
				resp, err := l.tr.RoundTrip(req)
				if err == nil {
					var nb int64
					if resp.StatusCode != http.StatusOK {
						b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
						err = fmt.Errorf("status %d: %q", resp.StatusCode, b)
					} else {
						nb, err = io.CopyBuffer(writerOnly{io.Discard}, resp.Body, buf)
						if err == nil && nb != want {
							err = fmt.Errorf("%d body bytes, want %d", nb, want)
						}
					}
					resp.Body.Close()
					if err == nil {
						ev.backend = resp.Header.Get(backendIDHeader)
						ev.recv, _ = strconv.ParseInt(resp.Header.Get(backendRecvHeader), 10, 64)
					}
				}
				ev.end = time.Since(l.start)
				if err != nil {
					if lctx.Err() != nil {
						return // stopped: a request cut short is not a failure
					}
					ev.err = err.Error()
					l.errN.Add(1)
				} else {
					ev.ok = true
					l.okN.Add(1)
					if c := l.hits[ev.backend]; c != nil {
						c.Add(1)
					}
				}
				events = append(events, ev)
			}
		}()
	}
	return l
}

// count is the number of successful answers of backend id so far.
func (l *steadyLoad) count(id string) int64 { return l.hits[id].Load() }

// ok is the number of successful answers so far.
func (l *steadyLoad) ok() int64 { return l.okN.Load() }

// failed is the number of failed requests so far.
func (l *steadyLoad) failed() int64 { return l.errN.Load() }

// at is the load's clock for t.
func (l *steadyLoad) at(t time.Time) time.Duration { return t.Sub(l.start) }

// stop ends the load and returns every request, ordered by their end.
func (l *steadyLoad) stop() []reqEvent {
	l.cancel()
	l.wg.Wait()
	l.tr.CloseIdleConnections()
	var all []reqEvent
	for _, w := range l.workers {
		all = append(all, w...)
	}
	slices.SortFunc(all, func(a, b reqEvent) int { return int(a.end - b.end) })
	return all
}

// waitFor polls cond every 5 ms until it holds (nil) or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		sleep(ctx, 5*time.Millisecond)
	}
	return nil
}

// waitOK polls GET /small on t until it answers 200.
func waitOK(ctx context.Context, t *target, timeout time.Duration) error {
	tr := t.transport(false, 1)
	defer tr.CloseIdleConnections()
	var last error
	err := waitFor(ctx, timeout, t.base+" to answer", func() bool {
		last = getOnce(ctx, tr, t.base+"/small")
		return last == nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("%w: %v", err, last)
	}
	return err
}

func ms(d time.Duration) float64 { return d.Seconds() * 1e3 }
