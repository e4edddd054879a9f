package tunnel

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// A transport makes a connected pair of conns: the agent's end and the
// gateway's end. Every session test runs over each of them, and over QUIC
// (quicTransport, which has no pair; see quic_test.go).
type transport struct {
	name string
	pair func(tb testing.TB) (agent, gateway net.Conn) // nil for QUIC
}

var transports = []transport{
	{"pipe", pipePair},
	{"tcp", tcpPair},
	{"tls", tlsPair},
}

func pipePair(tb testing.TB) (net.Conn, net.Conn) {
	a, g := net.Pipe()
	tb.Cleanup(func() { a.Close(); g.Close() })
	return a, g
}

func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		a.Close()
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

var testCert = sync.OnceValues(func() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gateway.test"},
		DNSNames:              []string{"gateway.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
})

// tlsPair is TLS 1.3 over loopback TCP, negotiating ALPN as agents and the
// gateway do; the agent verifies the gateway's self-signed certificate.
func tlsPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	cert, err := testCert()
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	ra, rg := tcpPair(tb)
	a := tls.Client(ra, &tls.Config{
		RootCAs: roots, ServerName: "gateway.test", NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13,
	})
	g := tls.Server(rg, &tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13,
	})
	errc := make(chan error, 1)
	go func() { errc <- g.Handshake() }()
	if err := a.Handshake(); err != nil {
		tb.Fatalf("agent handshake: %v", err)
	}
	if err := <-errc; err != nil {
		tb.Fatalf("gateway handshake: %v", err)
	}
	if st := a.ConnectionState(); st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != ALPN {
		tb.Fatalf("negotiated TLS %x, ALPN %q", st.Version, st.NegotiatedProtocol)
	}
	tb.Cleanup(func() { a.Close(); g.Close() })
	return a, g
}

// sessionPair runs an agent (client) and gateway (server) session over tr.
// Over QUIC the conns are nil.
func sessionPair(tb testing.TB, tr transport, cfg *Config) (agent, gateway *Session, agentConn, gatewayConn net.Conn) {
	tb.Helper()
	if tr.pair == nil {
		agent, gateway, _ = quicSessions(tb, cfg, nil)
		return agent, gateway, nil, nil
	}
	ac, gc := tr.pair(tb)
	agent, err := Client(ac, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	gateway, err = Server(gc, cfg)
	if err != nil {
		agent.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { gateway.Close(); agent.Close() })
	return agent, gateway, ac, gc
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// closed reports whether ch is closed within d.
func closed(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// echo accepts streams on s and echoes each until its EOF, then closes it.
func echo(s *Session) {
	for {
		st, err := s.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(st, st)
			st.Close()
		}()
	}
}

// sendRandom writes n pseudo-random bytes from seed to w, in pieces of
// varied sizes.
func sendRandom(w io.Writer, seed uint64, n int) error {
	src := mrand.NewChaCha8(seedBytes(seed))
	sizes := mrand.New(mrand.NewPCG(seed, 1))
	buf := make([]byte, 64<<10)
	for n > 0 {
		k := min(n, 1+sizes.IntN(len(buf)))
		src.Read(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// checkRandom reads r to EOF and checks it is exactly what sendRandom(seed, n) wrote.
func checkRandom(r io.Reader, seed uint64, n int) error {
	src := mrand.NewChaCha8(seedBytes(seed))
	buf := make([]byte, 48<<10)
	want := make([]byte, len(buf))
	got := 0
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if got+k > n {
				return fmt.Errorf("got more than %d bytes", n)
			}
			src.Read(want[:k])
			if !bytes.Equal(buf[:k], want[:k]) {
				return fmt.Errorf("bytes %d-%d differ", got, got+k)
			}
			got += k
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read after %d bytes: %w", got, err)
		}
	}
	if got != n {
		return fmt.Errorf("got %d bytes, want %d", got, n)
	}
	return nil
}

func seedBytes(seed uint64) (s [32]byte) {
	binary.LittleEndian.PutUint64(s[:], seed)
	return s
}

func TestSessionConcurrentEcho(t *testing.T) {
	const streams, size = 100, 1 << 20
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, nil)
			go echo(agent)
			var wg sync.WaitGroup
			for i := range streams {
				wg.Go(func() {
					st, err := gw.Open()
					if err != nil {
						t.Errorf("stream %d: open: %v", i, err)
						return
					}
					defer st.Close()
					werr := make(chan error, 1)
					go func() {
						err := sendRandom(st, uint64(i), size)
						if err == nil {
							err = st.(interface{ CloseWrite() error }).CloseWrite()
						}
						werr <- err
					}()
					if err := checkRandom(st, uint64(i), size); err != nil {
						t.Errorf("stream %d: %v", i, err)
					}
					if err := <-werr; err != nil {
						t.Errorf("stream %d: write: %v", i, err)
					}
				})
			}
			wg.Wait()
			// Both ends have closed every data stream.
			if !waitFor(5*time.Second, func() bool { return gw.NumStreams() == 0 && agent.NumStreams() == 0 }) {
				t.Errorf("streams left open: gateway %d, agent %d", gw.NumStreams(), agent.NumStreams())
			}
		})
	}
}

