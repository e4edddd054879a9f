package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// failure is one request of a load that did not get a 200.
type failure struct {
	id     string // its X-Req header
	method string
	status int // 0 when there was no answer
	err    error
	phase  int32 // the load's phase when it failed
}

func (f failure) String() string {
	return fmt.Sprintf("%s #%s: status %d, err %v", f.method, f.id, f.status, f.err)
}

// load sends requests from workers goroutines, alternating GET and POST
// (with a body), each with a unique X-Req header, until stop.
type load struct {
	ok    atomic.Int64
	phase atomic.Int32 // set by the test, recorded with each failure

	next atomic.Int64
	mu   sync.Mutex
	fail []failure // guarded by mu
	quit chan struct{}
	wg   sync.WaitGroup
}

func startLoad(client *http.Client, url string, workers int) *load {
	l := &load{quit: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.quit:
					return
				default:
				}
				n := l.next.Add(1)
				id := fmt.Sprint(n)
				method, body := http.MethodGet, io.Reader(nil)
				if n%2 == 0 {
					method, body = http.MethodPost, strings.NewReader("payload "+id)
				}
				req, _ := http.NewRequest(method, url, body)
				req.Header.Set("X-Req", id)
				resp, err := client.Do(req)
				status := 0
				if err == nil {
					status = resp.StatusCode
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if status == http.StatusOK {
					l.ok.Add(1)
					continue
				}
				l.mu.Lock()
				l.fail = append(l.fail, failure{id: id, method: method, status: status, err: err, phase: l.phase.Load()})
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// waitOK waits until n more requests than now have succeeded.
func (l *load) waitOK(t testing.TB, n int64, what string) {
	t.Helper()
	from := l.ok.Load()
	waitFor(t, 15*time.Second, what, func() bool { return l.ok.Load() >= from+n })
}

// stop ends the load and returns its failures.
func (l *load) stop() []failure {
	close(l.quit)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fail
}

// split returns the failures of phase with method ("" for any).
func split(fs []failure, phase int32, method string) []failure {
	var out []failure
	for _, f := range fs {
		if f.phase == phase && (method == "" || f.method == method) {
			out = append(out, f)
		}
	}
	return out
}
