package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"testing"
	"testing/iotest"
	"time"
)

// frameOf is the reference encoding of one datagram.
func frameOf(p []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(p))), p...)
}

func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + n)
	}
	return p
}

func TestWriteDatagram(t *testing.T) {
	for _, n := range []int{0, 1, 1400, smallFrame - 2, smallFrame - 1, MaxDatagramLen} {
		w := &countWriter{}
		p := pattern(n)
		if err := WriteDatagram(w, p); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if w.calls != 1 {
			t.Errorf("%d bytes: %d Write calls, want 1", n, w.calls)
		}
		if !bytes.Equal(w.Bytes(), frameOf(p)) {
			t.Errorf("%d bytes: wrote % x..., want % x...", n, w.Bytes()[:min(8, w.Len())], frameOf(p)[:min(8, 2+n)])
		}
	}
}

func TestWriteDatagramTooLong(t *testing.T) {
	w := &countWriter{}
	err := WriteDatagram(w, make([]byte, MaxDatagramLen+1))
	if !errors.Is(err, ErrDatagramTooLong) {
		t.Fatalf("err = %v, want ErrDatagramTooLong", err)
	}
	if w.calls != 0 {
		t.Errorf("%d Write calls after the error, want 0", w.calls)
	}
}

func TestWriteDatagramError(t *testing.T) {
	want := errors.New("broken")
	if err := WriteDatagram(errWriter{want}, []byte("x")); !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

func TestReadDatagram(t *testing.T) {
	type read struct {
		n   int   // datagram length expected, for a nil err
		err error // wanted, by errors.Is
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name  string
		in    []byte
		buf   int
		reads []read
	}{
		{"empty stream", nil, 10, []read{{err: io.EOF}}},
		{"zero length", frameOf(nil), 0, []read{{n: 0}, {err: io.EOF}}},
		{"one byte", frameOf(pattern(1)), 1, []read{{n: 1}, {err: io.EOF}}},
		{"1400", frameOf(pattern(1400)), MaxDatagramLen, []read{{n: 1400}, {err: io.EOF}}},
		{"max", frameOf(pattern(MaxDatagramLen)), MaxDatagramLen, []read{{n: MaxDatagramLen}, {err: io.EOF}}},
		{"several", cat(frameOf(pattern(3)), frameOf(nil), frameOf(pattern(9000))), MaxDatagramLen,
			[]read{{n: 3}, {n: 0}, {n: 9000}, {err: io.EOF}}},
		{"short buffer skips the frame", cat(frameOf(pattern(100)), frameOf(pattern(5))), 99,
			[]read{{err: io.ErrShortBuffer}, {n: 5}, {err: io.EOF}}},
		{"short buffer for max", cat(frameOf(pattern(MaxDatagramLen)), frameOf(pattern(1))), 1400,
			[]read{{err: io.ErrShortBuffer}, {n: 1}, {err: io.EOF}}},
		{"half a length", []byte{0}, 10, []read{{err: io.ErrUnexpectedEOF}}},
		{"length only", []byte{0, 5}, 10, []read{{err: io.ErrUnexpectedEOF}}},
		{"truncated payload", frameOf(pattern(5))[:6], 10, []read{{err: io.ErrUnexpectedEOF}}},
		{"truncated after a frame", cat(frameOf(pattern(2)), []byte{0xff, 0xff, 1}), MaxDatagramLen,
			[]read{{n: 2}, {err: io.ErrUnexpectedEOF}}},
		{"truncated while skipping", frameOf(pattern(100))[:50], 10, []read{{err: io.ErrUnexpectedEOF}}},
	} {
		for _, via := range []struct {
			name string
			wrap func(io.Reader) io.Reader
		}{
			{"whole", func(r io.Reader) io.Reader { return r }},
			{"bytewise", iotest.OneByteReader},
			{"data+EOF", iotest.DataErrReader},
		} {
			t.Run(tc.name+"/"+via.name, func(t *testing.T) {
				dr := NewDatagramReader(via.wrap(bytes.NewReader(tc.in)))
				buf := make([]byte, tc.buf)
				off := 0 // of the current frame in tc.in
				for i, want := range tc.reads {
					n, err := dr.ReadDatagram(buf)
					if want.err != nil {
						if !errors.Is(err, want.err) || n != 0 {
							t.Fatalf("read %d: (%d, %v), want (0, %v)", i, n, err, want.err)
						}
						if want.err == io.EOF && err != io.EOF {
							t.Fatalf("read %d: %v is not io.EOF itself", i, err)
						}
						if errors.Is(err, io.ErrShortBuffer) {
							off += 2 + int(binary.BigEndian.Uint16(tc.in[off:]))
						}
						continue
					}
					if err != nil || n != want.n {
						t.Fatalf("read %d: (%d, %v), want (%d, nil)", i, n, err, want.n)
					}
					if !bytes.Equal(frameOf(buf[:n]), tc.in[off:off+2+n]) {
						t.Fatalf("read %d: datagram differs from the frame sent", i)
					}
					off += 2 + n
				}
			})
		}
	}
}

func TestReadDatagramStreamError(t *testing.T) {
	want := errors.New("reset")
	r := io.MultiReader(bytes.NewReader(frameOf([]byte("ok"))), iotest.ErrReader(want))
	dr := NewDatagramReader(r)
	buf := make([]byte, 10)
	if n, err := dr.ReadDatagram(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("first read: (%q, %v)", buf[:n], err)
	}
	if _, err := dr.ReadDatagram(buf); !errors.Is(err, want) {
		t.Fatalf("second read: %v, want %v", err, want)
	}
}

// countReader counts Read calls.
type countReader struct {
	r     io.Reader
	calls int
}

func (c *countReader) Read(p []byte) (int, error) {
	c.calls++
	return c.r.Read(p)
}

// TestDatagramReaderBuffers checks that small datagrams share Reads of the
// stream rather than costing one or two each.
func TestDatagramReaderBuffers(t *testing.T) {
	var in bytes.Buffer
	const count, size = 200, 100
	for range count {
		if err := WriteDatagram(&in, pattern(size)); err != nil {
			t.Fatal(err)
		}
	}
	total := in.Len()
	cr := &countReader{r: &in}
	dr := NewDatagramReader(cr)
	buf := make([]byte, MaxDatagramLen)
	for i := range count {
		if n, err := dr.ReadDatagram(buf); err != nil || n != size {
			t.Fatalf("datagram %d: (%d, %v)", i, n, err)
		}
	}
	if want := total/datagramReadBuffer + 1; cr.calls > want {
		t.Errorf("%d Reads of the stream for %d bytes, want at most %d", cr.calls, total, want)
	}
}

// TestDatagramPipeRoundTrip sends many datagrams of varied sizes through a
// synchronous pipe: each arrives whole, in order.
func TestDatagramPipeRoundTrip(t *testing.T) {
	a, b := pipePair(t)
	rng := mrand.New(mrand.NewPCG(1, 2))
	sizes := []int{0, 1, MaxDatagramLen, 0, 2, 1400}
	for range 1000 {
		switch rng.IntN(10) {
		case 0:
			sizes = append(sizes, rng.IntN(MaxDatagramLen+1))
		case 1:
			sizes = append(sizes, 0)
		default:
			sizes = append(sizes, rng.IntN(1500))
		}
	}
	errc := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			if err := WriteDatagram(a, pattern(n + i)[:n]); err != nil {
				errc <- err
				return
			}
		}
		errc <- a.Close()
	}()
	dr := NewDatagramReader(b)
	buf := make([]byte, MaxDatagramLen)
	for i, want := range sizes {
		n, err := dr.ReadDatagram(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], pattern(want + i)[:want]) {
			t.Fatalf("datagram %d: got %d bytes, want %d (or content differs)", i, n, want)
		}
	}
	if _, err := dr.ReadDatagram(buf); err != io.EOF {
		t.Fatalf("after the last datagram: %v, want io.EOF", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func FuzzDatagramReader(f *testing.F) {
	f.Add([]byte{}, uint16(10), false)
	f.Add(frameOf(nil), uint16(0), false)
	f.Add(frameOf(pattern(5)), uint16(5), true)
	f.Add(append(frameOf(pattern(300)), frameOf(pattern(3))...), uint16(100), false)
	f.Add([]byte{0xff, 0xff, 1, 2, 3}, uint16(65535), false)
	f.Add([]byte{0}, uint16(1), true)
	f.Fuzz(func(t *testing.T, data []byte, bufLen uint16, bytewise bool) {
		var r io.Reader = bytes.NewReader(data)
		if bytewise {
			r = iotest.OneByteReader(r)
		}
		dr := NewDatagramReader(r)
		buf := make([]byte, bufLen)
		off := 0 // bytes of data consumed by the frames read so far
		for {
			n, err := dr.ReadDatagram(buf)
			switch {
			case err == nil:
				got := frameOf(buf[:n])
				if !bytes.Equal(got, data[off:min(len(data), off+len(got))]) {
					t.Fatalf("datagram at %d re-encodes to % x, differs from the input", off, got)
				}
				off += len(got)
			case err == io.EOF:
				if off != len(data) {
					t.Fatalf("io.EOF at %d of %d bytes", off, len(data))
				}
				return
			case errors.Is(err, io.ErrShortBuffer):
				if n != 0 || off+2 > len(data) {
					t.Fatalf("short buffer: n %d, at %d of %d bytes", n, off, len(data))
				}
				l := int(binary.BigEndian.Uint16(data[off:]))
				if l <= len(buf) || off+2+l > len(data) {
					t.Fatalf("short buffer for a frame of %d bytes, buffer %d, %d bytes left", l, len(buf), len(data)-off)
				}
				off += 2 + l
			case errors.Is(err, io.ErrUnexpectedEOF):
				rest := data[off:]
				if len(rest) == 0 || len(rest) >= 2 && len(rest) >= 2+int(binary.BigEndian.Uint16(rest)) {
					t.Fatalf("unexpected EOF with a whole frame or nothing left: % x", rest[:min(8, len(rest))])
				}
				return
			default:
				t.Fatalf("error %v", err)
			}
		}
	})
}

// udpEcho runs a UDP echo server on loopback until the test ends.
func udpEcho(tb testing.TB) net.Addr {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, MaxDatagramLen)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr()
}

func dialUDP(tb testing.TB, to net.Addr) net.Conn {
	tb.Helper()
	c, err := net.Dial("udp", to.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// relayStreams returns the two ends of a stream: the gateway's, which the
// test drives, and the agent's, which RelayUDP serves. "raw" is a bare
// net.Pipe; the others are streams of a session over each transport.
func relayStreams(t *testing.T, tr string) (gw, agent net.Conn) {
	t.Helper()
	if tr == "raw" {
		return pipePair(t)
	}
	var trans transport
	for _, st := range sessionTransports {
		if st.name == tr {
			trans = st
		}
	}
	as, gs, _, _ := sessionPair(t, trans, nil)
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := as.Accept()
		ch <- res{c, err}
	}()
	gw, err := gs.Open()
	if err != nil {
		t.Fatal(err)
	}
	// A QUIC stream reaches the peer with its first bytes: the gateway
	// writes the header first, as it does for real.
	if err := WriteHeader(gw, &Header{Kind: KindUDP, Service: "dns", Client: "192.0.2.1:5353"}); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if h, err := ReadHeader(r.c); err != nil || h.Kind != KindUDP {
		t.Fatalf("header %+v, %v", h, err)
	}
	t.Cleanup(func() { gw.Close(); r.c.Close() })
	return gw, r.c
}

// startRelay runs RelayUDP between agent and a socket connected to a UDP
// echo server; the returned channel gets its result.
func startRelay(t *testing.T, ctx context.Context, agent net.Conn, idle time.Duration) (udp net.Conn, result <-chan error) {
	t.Helper()
	udp = dialUDP(t, udpEcho(t))
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		errc <- RelayUDP(ctx, agent, udp, idle)
	}()
	t.Cleanup(func() {
		agent.Close() // ends the relay if the test did not
		<-done
	})
	return udp, errc
}

func relayTransports() []string {
	names := []string{"raw"}
	for _, tr := range sessionTransports {
		names = append(names, tr.name)
	}
	return names
}

func TestRelayUDP(t *testing.T) {
	for _, tr := range relayTransports() {
		t.Run(tr, func(t *testing.T) {
			gw, agent := relayStreams(t, tr)
			_, errc := startRelay(t, t.Context(), agent, 0)
			dr := NewDatagramReader(gw)
			buf := make([]byte, MaxDatagramLen)
			// 65507 is the largest UDP payload over IPv4.
			sizes := []int{0, 1, 1400, 65507, 0, 3, 9000}
			for i := range 200 {
				sizes = append(sizes, (i*131)%1600)
			}
			for i, size := range sizes {
				p := pattern(size + i)[:size]
				if err := WriteDatagram(gw, p); err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				gw.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := dr.ReadDatagram(buf)
				if err != nil {
					t.Fatalf("echo of datagram %d (%d bytes): %v", i, size, err)
				}
				if !bytes.Equal(buf[:n], p) {
					t.Fatalf("echo of datagram %d: %d bytes, want %d (or content differs)", i, n, size)
				}
			}
			closeWrite(t, gw)
			if err := <-errc; err != nil {
				t.Fatalf("RelayUDP after the stream ended: %v, want nil", err)
			}
		})
	}
}

// closeWrite ends the gateway's direction of the stream: FIN where the
// stream has it, else the whole conn.
func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		return
	}
	c.Close()
}