// TestSessionHalfClose: a stream's Close (and CloseWrite, the same) ends
// only the sending direction. The peer reads every byte and then EOF, and
// can still answer; the closer still reads the answer to its EOF.
func TestSessionHalfClose(t *testing.T) {
	const reqLen, respLen = 300 << 10, 200 << 10
	for _, tr := range sessionTransports {
		for _, dir := range []string{"gateway opens", "agent opens"} {
			t.Run(tr.name+"/"+dir, func(t *testing.T) {
				agent, gw, _, _ := sessionPair(t, tr, nil)
				opener, acceptor := gw, agent
				if dir == "agent opens" {
					opener, acceptor = agent, gw
				}
				c, err := opener.Open()
				if err != nil {
					t.Fatal(err)
				}
				// Until the peer accepts, a stream may send only yamux's
				// initial window (256 KiB), and the request is larger; over
				// QUIC the peer sees the stream only with its first bytes. So
				// the request is sent while the acceptor accepts.
				werr := make(chan error, 1)
				go func() {
					err := sendRandom(c, 1, reqLen)
					if err == nil {
						if err = c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
							err = fmt.Errorf("CloseWrite: %w", err)
						}
					}
					if err == nil {
						if _, werr := c.Write([]byte("x")); werr == nil {
							err = errors.New("Write after CloseWrite succeeded")
						}
					}
					werr <- err
				}()
				s, err := acceptor.Accept()
				if err != nil {
					t.Fatal(err)
				}
				if err := checkRandom(s, 1, reqLen); err != nil {
					t.Fatalf("acceptor reading the request: %v", err)
				}
				if err := <-werr; err != nil {
					t.Fatal(err)
				}
				// EOF is sticky.
				if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
					t.Errorf("Read after EOF = %d, %v; want 0, EOF", n, err)
				}
				go func() {
					sendRandom(s, 2, respLen)
					s.Close()
				}()
				if err := checkRandom(c, 2, respLen); err != nil {
					t.Fatalf("opener reading the response after its CloseWrite: %v", err)
				}
				c.Close()
				if !waitFor(5*time.Second, func() bool { return opener.NumStreams() == 0 && acceptor.NumStreams() == 0 }) {
					t.Errorf("stream not freed after both closed: %d, %d", opener.NumStreams(), acceptor.NumStreams())
				}
			})
		}
	}
}

// TestSessionLargeWrite: one Write of the whole window (and more) arrives intact.
func TestSessionLargeWrite(t *testing.T) {
	for _, tr := range sessionTransports {
		for _, size := range []int{8 << 20, 8<<20 + 1} {
			t.Run(fmt.Sprintf("%s/%d", tr.name, size), func(t *testing.T) {
				agent, gw, _, _ := sessionPair(t, tr, nil)
				data := make([]byte, size)
				mrand.NewChaCha8(seedBytes(uint64(size))).Read(data)
				c, err := gw.Open()
				if err != nil {
					t.Fatal(err)
				}
				werr := make(chan error, 1)
				go func() {
					n, err := c.Write(data)
					if err == nil && n != len(data) {
						err = fmt.Errorf("short write %d", n)
					}
					werr <- err
				}()
				s, err := agent.Accept()
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, size)
				if _, err := io.ReadFull(s, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Error("data differs")
				}
				if err := <-werr; err != nil {
					t.Fatalf("Write: %v", err)
				}
			})
		}
	}
}

