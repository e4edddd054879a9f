package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/webgw/webgw/internal/tunnel"
)

// Tuning of the auto transport.
const (
	// quicProbeTimeout is how long auto waits for a QUIC handshake before it
	// takes UDP as blocked.
	quicProbeTimeout = 1500 * time.Millisecond
	// tcpGrace is how long auto waits for TCP after QUIC answered first:
	// when both work, TCP is preferred (unless the link is lossy).
	tcpGrace = 500 * time.Millisecond
	// reprobeEvery is how often auto tries both transports again instead of
	// going straight to the remembered one.
	reprobeEvery = 5 * time.Minute
	// lossWindow, lossRate and lossMinSegs: TCP is lossy when more than
	// lossRate of the segments sent in the last lossWindow were
	// retransmissions, counted over at least lossMinSegs segments.
	// Measured here (bench/README.md, 10 ms each way): at 1% and 5% packet
	// loss the TCP tunnel carried more requests and far more bulk than
	// QUIC, QUIC only had better tails for tiny answers; at 15% loss TCP
	// still moved 2× the 1 KiB requests, but its p99 for small ones was
	// 2.6× QUIC's. So auto moves to QUIC only on a link that bad.
	lossWindow  = time.Minute
	lossRate    = 0.10
	lossMinSegs = 200
	// tcpSampleEvery is how often a TCP session's counters are read.
	tcpSampleEvery = 10 * time.Second
)

// dialed is one tunnel session just opened.
type dialed struct {
	sess      *tunnel.Session
	transport string       // TransportTCP or TransportQUIC
	tcp       *net.TCPConn // the TCP connection under a tcp session, for its loss counters; nil for quic
}

// dialFunc opens one session to g over one transport (tcp or quic).
type dialFunc func(ctx context.Context, transport string, g *gateway) (*dialed, error)

// dial opens one tunnel session to g over transport: tcp, quic, or auto
// (see dialAuto).
func (a *Agent) dial(ctx context.Context, transport string, g *gateway) (*dialed, error) {
	switch transport {
	case TransportTCP, TransportQUIC:
		return a.dialOne(ctx, transport, g)
	case TransportAuto:
		return a.dialAuto(ctx, g)
	}
	return nil, fmt.Errorf("transport %q not supported", transport)
}

// dialOne dials with a.dialer (tests replace it) or the real transports.
func (a *Agent) dialOne(ctx context.Context, transport string, g *gateway) (*dialed, error) {
	if a.dialer != nil {
		return a.dialer(ctx, transport, g)
	}
	if transport == TransportQUIC {
		return a.dialQUIC(ctx, g)
	}
	return a.dialTCP(ctx, g)
}

// dialQUIC opens a tunnel session to g over QUIC: UDP to the same
// HOST:PORT as TCP, the same TLS settings (ALPN tunnel.ALPN).
func (a *Agent) dialQUIC(ctx context.Context, g *gateway) (*dialed, error) {
	tunnel.QuietQUICBufferWarning()
	dctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	c, err := quic.DialAddr(dctx, g.cfg.Addr, g.tls.Clone(), tunnel.QUICConfig(nil, false))
	if err != nil {
		var ce *tls.CertificateVerificationError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("gateway certificate not trusted (check --ca or --fingerprint): %w", err)
		}
		return nil, fmt.Errorf("dial gateway over quic: %w", err)
	}
	if c.ConnectionState().TLS.NegotiatedProtocol != tunnel.ALPN {
		c.CloseWithError(0, "")
		return nil, fmt.Errorf("gateway does not speak %s over quic (is %s a webgw gateway's HTTPS port?)", tunnel.ALPN, g.cfg.Addr)
	}
	sess, err := tunnel.ClientQUIC(c, nil)
	if err != nil {
		c.CloseWithError(0, "")
		return nil, err
	}
	return &dialed{sess: sess, transport: TransportQUIC}, nil
}

