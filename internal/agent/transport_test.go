package agent

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/tunnel"
)

func TestPickerChoice(t *testing.T) {
	const addr = "gw:443"
	now := time.Unix(1_000_000, 0)
	var p picker
	if _, probe := p.choice(addr, now); !probe {
		t.Fatal("nothing known: want a probe")
	}
	p.probed(addr, now)
	p.result(addr, TransportTCP, true)
	p.result(addr, TransportQUIC, true)
	if tr, probe := p.choice(addr, now.Add(time.Minute)); probe || tr != TransportTCP {
		t.Errorf("both work: %q probe=%v, want tcp", tr, probe)
	}
	// A lossy TCP link prefers QUIC.
	p.tcpSample(addr, 2, 100, now.Add(time.Minute-20*time.Second))
	if p.lossy(addr, now.Add(time.Minute)) {
		t.Fatal("2 of 100 segments retransmitted: want not lossy (TCP still wins at 5% loss)")
	}
	p.tcpSample(addr, 15, 100, now.Add(time.Minute))
	p.tcpSample(addr, 15, 100, now.Add(time.Minute+10*time.Second))
	if !p.lossy(addr, now.Add(time.Minute+10*time.Second)) {
		t.Fatal("32 of 300 segments retransmitted: want lossy")
	}
	if tr, _ := p.choice(addr, now.Add(time.Minute+10*time.Second)); tr != TransportQUIC {
		t.Errorf("lossy TCP: %q, want quic", tr)
	}
	// Without new samples (no TCP session) the verdict stands a while...
	if !p.lossy(addr, now.Add(3*time.Minute)) {
		t.Error("lossy verdict forgotten without new samples")
	}
	// ...and TCP is tried again after reprobeEvery.
	if p.lossy(addr, now.Add(time.Minute+10*time.Second+reprobeEvery)) {
		t.Error("still lossy a reprobe period later")
	}
	// New clean samples clear it at once.
	p.tcpSample(addr, 0, 300, now.Add(3*time.Minute))
	if p.lossy(addr, now.Add(3*time.Minute)) {
		t.Error("lossy after 300 clean segments")
	}
	if tr, _ := p.choice(addr, now.Add(3*time.Minute)); tr != TransportTCP {
		t.Errorf("loss gone: %q, want tcp", tr)
	}
	// Few segments say nothing.
	var q picker
	q.tcpSample(addr, 10, 50, now)
	if q.lossy(addr, now) {
		t.Error("lossy after only 50 segments")
	}
	// UDP blocked: TCP only.
	p.result(addr, TransportQUIC, false)
	if tr, _ := p.choice(addr, now.Add(3*time.Minute)); tr != TransportTCP {
		t.Errorf("quic failed: %q, want tcp", tr)
	}
	// TCP blocked: QUIC.
	p.result(addr, TransportTCP, false)
	p.result(addr, TransportQUIC, true)
	if tr, _ := p.choice(addr, now.Add(4*time.Minute)); tr != TransportQUIC {
		t.Errorf("tcp failed: %q, want quic", tr)
	}
	// Now and then both are tried again.
	if _, probe := p.choice(addr, now.Add(reprobeEvery)); !probe {
		t.Error("no probe after reprobeEvery")
	}
	// Nothing works: probe again.
	p.probed(addr, now)
	p.result(addr, TransportQUIC, false)
	if _, probe := p.choice(addr, now.Add(time.Second)); !probe {
		t.Error("neither works: want a probe")
	}
}

// fakeLink is a dialFunc whose transports work, fail or hang as told, and
// that counts dials and keeps the sessions it made.
type fakeLink struct {
	t     *testing.T
	mu    sync.Mutex
	delay map[string]time.Duration // before answering
	fail  map[string]bool
	hang  map[string]bool // until ctx ends (UDP blocked)
	dials map[string]int
	made  []*dialed
}

func newFakeLink(t *testing.T) *fakeLink {
	return &fakeLink{t: t, delay: map[string]time.Duration{}, fail: map[string]bool{}, hang: map[string]bool{}, dials: map[string]int{}}
}

func (f *fakeLink) dial(ctx context.Context, transport string, _ *gateway) (*dialed, error) {
	f.mu.Lock()
	f.dials[transport]++
	delay, fail, hang := f.delay[transport], f.fail[transport], f.hang[transport]
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if fail {
		return nil, errors.New(transport + " refused")
	}
	c1, c2 := net.Pipe()
	f.t.Cleanup(func() { c2.Close() })
	sess, err := tunnel.Client(c1, nil)
	if err != nil {
		return nil, err
	}
	d := &dialed{sess: sess, transport: transport}
	f.mu.Lock()
	f.made = append(f.made, d)
	f.mu.Unlock()
	f.t.Cleanup(func() { sess.Close() })
	return d, nil
}