func TestSessionClose(t *testing.T) {
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, nil)
			var gws, ags []net.Conn
			for range 3 {
				c, err := gw.Open()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.Write([]byte("hi")); err != nil {
					t.Fatal(err)
				}
				s, err := agent.Accept()
				if err != nil {
					t.Fatal(err)
				}
				gws, ags = append(gws, c), append(ags, s)
			}
			// Readers blocked on both ends of every stream.
			readErrs := make(chan error, 6)
			for _, c := range append(append([]net.Conn{}, gws...), ags...) {
				go func() {
					_, err := io.Copy(io.Discard, c)
					if err == nil {
						err = io.EOF
					}
					readErrs <- err
				}()
			}
			accepted := make(chan error, 1)
			go func() {
				_, err := gw.Accept()
				accepted <- err
			}()

			if err := gw.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := gw.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if !gw.IsClosed() || !closed(gw.CloseChan(), time.Second) {
				t.Error("gateway session not closed after Close")
			}
			select {
			case err := <-accepted:
				if err != ErrSessionClosed {
					t.Errorf("blocked Accept returned %v, want ErrSessionClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("blocked Accept did not return after Close")
			}
			if _, err := gw.Accept(); err != ErrSessionClosed {
				t.Errorf("Accept after Close = %v, want ErrSessionClosed", err)
			}
			if _, err := gw.Open(); err != ErrSessionClosed {
				t.Errorf("Open after Close = %v, want ErrSessionClosed", err)
			}
			for i := range 6 {
				select {
				case <-readErrs:
				case <-time.After(5 * time.Second):
					t.Fatalf("only %d of 6 stream readers ended after Close", i)
				}
			}
			for _, c := range gws {
				if _, err := c.Write([]byte("x")); err == nil {
					t.Error("stream Write after session Close succeeded")
				}
			}
			// The agent sees its connection end: its session closes too.
			if !closed(agent.CloseChan(), 5*time.Second) {
				t.Fatal("agent session still open after the gateway closed")
			}
			if _, err := agent.Accept(); !errors.Is(err, ErrSessionClosed) {
				t.Errorf("agent Accept = %v, want ErrSessionClosed", err)
			}
			if _, err := agent.Open(); !errors.Is(err, ErrSessionClosed) {
				t.Errorf("agent Open = %v, want ErrSessionClosed", err)
			}
		})
	}
}

// TestSessionConnDies: when the peer's connection goes away under its
// session (process killed, network cut with a reset), the session ends.
func TestSessionConnDies(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, gc := sessionPair(t, tr, nil)
			c, err := gw.Open()
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("x"))
			s, err := agent.Accept()
			if err != nil {
				t.Fatal(err)
			}
			readErr := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, s)
				readErr <- err
			}()
			gc.Close() // under the gateway's session, which does not get to say goodbye
			if !closed(agent.CloseChan(), 5*time.Second) {
				t.Fatal("agent session still open 5 s after the gateway's conn died")
			}
			if !closed(gw.CloseChan(), 5*time.Second) {
				t.Fatal("gateway session still open 5 s after its conn died")
			}
			select {
			case <-readErr:
			case <-time.After(5 * time.Second):
				t.Fatal("stream read did not end")
			}
			if _, err := agent.Accept(); !errors.Is(err, ErrSessionClosed) {
				t.Errorf("Accept = %v, want ErrSessionClosed", err)
			}
		})
	}
}

// TestSessionKeepalive: a peer that stops answering (its end is not read at
// all, so the pings stay in flight) is declared dead.
func TestSessionKeepalive(t *testing.T) {
	ac, _ := pipePair(t)
	cfg := &Config{KeepAliveInterval: 20 * time.Millisecond, PingTimeout: 50 * time.Millisecond}
	agent, err := Client(ac, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if !closed(agent.CloseChan(), 5*time.Second) {
		t.Fatal("session to a silent peer still open after 5 s")
	}
	if _, err := agent.Accept(); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Accept = %v, want ErrSessionClosed", err)
	}
}

