package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/tunnel"
)

// pairFunc returns two connected ends: bytes written to one are read from
// the other.
type pairFunc func(t *testing.T) (net.Conn, net.Conn)

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c1.Close(); r.c.Close() })
	return c1, r.c
}

// tunnelPair returns the two ends of one stream of a tunnel session over TCP.
func tunnelPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	c1, c2 := tcpPair(t)
	gw, err := tunnel.Server(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := tunnel.Client(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close(); ag.Close() })
	s1, err := gw.Open()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := ag.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s1.Close(); s2.Close() })
	return s1, s2
}

func pipePair(t *testing.T) (net.Conn, net.Conn) {
	c1, c2 := net.Pipe()
	t.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}

var halfClosers = []struct {
	name string
	pair pairFunc
}{
	{"tcp", tcpPair},
	{"tunnel", tunnelPair},
}

// splice starts Splice(a, b) between the inner ends of two pairs and
// returns the outer ends and a channel that delivers Splice's counts.
func splice(t *testing.T, left, right pairFunc, idle time.Duration) (client, server net.Conn, done <-chan [2]int64) {
	t.Helper()
	client, a := left(t)
	b, server := right(t)
	ch := make(chan [2]int64, 1)
	go func() {
		ab, ba := Splice(a, b, idle)
		ch <- [2]int64{ab, ba}
	}()
	return client, server, ch
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func waitSplice(t *testing.T, done <-chan [2]int64) [2]int64 {
	t.Helper()
	select {
	case n := <-done:
		return n
	case <-time.After(waitTimeout):
		t.Fatal("Splice did not return")
		return [2]int64{}
	}
}

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// readAll reads c to EOF within waitTimeout.
func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF: %v (after %d bytes)", err, len(b))
	}
	return b
}

func TestSpliceHalfClose(t *testing.T) {
	for _, l := range halfClosers {
		for _, r := range halfClosers {
			for _, idle := range []time.Duration{0, time.Minute} {
				t.Run(l.name+"-"+r.name+"-idle"+idle.String(), func(t *testing.T) {
					client, server, done := splice(t, l.pair, r.pair, idle)
					if _, err := io.WriteString(client, "request"); err != nil {
						t.Fatal(err)
					}
					closeWrite(t, client)
					// The server reads the request and EOF, and can still reply.
					if got := readAll(t, server); string(got) != "request" {
						t.Fatalf("server read %q", got)
					}
					if _, err := io.WriteString(server, "the response"); err != nil {
						t.Fatalf("server reply after the client's half-close: %v", err)
					}
					closeWrite(t, server)
					if got := readAll(t, client); string(got) != "the response" {
						t.Fatalf("client read %q", got)
					}
					if n := waitSplice(t, done); n != [2]int64{7, 12} {
						t.Errorf("Splice counted %v, want [7 12]", n)
					}
				})
			}
		}
	}
}

func TestSpliceBulkBothWays(t *testing.T) {
	const size = 1 << 20
	for _, l := range halfClosers {
		for _, r := range halfClosers {
			for _, idle := range []time.Duration{0, time.Minute} {
				t.Run(l.name+"-"+r.name+"-idle"+idle.String(), func(t *testing.T) {
					client, server, done := splice(t, l.pair, r.pair, idle)
					up, down := make([]byte, size), make([]byte, size)
					rand.Read(up)
					rand.Read(down)
					var wg sync.WaitGroup
					var gotUp, gotDown []byte
					wg.Add(2)
					go func() {
						defer wg.Done()
						client.Write(up)
						client.(interface{ CloseWrite() error }).CloseWrite()
					}()
					go func() {
						defer wg.Done()
						server.Write(down)
						server.(interface{ CloseWrite() error }).CloseWrite()
					}()
					var rwg sync.WaitGroup
					rwg.Add(1)
					go func() { defer rwg.Done(); gotUp, _ = io.ReadAll(server) }()
					gotDown, _ = io.ReadAll(client)
					rwg.Wait()
					wg.Wait()
					if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
						t.Fatalf("copied %d/%d bytes, corrupted or short (want %d each way)", len(gotUp), len(gotDown), size)
					}
					if n := waitSplice(t, done); n != [2]int64{size, size} {
						t.Errorf("Splice counted %v", n)
					}
				})
			}
		}
	}
}