// dialTCP opens a tunnel session to g over TLS on TCP.
func (a *Agent) dialTCP(ctx context.Context, g *gateway) (*dialed, error) {
	d := &net.Dialer{Timeout: a.cfg.DialTimeout, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", g.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial gateway: %w", err)
	}
	conn := tls.Client(raw, g.tls)
	hctx, hcancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	err = conn.HandshakeContext(hctx)
	hcancel()
	if err != nil {
		raw.Close()
		var ce *tls.CertificateVerificationError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("gateway certificate not trusted (check --ca or --fingerprint): %w", err)
		}
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if conn.ConnectionState().NegotiatedProtocol != tunnel.ALPN {
		raw.Close()
		return nil, fmt.Errorf("gateway does not speak %s (is %s a webgw gateway's HTTPS port?)", tunnel.ALPN, g.cfg.Addr)
	}
	sess, err := tunnel.Client(conn, nil)
	if err != nil {
		raw.Close()
		return nil, err
	}
	tcp, _ := raw.(*net.TCPConn)
	return &dialed{sess: sess, transport: TransportTCP, tcp: tcp}, nil
}

// dialAuto picks the transport for g. When it knows what works
// there (learnt in the last reprobeEvery) it dials that, falling back to the
// other; otherwise it races both: QUIC gets quicProbeTimeout to answer (UDP
// may be blocked), and when both work TCP wins unless the link is lossy.
func (a *Agent) dialAuto(ctx context.Context, g *gateway) (*dialed, error) {
	addr := g.cfg.Addr
	pref, probe := a.pick.choice(addr, time.Now())
	if !probe {
		d, err := a.dialOne(ctx, pref, g)
		if err == nil {
			a.pick.result(addr, pref, true)
			return d, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		a.pick.result(addr, pref, false)
		other := TransportTCP
		if pref == TransportTCP {
			other = TransportQUIC
		}
		d, err2 := a.dialOne(ctx, other, g)
		if err2 != nil {
			return nil, fmt.Errorf("%s: %w; %s: %w", pref, err, other, err2)
		}
		a.pick.result(addr, other, true)
		return d, nil
	}
	return a.race(ctx, g, addr)
}

type raced struct {
	transport string
	d         *dialed
	err       error
}

// race dials g over QUIC and TCP at once and keeps one session.
// The loser's dial finishes in its own goroutine, bounded by its timeout,
// records whether that transport works, and closes its session.
func (a *Agent) race(ctx context.Context, g *gateway, addr string) (*dialed, error) {
	a.pick.probed(addr, time.Now())
	var (
		mu      sync.Mutex
		decided bool                  // guarded by mu: later results only record and close
		results = make(chan raced, 2) // sent to under mu, while not decided
	)
	deliver := func(r raced) {
		if ctx.Err() == nil {
			a.pick.result(addr, r.transport, r.err == nil)
		}
		mu.Lock()
		defer mu.Unlock()
		if decided {
			if r.d != nil {
				r.d.sess.Close()
			}
			return
		}
		results <- r
	}
	go func() {
		qctx, cancel := context.WithTimeout(ctx, quicProbeTimeout)
		defer cancel()
		d, err := a.dialOne(qctx, TransportQUIC, g)
		deliver(raced{TransportQUIC, d, err})
	}()
	go func() {
		d, err := a.dialOne(ctx, TransportTCP, g)
		deliver(raced{TransportTCP, d, err})
	}()

	var got []raced
	// finish keeps d (nil: none) and closes every other session dialled.
	finish := func(d *dialed) {
		mu.Lock()
		decided = true
		mu.Unlock()
	drain:
		for {
			select {
			case r := <-results:
				got = append(got, r)
			default:
				break drain
			}
		}
		for _, r := range got {
			if r.d != nil && r.d != d {
				r.d.sess.Close()
			}
		}
	}
	var grace <-chan time.Time
	for {
		select {
		case r := <-results:
			got = append(got, r)
			lossy := a.pick.lossy(addr, time.Now())
			switch {
			case r.err == nil && r.transport == TransportTCP && !lossy,
				r.err == nil && r.transport == TransportQUIC && lossy:
				finish(r.d)
				return r.d, nil
			case r.err == nil && r.transport == TransportQUIC:
				// Both may work: give TCP a moment, as it is preferred.
				grace = time.After(tcpGrace)
			}
			if len(got) == 2 {
				var errs []error
				for _, o := range got {
					if o.err == nil {
						finish(o.d)
						return o.d, nil
					}
					errs = append(errs, fmt.Errorf("%s: %w", o.transport, o.err))
				}
				return nil, errors.Join(errs...)
			}
		case <-grace:
			for _, o := range got {
				if o.err == nil {
					finish(o.d)
					return o.d, nil
				}
			}
		case <-ctx.Done():
			finish(nil)
			return nil, ctx.Err()
		}
	}
}

// picker remembers, per gateway address, which transports worked and how
// lossy TCP has been, for auto. Safe for concurrent use.
type picker struct {
	mu  sync.Mutex
	gws map[string]*linkState // guarded by mu
}

type linkState struct {
	probed        time.Time    // last race of both transports
	tcpOK, quicOK bool         // the last dial of each worked
	samples       []lossSample // TCP counter deltas of the last lossWindow
	// wasLossy is the last verdict drawn from enough samples, at lossyAt.
	// It stands while no TCP session gives new samples (auto moved to
	// QUIC), for reprobeEvery.
	wasLossy bool
	lossyAt  time.Time
}

// lossSample is one reading of a TCP session's counters, as deltas.
type lossSample struct {
	at            time.Time
	retrans, segs uint32
}

func (p *picker) stateLocked(addr string) *linkState {
	if p.gws == nil {
		p.gws = make(map[string]*linkState)
	}
	st := p.gws[addr]
	if st == nil {
		st = &linkState{}
		p.gws[addr] = st
	}
	return st
}

// choice returns the transport to dial addr with, or probe true when both
// should be raced (nothing known, or the last race is reprobeEvery old).
func (p *picker) choice(addr string, now time.Time) (transport string, probe bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.gws[addr]
	if st == nil || st.probed.IsZero() || now.Sub(st.probed) >= reprobeEvery {
		return "", true
	}
	switch {
	case st.quicOK && (!st.tcpOK || st.lossyLocked(now)):
		return TransportQUIC, false
	case st.tcpOK:
		return TransportTCP, false
	case st.quicOK:
		return TransportQUIC, false
	}
	return "", true
}

// probed notes that a race starts now.
func (p *picker) probed(addr string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stateLocked(addr).probed = now
}

// result records whether a dial of transport worked.
func (p *picker) result(addr, transport string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stateLocked(addr)
	if transport == TransportQUIC {
		st.quicOK = ok
	} else {
		st.tcpOK = ok
	}
}

// tcpSample adds a TCP session's counter deltas.
func (p *picker) tcpSample(addr string, retrans, segs uint32, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stateLocked(addr)
	st.samples = append(st.samples, lossSample{at: now, retrans: retrans, segs: segs})
	st.pruneLocked(now)
}

// lossy reports whether TCP to addr lost more than lossRate of its segments
// in the last lossWindow.
func (p *picker) lossy(addr string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.gws[addr]
	return st != nil && st.lossyLocked(now)
}

func (st *linkState) pruneLocked(now time.Time) {
	i := 0
	for i < len(st.samples) && now.Sub(st.samples[i].at) > lossWindow {
		i++
	}
	st.samples = append(st.samples[:0], st.samples[i:]...)
}

func (st *linkState) lossyLocked(now time.Time) bool {
	var retrans, segs uint64
	for _, s := range st.samples {
		if now.Sub(s.at) <= lossWindow {
			retrans += uint64(s.retrans)
			segs += uint64(s.segs)
		}
	}
	if segs >= lossMinSegs {
		st.wasLossy, st.lossyAt = float64(retrans) > lossRate*float64(segs), now
		return st.wasLossy
	}
	return st.wasLossy && now.Sub(st.lossyAt) < reprobeEvery
}

// watchTCP feeds the loss counters of a TCP session's connection to the
// picker until the session ends.
func (a *Agent) watchTCP(sess *tunnel.Session, addr string, c *net.TCPConn) {
	prevRetrans, prevSegs, ok := tcpCounters(c)
	if !ok {
		return
	}
	t := time.NewTicker(tcpSampleEvery)
	defer t.Stop()
	for {
		select {
		case <-sess.CloseChan():
			return
		case now := <-t.C:
			retrans, segs, ok := tcpCounters(c)
			if !ok {
				return
			}
			// The kernel's counters are 32 bits: unsigned deltas survive a wrap.
			a.pick.tcpSample(addr, retrans-prevRetrans, segs-prevSegs, now)
			prevRetrans, prevSegs = retrans, segs
		}
	}
}