func TestSessionPing(t *testing.T) {
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, nil)
			for _, s := range []*Session{agent, gw} {
				if rtt, err := s.Ping(); err != nil || rtt <= 0 {
					t.Errorf("Ping = %v, %v", rtt, err)
				}
				if s.RemoteAddr() == nil {
					t.Error("no RemoteAddr")
				}
			}
		})
	}
}

// TestSessionCloseBlockedPeer: Close returns soon even when the peer has
// stopped reading and the connection cannot take the pending frames.
func TestSessionCloseBlockedPeer(t *testing.T) {
	ac, _ := pipePair(t) // nobody reads the other end
	agent, err := Client(ac, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agent.Open()
	if err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	c.Write(make([]byte, 64<<10))
	start := time.Now()
	done := make(chan struct{})
	go func() {
		agent.Close()
		close(done)
	}()
	if !closed(done, 3*time.Second) {
		t.Fatal("Close hangs on a peer that does not read")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
}

// TestSessionNoLeak: after both ends close, every goroutine of the sessions
// (yamux's loops, keepalive, the batch flusher) and of their streams is gone.
func TestSessionNoLeak(t *testing.T) {
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			func() {
				var agent, gw *Session
				var closeConns func()
				if tr.pair == nil {
					agent, gw, closeConns = quicSessions(t, nil, nil)
				} else {
					ac, gc := tr.pair(t)
					var err error
					if agent, err = Client(ac, nil); err != nil {
						t.Fatal(err)
					}
					if gw, err = Server(gc, nil); err != nil {
						t.Fatal(err)
					}
					closeConns = func() { ac.Close(); gc.Close() }
				}
				go echo(agent)
				// Half the streams end cleanly; the rest are still open,
				// with a reader waiting, when the sessions close.
				var ended, open sync.WaitGroup
				for i := range 20 {
					c, err := gw.Open()
					if err != nil {
						t.Fatal(err)
					}
					wg := &open
					if i%2 == 0 {
						wg = &ended
					}
					wg.Go(func() {
						sendRandom(c, uint64(i), 100<<10)
						if i%2 == 0 {
							c.Close()
						}
						checkRandom(c, uint64(i), 100<<10)
					})
				}
				ended.Wait()
				if !waitFor(5*time.Second, func() bool { return agent.NumStreams() == 10 && gw.NumStreams() == 10 }) {
					t.Errorf("streams open: agent %d, gateway %d; want 10", agent.NumStreams(), gw.NumStreams())
				}
				gw.Close()
				agent.Close()
				open.Wait()
				closeConns()
			}()
			if !waitFor(5*time.Second, func() bool { return runtime.NumGoroutine() <= before }) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	for _, cfg := range []*Config{nil, {}} {
		y := cfg.yamux()
		// The session runs the keepalive itself, not yamux.
		if y.MaxStreamWindowSize != 8<<20 || y.KeepAliveInterval != 5*time.Second ||
			y.ConnectionWriteTimeout != 10*time.Second || y.AcceptBacklog != 1024 ||
			y.StreamOpenTimeout != 10*time.Second || y.StreamCloseTimeout != 10*time.Minute ||
			y.EnableKeepAlive || y.LogOutput != io.Discard {
			t.Errorf("defaults for %#v: %+v", cfg, y)
		}
		if d := cfg.complete(); d.PingTimeout != 5*time.Second || d.KeepAliveInterval != 5*time.Second {
			t.Errorf("keepalive defaults for %#v: %+v", cfg, d)
		}
	}
	y := (&Config{
		MaxStreamWindow: 1 << 20, KeepAliveInterval: time.Second, WriteTimeout: 2 * time.Second,
		AcceptBacklog: 7, OpenTimeout: 3 * time.Second, HalfCloseTimeout: 4 * time.Second,
	}).yamux()
	if y.MaxStreamWindowSize != 1<<20 || y.KeepAliveInterval != time.Second ||
		y.ConnectionWriteTimeout != 2*time.Second || y.AcceptBacklog != 7 || y.StreamOpenTimeout != 3*time.Second ||
		y.StreamCloseTimeout != 4*time.Second {
		t.Errorf("overrides not applied: %+v", y)
	}
}

func TestConfigInvalid(t *testing.T) {
	ac, gc := pipePair(t)
	// yamux refuses a window below its initial 256 KiB.
	if s, err := Client(ac, &Config{MaxStreamWindow: 1024}); err == nil {
		s.Close()
		t.Error("Client accepted a 1 KiB window")
	}
	if s, err := Server(gc, &Config{AcceptBacklog: -1}); err == nil {
		s.Close()
		t.Error("Server accepted a negative backlog")
	}
}

// TestBatchConnConcurrentWriters: many writers, writes of all sizes (some
// larger than the batch limit): each Write arrives whole and in order.
func TestBatchConnConcurrentWriters(t *testing.T) {
	const writers, records = 8, 150
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			w, r := tr.pair(t)
			bc := newBatchConn(w)
			defer bc.Close()
			size := func(id, seq int) int {
				if seq%50 == 49 {
					return batchMax + 50<<10 + id
				}
				return 1 + (id*7919+seq*104729)%3000
			}
			total := 0
			for id := range writers {
				for seq := range records {
					total += 9 + size(id, seq)
				}
			}
			readDone := make(chan error, 1)
			go func() {
				next := make([]int, writers)
				hdr := make([]byte, 9)
				buf := make([]byte, 2*batchMax)
				for n := 0; n < total; {
					if _, err := io.ReadFull(r, hdr); err != nil {
						readDone <- fmt.Errorf("after %d bytes: %w", n, err)
						return
					}
					id, seq, l := int(hdr[0]), int(binary.BigEndian.Uint32(hdr[1:])), int(binary.BigEndian.Uint32(hdr[5:]))
					if id >= writers || seq != next[id] || l != size(id, seq) {
						readDone <- fmt.Errorf("after %d bytes: record writer %d seq %d len %d, want seq %d", n, id, seq, l, next[id])
						return
					}
					next[id]++
					if _, err := io.ReadFull(r, buf[:l]); err != nil {
						readDone <- err
						return
					}
					for i, c := range buf[:l] {
						if c != byte(id+seq+i) {
							readDone <- fmt.Errorf("writer %d record %d: byte %d is %d", id, seq, i, c)
							return
						}
					}
					n += 9 + l
				}
				readDone <- nil
			}()
			var wg sync.WaitGroup
			for id := range writers {
				wg.Go(func() {
					for seq := range records {
						l := size(id, seq)
						rec := make([]byte, 9+l)
						rec[0] = byte(id)
						binary.BigEndian.PutUint32(rec[1:], uint32(seq))
						binary.BigEndian.PutUint32(rec[5:], uint32(l))
						for i := range l {
							rec[9+i] = byte(id + seq + i)
						}
						if n, err := bc.Write(rec); err != nil || n != len(rec) {
							t.Errorf("writer %d: Write = %d, %v", id, n, err)
							return
						}
					}
				})
			}
			wg.Wait()
			select {
			case err := <-readDone:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("reader did not get every record")
			}
		})
	}
}