// TestSpliceNoHalfClose: when the side that should be half-closed cannot
// be, it is closed, which ends the other direction too.
func TestSpliceNoHalfClose(t *testing.T) {
	client, server, done := splice(t, pipePair, tcpPair, 0)
	go func() {
		io.WriteString(server, "bye")
		server.(interface{ CloseWrite() error }).CloseWrite()
	}()
	// net.Pipe cannot half-close, so the client sees the whole connection end...
	client.SetReadDeadline(time.Now().Add(waitTimeout))
	if got, err := io.ReadAll(client); err != nil || string(got) != "bye" {
		t.Fatalf("client read %q %v", got, err)
	}
	if _, err := io.WriteString(client, "late"); err == nil {
		t.Error("the client could still write after its side was closed")
	}
	// ...and so does the server, though the client never closed.
	if got := readAll(t, server); len(got) != 0 {
		t.Errorf("server read %q", got)
	}
	waitSplice(t, done)
}

func TestSpliceIdleTimeout(t *testing.T) {
	const idle = 100 * time.Millisecond
	for _, l := range halfClosers {
		for _, r := range halfClosers {
			t.Run(l.name+"-"+r.name, func(t *testing.T) {
				start := time.Now()
				client, server, done := splice(t, l.pair, r.pair, idle)
				if _, err := io.WriteString(client, "x"); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 1)
				server.SetReadDeadline(time.Now().Add(waitTimeout))
				if _, err := io.ReadFull(server, buf); err != nil {
					t.Fatal(err)
				}
				waitSplice(t, done)
				if d := time.Since(start); d < idle {
					t.Errorf("closed after %v, before the idle timeout %v", d, idle)
				}
				// Both outer ends see their connection end.
				for name, c := range map[string]net.Conn{"client": client, "server": server} {
					c.SetReadDeadline(time.Now().Add(waitTimeout))
					if _, err := c.Read(buf); err == nil || isTimeout(err) {
						t.Errorf("%s: read after the idle close: %v, want the end of the connection", name, err)
					}
				}
			})
		}
	}
}

// TestSpliceIdleOneWay: a stream that moves bytes one way only (a long
// download while the client says nothing) is not idle.
func TestSpliceIdleOneWay(t *testing.T) {
	const idle = 200 * time.Millisecond
	for _, l := range halfClosers {
		for _, r := range halfClosers {
			t.Run(l.name+"-"+r.name, func(t *testing.T) {
				client, server, done := splice(t, l.pair, r.pair, idle)
				// Send a chunk every idle/5 for two idle periods; the
				// client->server direction stays silent all along.
				const chunks = 10
				writeErr := make(chan error, 1)
				go func() {
					tick := time.NewTicker(idle / 5)
					defer tick.Stop()
					for i := 0; i < chunks; i++ {
						<-tick.C
						if _, err := server.Write([]byte{byte(i)}); err != nil {
							writeErr <- err
							return
						}
					}
					writeErr <- nil
				}()
				client.SetReadDeadline(time.Now().Add(waitTimeout))
				buf := make([]byte, chunks)
				if n, err := io.ReadFull(client, buf); err != nil {
					t.Fatalf("the download was cut after %d of %d chunks: %v", n, chunks, err)
				}
				if err := <-writeErr; err != nil {
					t.Fatal(err)
				}
				// Still open both ways: the client can still send.
				if _, err := io.WriteString(client, "ack"); err != nil {
					t.Fatal(err)
				}
				closeWrite(t, client)
				if got := readAll(t, server); string(got) != "ack" {
					t.Errorf("server read %q", got)
				}
				closeWrite(t, server)
				if got := readAll(t, client); len(got) != 0 {
					t.Errorf("client read %q", got)
				}
				if n := waitSplice(t, done); n != [2]int64{3, chunks} {
					t.Errorf("Splice counted %v", n)
				}
			})
		}
	}
}

// TestSpliceIdleStuckWriter: a peer that stops reading cannot hold the
// splice open past the idle timeout, even when the other direction ended.
func TestSpliceIdleStuckWriter(t *testing.T) {
	const idle = 100 * time.Millisecond
	for _, l := range halfClosers {
		for _, r := range halfClosers {
			t.Run(l.name+"-"+r.name, func(t *testing.T) {
				client, server, done := splice(t, l.pair, r.pair, idle)
				closeWrite(t, client) // the client is done sending and never reads
				if got := readAll(t, server); len(got) != 0 {
					t.Fatalf("server read %q", got)
				}
				// The server writes far more than any buffer holds.
				werr := make(chan error, 1)
				go func() {
					server.SetWriteDeadline(time.Now().Add(waitTimeout))
					chunk := make([]byte, 64<<10)
					for {
						if _, err := server.Write(chunk); err != nil {
							werr <- err
							return
						}
					}
				}()
				waitSplice(t, done)
				server.Close() // ends the writer (a tunnel stream keeps its peer's window until then)
				<-werr
			})
		}
	}
}