// others waits until every session made but keep is closed.
func (f *fakeLink) othersClosed(t *testing.T, keep *dialed) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		open := 0
		f.mu.Lock()
		for _, d := range f.made {
			if d != keep && !d.sess.IsClosed() {
				open++
			}
		}
		f.mu.Unlock()
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d losing sessions still open", open)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if keep != nil && keep.sess.IsClosed() {
		t.Error("the kept session is closed")
	}
}

func (f *fakeLink) count(transport string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dials[transport]
}

func autoAgent(t *testing.T, f *fakeLink) *Agent {
	t.Helper()
	a, err := New(&Config{Gateways: []GatewayConfig{{Addr: "gw:443"}}, Services: []ServiceConfig{{Target: "http://127.0.0.1:1"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.dialer = f.dial
	return a
}

func TestAutoTransport(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*fakeLink, *Agent)
		want  string
		max   time.Duration // the dial must take less
	}{
		{"both work, quic first: tcp preferred", func(f *fakeLink, _ *Agent) {
			f.delay[TransportTCP] = 50 * time.Millisecond
		}, TransportTCP, time.Second},
		{"udp blocked: tcp at once", func(f *fakeLink, _ *Agent) {
			f.hang[TransportQUIC] = true
		}, TransportTCP, time.Second},
		{"tcp refused: quic", func(f *fakeLink, _ *Agent) {
			f.fail[TransportTCP] = true
		}, TransportQUIC, time.Second},
		{"tcp hangs: quic after the grace", func(f *fakeLink, _ *Agent) {
			f.hang[TransportTCP] = true
		}, TransportQUIC, time.Second},
		{"lossy tcp: quic", func(f *fakeLink, a *Agent) {
			f.delay[TransportQUIC] = 50 * time.Millisecond
			a.pick.tcpSample("gw:443", 150, 1000, time.Now())
		}, TransportQUIC, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeLink(t)
			a := autoAgent(t, f)
			tt.setup(f, a)
			start := time.Now()
			d, err := a.dial(t.Context(), TransportAuto, a.configured[0])
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if d.transport != tt.want {
				t.Errorf("auto chose %s, want %s", d.transport, tt.want)
			}
			if el := time.Since(start); el > tt.max {
				t.Errorf("auto took %v, want under %v", el, tt.max)
			}
			f.othersClosed(t, d)
		})
	}
}

func TestAutoRemembers(t *testing.T) {
	f := newFakeLink(t)
	f.hang[TransportQUIC] = true // UDP blocked
	a := autoAgent(t, f)
	d, err := a.dial(t.Context(), TransportAuto, a.configured[0])
	if err != nil || d.transport != TransportTCP {
		t.Fatalf("first dial: %v %v, want tcp", d, err)
	}
	// Until the QUIC probe gives up (quicProbeTimeout) QUIC counts as not
	// working, and after it too: later dials go straight to TCP. (The first
	// dial's QUIC attempt runs on its own and may count itself only after
	// that dial returned: wait for it.)
	deadline := time.Now().Add(5 * time.Second)
	for f.count(TransportQUIC) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	quicDials := f.count(TransportQUIC)
	if quicDials == 0 {
		t.Fatal("the first auto dial never tried QUIC")
	}
	for range 3 {
		d, err := a.dial(t.Context(), TransportAuto, a.configured[0])
		if err != nil || d.transport != TransportTCP {
			t.Fatalf("later dial: %v %v, want tcp", d, err)
		}
	}
	if n := f.count(TransportQUIC); n != quicDials {
		t.Errorf("later dials tried QUIC %d more times, want straight to TCP", n-quicDials)
	}
	// The remembered transport failing falls back to the other.
	f.mu.Lock()
	f.fail[TransportTCP] = true
	f.hang[TransportQUIC] = false
	f.mu.Unlock()
	d, err = a.dial(t.Context(), TransportAuto, a.configured[0])
	if err != nil || d.transport != TransportQUIC {
		t.Fatalf("tcp failing: %v %v, want quic", d, err)
	}
	if tr, _ := a.pick.choice("gw:443", time.Now()); tr != TransportQUIC {
		t.Errorf("after the fallback auto prefers %q, want quic", tr)
	}
}

func TestAutoBothFail(t *testing.T) {
	f := newFakeLink(t)
	f.fail[TransportTCP] = true
	f.fail[TransportQUIC] = true
	a := autoAgent(t, f)
	if _, err := a.dial(t.Context(), TransportAuto, a.configured[0]); err == nil {
		t.Fatal("dial worked with both transports failing")
	}
	ctx, cancel := context.WithCancel(t.Context())
	f.hang[TransportTCP] = true
	f.hang[TransportQUIC] = true
	done := make(chan error, 1)
	go func() { _, err := a.dial(ctx, TransportAuto, a.configured[0]); done <- err }()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Error("dial after cancel: nil error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dial did not return after cancel")
	}
}

func TestTCPCounters(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			buf := make([]byte, 1024)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(make([]byte, 64<<10))
	_, segs, ok := tcpCounters(c.(*net.TCPConn))
	if !ok {
		t.Skip("TCP_INFO not available here")
	}
	if segs == 0 {
		t.Error("no segments counted after a write")
	}
}