// TestBatchConnCloseFlushes: bytes written just before Close reach a peer
// that reads, then the peer sees EOF.
func TestBatchConnCloseFlushes(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			w, r := tr.pair(t)
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(r)
				got <- b
			}()
			bc := newBatchConn(w)
			want := bytes.Repeat([]byte("goodbye "), 100<<10)
			if _, err := bc.Write(want); err != nil {
				t.Fatal(err)
			}
			bc.Close()
			if b := <-got; !bytes.Equal(b, want) {
				t.Errorf("peer read %d bytes, want %d", len(b), len(want))
			}
		})
	}
}

func TestBatchConnWriteAfterClose(t *testing.T) {
	w, r := pipePair(t)
	go io.Copy(io.Discard, r)
	bc := newBatchConn(w)
	if _, err := bc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := bc.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if n, err := bc.Write([]byte("y")); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %d, %v; want 0, net.ErrClosed", n, err)
	}
	if err := bc.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestBatchConnCloseBlockedPeer: with the peer not reading, the flusher is
// stuck in a write and a writer waits for room; Close still returns in about
// closeFlushWait, and both the writer and the flusher end.
func TestBatchConnCloseBlockedPeer(t *testing.T) {
	w, _ := pipePair(t) // nobody reads
	bc := newBatchConn(w)
	werr := make(chan error, 1)
	go func() {
		_, err := bc.Write(make([]byte, 3*batchMax))
		werr <- err
	}()
	// Wait until the writer is stuck: a full buffer behind a blocked flush.
	if !waitFor(5*time.Second, func() bool {
		bc.mu.Lock()
		defer bc.mu.Unlock()
		return len(bc.buf) >= batchMax
	}) {
		t.Fatal("buffer never filled")
	}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		bc.Close()
		close(done)
	}()
	if !closed(done, 3*time.Second) {
		t.Fatal("Close hangs on a peer that does not read")
	}
	if d := time.Since(start); d > closeFlushWait+time.Second {
		t.Errorf("Close took %v", d)
	}
	select {
	case err := <-werr:
		if err == nil {
			t.Error("blocked Write succeeded although nothing was read")
		}
	case <-time.After(time.Second):
		t.Error("blocked writer still waiting after Close")
	}
	if !closed(bc.flushed, time.Second) {
		t.Error("flusher still running after Close")
	}
}

