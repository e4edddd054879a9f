package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// flowPair opens a stream from gw to ag and returns both ends as
// DatagramConns.
func flowPair(t *testing.T, ag, gw *Session) (DatagramConn, DatagramConn) {
	t.Helper()
	st, err := gw.Open()
	if err != nil {
		t.Fatal(err)
	}
	// A stream is announced to the peer by its first bytes.
	if err := WriteDatagram(st, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	ast, err := ag.Accept()
	if err != nil {
		t.Fatal(err)
	}
	g, a := gw.Datagrams(st), ag.Datagrams(ast)
	buf := make([]byte, 64)
	if n, err := a.ReadDatagram(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("first datagram %q, %v", buf[:n], err)
	}
	return g, a
}

func TestFlowQUICDatagrams(t *testing.T) {
	ag, gw, _ := quicSessions(t, nil, nil)
	if !gw.EnableDatagrams() || !ag.EnableDatagrams() {
		t.Fatal("EnableDatagrams = false on a QUIC session")
	}
	g, a := flowPair(t, ag, gw)
	if _, ok := g.(*quicFlow); !ok {
		t.Fatalf("Datagrams on a QUIC session with datagrams on = %T, want a quicFlow", g)
	}
	buf := make([]byte, MaxDatagramLen)
	// Small datagrams go as QUIC datagrams, large ones framed on the
	// stream; both arrive whole, each direction.
	for _, size := range []int{1, 0, 1100, 5000, 65535} {
		p := bytes.Repeat([]byte{byte(size)}, size)
		for _, dir := range []struct {
			name     string
			from, to DatagramConn
		}{{"gateway->agent", g, a}, {"agent->gateway", a, g}} {
			if err := dir.from.WriteDatagram(p); err != nil {
				t.Fatalf("%s %d bytes: %v", dir.name, size, err)
			}
			dir.to.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := dir.to.ReadDatagram(buf)
			if err != nil || !bytes.Equal(buf[:n], p) {
				t.Fatalf("%s: sent %d bytes, got %d, %v", dir.name, size, n, err)
			}
		}
	}
	sent, _ := gw.DatagramStats()
	_, recv := ag.DatagramStats()
	if sent != 3 || recv != 3 {
		t.Errorf("gateway sent %d QUIC datagrams, agent got %d; want the 3 small ones", sent, recv)
	}

	// A past read deadline unblocks a waiting read.
	done := make(chan error, 1)
	go func() {
		_, err := a.ReadDatagram(buf)
		done <- err
	}()
	a.SetReadDeadline(time.Unix(1, 0))
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read after a past deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})

	// Closing one end ends the other's reads with EOF.
	g.Close()
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.ReadDatagram(buf); !errors.Is(err, io.EOF) {
		t.Errorf("read after the peer closed: %v, want EOF", err)
	}
	if err := g.WriteDatagram([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v, want net.ErrClosed", err)
	}
	a.Close()
}

// TestFlowEarlyDatagram: a datagram that arrives before the receiver made
// its flow (right behind the stream's header) is not lost.
func TestFlowEarlyDatagram(t *testing.T) {
	ag, gw, _ := quicSessions(t, nil, nil)
	gw.EnableDatagrams()
	ag.EnableDatagrams()
	st, err := gw.Open()
	if err != nil {
		t.Fatal(err)
	}
	g := gw.Datagrams(st)
	if err := g.WriteDatagram([]byte("first")); err != nil { // as a QUIC datagram: the stream carries nothing yet
		t.Fatal(err)
	}
	WriteDatagram(st, []byte("second")) // framed: announces the stream
	ast, err := ag.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the QUIC datagram has surely arrived before the flow exists.
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := ag.mux.(*quicMux)
		m.flowMu.Lock()
		n := len(m.pending)
		m.flowMu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the early datagram never arrived")
		}
		time.Sleep(time.Millisecond)
	}
	a := ag.Datagrams(ast)
	got := map[string]bool{}
	buf := make([]byte, 64)
	for range 2 {
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := a.ReadDatagram(buf)
		if err != nil {
			t.Fatal(err)
		}
		got[string(buf[:n])] = true
	}
	if !got["first"] || !got["second"] {
		t.Errorf("got %v, want the early datagram and the framed one", got)
	}
	g.Close()
	a.Close()
}

// TestFlowWithoutDatagrams: without EnableDatagrams (or over yamux), a
// flow is the stream's framing alone, and RelayDatagrams relays it.
func TestFlowWithoutDatagrams(t *testing.T) {
	ag, gw, _ := quicSessions(t, nil, nil)
	g, a := flowPair(t, ag, gw)
	if _, ok := g.(*streamDatagrams); !ok {
		t.Fatalf("Datagrams without EnableDatagrams = %T, want stream framing", g)
	}
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, addr, err := echo.ReadFrom(b)
			if err != nil {
				return
			}
			echo.WriteTo(b[:n], addr)
		}
	}()
	uc, err := net.Dial("udp", echo.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	relayed := make(chan error, 1)
	go func() { relayed <- RelayDatagrams(ctx, a, uc, 0) }()
	g.WriteDatagram([]byte("ping"))
	buf := make([]byte, 64)
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := g.ReadDatagram(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("echo %q, %v", buf[:n], err)
	}
	cancel()
	if err := <-relayed; !errors.Is(err, context.Canceled) {
		t.Errorf("RelayDatagrams after cancel: %v", err)
	}
}
