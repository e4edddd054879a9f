package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// target is one way to reach the backend.
type target struct {
	key      string
	base     string // scheme://host:port, no trailing slash
	dialAddr string // where to connect, whatever the URL's host
	tlsName  string // SNI and verified name; "" for plain HTTP
	roots    *x509.CertPool
	host     string // Host header for raw requests; "" means dialAddr
	netns    string // network namespace to dial from; "" means this process's
}

// dial connects to dialAddr (from netns when set).
func (t *target) dial(ctx context.Context) (net.Conn, error) {
	if t.netns != "" {
		return dialNetns(ctx, t.netns, t.dialAddr)
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext(ctx, "tcp", t.dialAddr)
}

// transport is a fresh client for conns concurrent keep-alive connections.
func (t *target) transport(h2 bool, conns int) *http.Transport {
	var protos http.Protocols
	switch {
	case !h2:
		protos.SetHTTP1(true)
	case t.tlsName != "":
		protos.SetHTTP2(true)
	default:
		protos.SetUnencryptedHTTP2(true)
	}
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return t.dial(ctx)
		},
		TLSClientConfig:     &tls.Config{RootCAs: t.roots},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Protocols:           &protos,
		ReadBufferSize:      64 << 10,
	}
}

// dialRaw opens one connection (TLS with ALPN http/1.1 when the target is HTTPS).
func (t *target) dialRaw(ctx context.Context) (net.Conn, error) {
	c, err := t.dial(ctx)
	if err != nil || t.tlsName == "" {
		return c, err
	}
	tc := tls.Client(c, &tls.Config{ServerName: t.tlsName, RootCAs: t.roots, NextProtos: []string{"http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// Body sizes the backend serves (see backend.go).
var bodySize = map[string]int64{"/1k": 1024, "/small": int64(len(smallBody))}

type loadResult struct {
	requests  int
	errors    int
	rps       float64
	p50, p99  time.Duration
	cpuUS     float64   // CPU µs per request of the measured processes together
	perUS     []float64 // the same, per measured process
	backendUS float64   // the backend's CPU µs per request
	loadgenUS float64   // this process's CPU µs per request
	// foreignPct is the share of the machine's CPU time that processes other
	// than the harness, the backend and the measured ones used in the window.
	foreignPct float64
}

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// load runs cfg.Conns clients against t's path for warm-up plus duration and
// measures the window after warm-up. measured are the processes whose CPU is
// charged to the target; backend is also read on its own. onMeasure, when
// set, is called as the window opens; the func it returns when it closes.
func (h *harness) load(ctx context.Context, t *target, path string, measured []*proc, backend *proc, onMeasure func() func()) (*loadResult, error) {
	want := bodySize[path]
	tr := t.transport(h.cfg.H2, h.cfg.Conns)
	defer tr.CloseIdleConnections()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var phase atomic.Int32
	type worker struct {
		lat    []time.Duration
		errors int
		err    error // first error, for the message
	}
	expect := int(h.cfg.Duration.Seconds()*50000/float64(h.cfg.Conns)) + 16
	workers := make([]worker, h.cfg.Conns)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		w.lat = make([]time.Duration, 0, min(expect, 1<<20))
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := http.NewRequestWithContext(lctx, "GET", t.base+path, nil)
			if err != nil {
				w.err = err
				return
			}
			buf := make([]byte, 16<<10)
			for phase.Load() != phaseStop && lctx.Err() == nil {
				t0 := time.Now()
				resp, err := tr.RoundTrip(req)
				var n int64
				if err == nil {
					n, err = io.CopyBuffer(writerOnly{io.Discard}, resp.Body, buf)
					resp.Body.Close()
					if err == nil && (resp.StatusCode != http.StatusOK || n != want) {
						err = fmt.Errorf("status %d, %d body bytes (want 200, %d)", resp.StatusCode, n, want)
					}
				}
				d := time.Since(t0)
				if phase.Load() != phaseMeasure {
					continue
				}
				if err != nil {
					if lctx.Err() != nil {
						return
					}
					w.errors++
					if w.err == nil {
						w.err = err
					}
					continue
				}
				w.lat = append(w.lat, d)
			}
		}()
	}

	procs := append(append(append([]*proc(nil), measured...), backend), h.extra...)
	sleep(ctx, h.cfg.Warmup)
	cpu0, err0 := cpuOf(procs)
	self0, err1 := cpuTicks(selfPID)
	busy0, total0, err4 := machineTicks()
	t0 := time.Now()
	phase.Store(phaseMeasure)
	var done func()
	if onMeasure != nil {
		done = onMeasure()
	}
	sleep(ctx, h.cfg.Duration)
	cpu1, err2 := cpuOf(procs)
	self1, err3 := cpuTicks(selfPID)
	busy1, total1, err5 := machineTicks()
	elapsed := time.Since(t0)
	phase.Store(phaseStop)
	if done != nil {
		done()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := errors.Join(err0, err1, err2, err3, err4, err5); err != nil {
		return nil, err
	}

	r := &loadResult{}
	var lat []time.Duration
	var firstErr error
	for i := range workers {
		lat = append(lat, workers[i].lat...)
		r.errors += workers[i].errors
		if firstErr == nil {
			firstErr = workers[i].err
		}
	}
	r.requests = len(lat)
	if r.requests == 0 {
		return nil, fmt.Errorf("no request succeeded in %s (%d errors; first: %v)", h.cfg.Duration, r.errors, firstErr)
	}
	slices.Sort(lat)
	r.rps = float64(r.requests) / elapsed.Seconds()
	r.p50 = lat[len(lat)*50/100]
	r.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	perReq := func(ticks int64) float64 { return float64(ticks) * (1e6 / clkTck) / float64(r.requests) }
	for i := range measured {
		us := perReq(cpu1[i] - cpu0[i])
		r.perUS = append(r.perUS, us)
		r.cpuUS += us
	}
	r.backendUS = perReq(cpu1[len(measured)] - cpu0[len(measured)])
	r.loadgenUS = perReq(self1 - self0)
	// What the machine did beyond this run's processes: other work competing
	// for the same cores (tests of other engineers, say).
	ours := self1 - self0
	for i := range procs {
		ours += cpu1[i] - cpu0[i]
	}
	if total1 > total0 {
		r.foreignPct = max(0, float64(busy1-busy0-ours)) * 100 / float64(total1-total0)
	}
	return r, nil
}

type bulkResult struct {
	mibps      float64
	cpuSPerGiB float64 // CPU seconds per GiB of the measured processes
}

// bulk downloads size bytes in one response.
func (h *harness) bulk(ctx context.Context, t *target, measured []*proc, size int64) (*bulkResult, error) {
	tr := t.transport(h.cfg.H2, 1)
	defer tr.CloseIdleConnections()
	// A small request first, so the connection (and its TLS handshake) is not timed.
	if err := getOnce(ctx, tr, t.base+"/small"); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "GET", t.base+"/bulk?n="+strconv.FormatInt(size, 10), nil)
	if err != nil {
		return nil, err
	}
	cpu0, err := cpuOf(measured)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	n, err := io.CopyBuffer(writerOnly{io.Discard}, resp.Body, make([]byte, 256<<10))
	resp.Body.Close()
	elapsed := time.Since(t0)
	if err != nil {
		return nil, fmt.Errorf("read body: %w after %d bytes", err, n)
	}
	if resp.StatusCode != http.StatusOK || n != size {
		return nil, fmt.Errorf("status %s, %d bytes (want 200, %d)", resp.Status, n, size)
	}
	cpu1, err := cpuOf(measured)
	if err != nil {
		return nil, err
	}
	var ticks int64
	for i := range measured {
		ticks += cpu1[i] - cpu0[i]
	}
	gib := float64(size) / (1 << 30)
	return &bulkResult{
		mibps:      float64(size) / (1 << 20) / elapsed.Seconds(),
		cpuSPerGiB: float64(ticks) / clkTck / gib,
	}, nil
}

func getOnce(ctx context.Context, tr http.RoundTripper, u string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

type idleResult struct {
	total float64   // KB per held connection, measured processes together
	per   []float64 // KB per held connection, per measured process
}

// idle opens cfg.IdleConns keep-alive connections to t, makes one request on
// each and holds them idle, and reports the growth of the measured
// processes' RSS per connection. whileHeld, when set, runs after the
// measurement while the connections are still held.
func (h *harness) idle(ctx context.Context, t *target, measured []*proc, whileHeld func()) (*idleResult, error) {
	n := h.cfg.IdleConns
	sleep(ctx, 200*time.Millisecond) // let start-up work finish
	before, err := rssOf(measured)
	if err != nil {
		return nil, err
	}
	host := t.host
	if host == "" {
		host = t.dialAddr
	}
	request := []byte("GET /small HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: webgw-bench\r\n\r\n")

	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	const openers = 16
	for range openers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := openIdle(ctx, t, request)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("connection %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sleep(ctx, 300*time.Millisecond) // let the servers finish their bookkeeping
	after, err := rssOf(measured)
	if err != nil {
		return nil, err
	}
	r := &idleResult{}
	for i := range measured {
		kb := float64(after[i]-before[i]) / float64(n)
		r.per = append(r.per, kb)
		r.total += kb
	}
	if whileHeld != nil {
		whileHeld()
	}
	return r, nil
}

// openIdle connects, makes one request, reads the whole response and returns
// the connection, now idle.
func openIdle(ctx context.Context, t *target, request []byte) (net.Conn, error) {
	c, err := t.dialRaw(ctx)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(request); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || n != int64(len(smallBody)) || resp.Close {
		c.Close()
		return nil, fmt.Errorf("response %s, %d bytes, close=%v, err %v", resp.Status, n, resp.Close, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func rssOf(ps []*proc) ([]int64, error) {
	out := make([]int64, len(ps))
	for i, p := range ps {
		kb, err := rssKB(p.pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		out[i] = kb
	}
	return out, nil
}

// writerOnly hides io.Discard's ReadFrom, so copies use the caller's buffer.
type writerOnly struct{ io.Writer }

// selfPID is this process, the load generator.
var selfPID = os.Getpid()

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