// failConn fails every write after the first.
type failConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

var errBroken = errors.New("broken pipe")

func (c *failConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	if c.writes > 1 {
		return 0, errBroken
	}
	return len(p), nil
}

func TestBatchConnStickyError(t *testing.T) {
	w, _ := pipePair(t)
	fc := &failConn{Conn: w}
	bc := newBatchConn(fc)
	defer bc.Close()
	bc.Write([]byte("first"))
	// The flusher writes asynchronously: keep writing until its error shows.
	var err error
	if !waitFor(5*time.Second, func() bool {
		_, err = bc.Write([]byte("more"))
		return err != nil
	}) {
		t.Fatal("write error never reported")
	}
	if !errors.Is(err, errBroken) {
		t.Fatalf("Write = %v, want the conn's error", err)
	}
	if _, err := bc.Write([]byte("again")); !errors.Is(err, errBroken) {
		t.Errorf("later Write = %v, want the same error", err)
	}
	if !closed(bc.flushed, time.Second) {
		t.Error("flusher still running after a write error")
	}
	// The flusher closed the conn, so a blocked reader ends too.
	if _, err := w.Read(make([]byte, 1)); err == nil {
		t.Error("conn still readable after a write error")
	}
}

// TestSessionHeaderBeforeAccept: the gateway writes each stream's header
// right after Open, before the agent accepts; every stream and its header
// arrive.
func TestSessionHeaderBeforeAccept(t *testing.T) {
	const streams = 20
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, nil)
			for i := range streams {
				c, err := gw.Open()
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if err := WriteHeader(c, &Header{Kind: KindTCP, Service: fmt.Sprintf("svc%d", i)}); err != nil {
					t.Fatal(err)
				}
			}
			seen := map[string]bool{}
			for range streams {
				s, err := agent.Accept()
				if err != nil {
					t.Fatal(err)
				}
				s.SetReadDeadline(time.Now().Add(5 * time.Second))
				h, err := ReadHeader(s)
				if err != nil {
					t.Fatal(err)
				}
				seen[h.Service] = true
				s.Close()
			}
			if len(seen) != streams {
				t.Errorf("got %d distinct headers, want %d", len(seen), streams)
			}
		})
	}
}

// TestSessionBacklog: with AcceptBacklog streams waiting at the acceptor,
// the next Open waits until one is taken care of, then succeeds.
func TestSessionBacklog(t *testing.T) {
	const backlog = 4
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, &Config{AcceptBacklog: backlog})
			var opened []net.Conn
			for i := range backlog {
				c, err := gw.Open()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				opened = append(opened, c)
			}
			type res struct {
				c   net.Conn
				err error
			}
			next := make(chan res, 1)
			go func() {
				c, err := gw.Open()
				if err == nil {
					_, err = c.Write([]byte{backlog})
				}
				next <- res{c, err}
			}()
			select {
			case r := <-next:
				t.Fatalf("Open beyond the backlog did not wait: %v", r.err)
			case <-time.After(100 * time.Millisecond):
			}
			// The agent takes the first stream and both ends finish it.
			s, err := agent.Accept()
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			opened[0].Close()
			var r res
			select {
			case r = <-next:
				if r.err != nil {
					t.Fatalf("Open after the backlog freed: %v", r.err)
				}
				defer r.c.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("Open still waiting after a stream was accepted and closed")
			}
			got := map[byte]bool{}
			for range backlog {
				s, err := agent.Accept()
				if err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 1)
				if _, err := io.ReadFull(s, b); err != nil {
					t.Fatal(err)
				}
				got[b[0]] = true
				s.Close()
			}
			for i := 1; i <= backlog; i++ {
				if !got[byte(i)] {
					t.Errorf("stream %d not accepted; got %v", i, got)
				}
			}
		})
	}
}