// TestRelayUDPDropsTooLarge sends a datagram larger than UDP over IPv4
// carries: the relay drops it and goes on.
func TestRelayUDPDropsTooLarge(t *testing.T) {
	gw, agent := relayStreams(t, "raw")
	_, errc := startRelay(t, t.Context(), agent, 0)
	for _, p := range [][]byte{pattern(MaxDatagramLen), []byte("after")} {
		if err := WriteDatagram(gw, p); err != nil {
			t.Fatal(err)
		}
	}
	gw.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, MaxDatagramLen)
	n, err := NewDatagramReader(gw).ReadDatagram(buf)
	if err != nil || string(buf[:n]) != "after" {
		t.Fatalf("first echo: (%d bytes, %v), want %q", n, err, "after")
	}
	gw.Close()
	if err := <-errc; err != nil {
		t.Fatalf("RelayUDP: %v", err)
	}
}

// TestRelayUDPStops checks each way the relay ends, and that it leaves
// both conns open and without deadlines.
func TestRelayUDPStops(t *testing.T) {
	for _, tc := range []struct {
		name string
		idle time.Duration
		stop func(cancel context.CancelFunc, gw, udp net.Conn)
		want error
	}{
		{"cancel", 0, func(cancel context.CancelFunc, _, _ net.Conn) { cancel() }, context.Canceled},
		{"idle", 50 * time.Millisecond, func(context.CancelFunc, net.Conn, net.Conn) {}, ErrIdle},
		{"stream ends inside a frame", 0, func(_ context.CancelFunc, gw, _ net.Conn) { gw.Write([]byte{0, 9, 1}); gw.Close() }, io.ErrUnexpectedEOF},
		{"udp fails", 0, func(_ context.CancelFunc, _, udp net.Conn) { udp.Close() }, net.ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw, agent := relayStreams(t, "pipe")
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			udp, errc := startRelay(t, ctx, agent, tc.idle)
			tc.stop(cancel, gw, udp)
			select {
			case err := <-errc:
				if !errors.Is(err, tc.want) {
					t.Fatalf("RelayUDP: %v, want %v", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("RelayUDP did not return")
			}
			if tc.name != "cancel" && tc.name != "idle" {
				return
			}
			// Both conns still work: the agent's stream carries a frame to
			// the gateway, and the socket reaches the echo server.
			go WriteDatagram(agent, []byte("still open"))
			buf := make([]byte, 100)
			gw.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := NewDatagramReader(gw).ReadDatagram(buf); err != nil || string(buf[:n]) != "still open" {
				t.Fatalf("stream after RelayUDP: (%q, %v)", buf[:n], err)
			}
			if _, err := udp.Write([]byte("ping")); err != nil {
				t.Fatalf("udp write after RelayUDP: %v", err)
			}
			if n, err := udp.Read(buf); err != nil || string(buf[:n]) != "ping" {
				t.Fatalf("udp read after RelayUDP: (%q, %v)", buf[:n], err)
			}
		})
	}
}

// TestRelayUDPTrafficDefersIdle keeps datagrams moving for several idle
// timeouts: the relay stays up, then expires once traffic stops.
func TestRelayUDPTrafficDefersIdle(t *testing.T) {
	const idle = 500 * time.Millisecond
	gw, agent := relayStreams(t, "raw")
	_, errc := startRelay(t, t.Context(), agent, idle)
	dr := NewDatagramReader(gw)
	buf := make([]byte, 100)
	tick := time.NewTicker(idle / 10)
	defer tick.Stop()
	for i := range 20 { // two idle timeouts
		<-tick.C
		if err := WriteDatagram(gw, []byte{byte(i)}); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if n, err := dr.ReadDatagram(buf); err != nil || n != 1 || buf[0] != byte(i) {
			t.Fatalf("echo %d: (%d, %v)", i, n, err)
		}
	}
	select {
	case err := <-errc:
		t.Fatalf("RelayUDP ended while datagrams moved: %v", err)
	default:
	}
	select {
	case err := <-errc:
		if err != ErrIdle {
			t.Fatalf("RelayUDP: %v, want ErrIdle", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RelayUDP did not expire")
	}
}