func TestSessionTransport(t *testing.T) {
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, nil)
			want := "tcp"
			if tr.pair == nil {
				want = "quic"
			}
			if agent.Transport() != want || gw.Transport() != want {
				t.Errorf("Transport = %q, %q; want %q", agent.Transport(), gw.Transport(), want)
			}
		})
	}
}

// TestSessionHalfCloseTimeout: a stream closed for writing whose peer never
// ends its own direction is freed after HalfCloseTimeout.
func TestSessionHalfCloseTimeout(t *testing.T) {
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, &Config{HalfCloseTimeout: 100 * time.Millisecond})
			c, err := gw.Open()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			s, err := agent.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			// The agent reads the request and its EOF but never answers.
			if b, err := io.ReadAll(s); err != nil || string(b) != "x" {
				t.Fatalf("agent read %q, %v", b, err)
			}
			if !waitFor(5*time.Second, func() bool { return gw.NumStreams() == 0 }) {
				t.Fatalf("half-closed stream not freed: %d streams", gw.NumStreams())
			}
			// The opener's reader is told the stream is gone.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("Read on the timed-out stream = %v, want a reset", err)
			}
		})
	}
}

// TestSessionReadDeadline: a Read that times out leaves the stream usable.
func TestSessionReadDeadline(t *testing.T) {
	for _, tr := range sessionTransports {
		t.Run(tr.name, func(t *testing.T) {
			agent, gw, _, _ := sessionPair(t, tr, nil)
			c, err := gw.Open()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			s, err := agent.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			var ne net.Error
			if _, err := c.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("Read past the deadline = %v, want a timeout", err)
			}
			c.SetReadDeadline(time.Time{})
			if _, err := s.Write([]byte("y")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'y' {
				t.Fatalf("Read after the deadline was cleared = %q, %v", b, err)
			}
			if n := gw.NumStreams(); n != 1 {
				t.Errorf("NumStreams = %d after a read timeout, want 1", n)
			}
		})
	}
}

// slowConn writes at most chunk bytes per tick: a slow uplink.
type slowConn struct {
	net.Conn
	chunk int
	tick  time.Duration
}

func (c slowConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), c.chunk)
		time.Sleep(c.tick) // the link's pace, not a wait for readiness
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// TestKeepaliveBehindQueuedData: on a slow link a ping's answer waits behind
// the data queued before it, longer than PingTimeout; the session lives on
// while that data keeps arriving.
func TestKeepaliveBehindQueuedData(t *testing.T) {
	a, b := tcpPair(t)
	cfg := &Config{KeepAliveInterval: 30 * time.Millisecond, PingTimeout: 130 * time.Millisecond}
	gw, err := Server(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	// The agent's side sends at 32 KiB per 20 ms (1.6 MB/s): 256 KiB
	// queued ahead of a ping answer take 160 ms to drain, more than
	// PingTimeout, while each 64 KiB write takes 40 ms.
	ag, err := Client(slowConn{Conn: b, chunk: 32 << 10, tick: 20 * time.Millisecond}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	const size = 2 << 20
	go func() {
		st, err := ag.Open()
		if err != nil {
			return
		}
		st.Write(make([]byte, size))
		st.(interface{ CloseWrite() error }).CloseWrite()
	}()
	st, err := gw.Accept()
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, st)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v; want %d: the keepalive ended a session that was busy", n, err, size)
	}
	if gw.IsClosed() || ag.IsClosed() {
		t.Fatal("session closed by the keepalive while data was flowing")
	}
}
