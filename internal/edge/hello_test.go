package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/tunnel"
)

// captureHello returns the first flight a real crypto/tls client sends for cfg.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c2.Close()
	go func() {
		tls.Client(c1, cfg).Handshake()
		c1.Close()
	}()
	var hello []byte
	buf := make([]byte, 64<<10)
	c2.SetReadDeadline(time.Now().Add(waitTimeout))
	// The ClientHello is one record: header (5 bytes) and body.
	for len(hello) < 5 || len(hello) < 5+int(hello[3])<<8|int(hello[4]) {
		n, err := c2.Read(buf)
		if err != nil {
			t.Fatalf("capture ClientHello: %v", err)
		}
		hello = append(hello, buf[:n]...)
	}
	return hello
}

func TestPeekClientHello(t *testing.T) {
	tests := []struct {
		name   string
		client *tls.Config
		sni    string
		protos []string
	}{
		{"sni and alpn", &tls.Config{ServerName: "shop.gw.test", NextProtos: []string{"h2", "http/1.1"}}, "shop.gw.test", []string{"h2", "http/1.1"}},
		{"tunnel alpn", &tls.Config{ServerName: "gw.test", NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13}, "gw.test", []string{tunnel.ALPN}},
		{"no sni", &tls.Config{InsecureSkipVerify: true}, "", nil},
		{"tls 1.2 only", &tls.Config{ServerName: "old.gw.test", MaxVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}, "old.gw.test", []string{"http/1.1"}},
		{"upper-case sni", &tls.Config{ServerName: "Shop.GW.Test"}, "Shop.GW.Test", nil},
	}
	cert := selfSigned(t, "shop.gw.test")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cconn, sconn := net.Pipe()
			defer cconn.Close()
			defer sconn.Close()
			clientCfg := tt.client.Clone()
			clientCfg.InsecureSkipVerify = true
			clientErr := make(chan error, 1)
			go func() {
				tc := tls.Client(cconn, clientCfg)
				err := tc.Handshake()
				if err == nil {
					_, err = tc.Write([]byte("ping"))
				}
				clientErr <- err
			}()

			sconn.SetDeadline(time.Now().Add(waitTimeout))
			hello, peeked, err := peekClientHello(sconn)
			if err != nil {
				t.Fatal(err)
			}
			if hello.serverName != tt.sni {
				t.Errorf("SNI %q, want %q", hello.serverName, tt.sni)
			}
			if !slices.Equal(hello.protos, tt.protos) {
				t.Errorf("ALPN %q, want %q", hello.protos, tt.protos)
			}
			if len(peeked) < 5 || peeked[0] != 0x16 {
				t.Fatalf("peeked bytes do not start with a handshake record: % x", peeked[:min(len(peeked), 8)])
			}

			// The replayed bytes let a real handshake complete.
			srv := tls.Server(&prefixConn{Conn: sconn, prefix: peeked}, &tls.Config{
				Certificates: []tls.Certificate{*cert},
				NextProtos:   tt.protos,
			})
			if err := srv.Handshake(); err != nil {
				t.Fatalf("handshake after replay: %v", err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read after handshake: %q %v", buf, err)
			}
			if err := <-clientErr; err != nil {
				t.Fatalf("client: %v", err)
			}
			if st := srv.ConnectionState(); st.ServerName != tt.sni {
				t.Errorf("handshake saw SNI %q", st.ServerName)
			}
		})
	}
}

func TestPeekClientHelloSplit(t *testing.T) {
	// The hello arrives a few bytes at a time; the peek still gets all of it.
	hello := captureHello(t, &tls.Config{ServerName: "shop.gw.test", NextProtos: []string{"h2"}})
	h, peeked, err := peekClientHello(&trickleReader{b: hello, n: 3})
	if err != nil {
		t.Fatal(err)
	}
	if h.serverName != "shop.gw.test" || !slices.Equal(h.protos, []string{"h2"}) {
		t.Errorf("hello %+v", h)
	}
	if !bytes.Equal(peeked, hello) {
		t.Errorf("peeked %d bytes, want the %d of the hello", len(peeked), len(hello))
	}
}

// trickleReader returns at most n bytes per Read.
type trickleReader struct {
	b []byte
	n int
}

func (r *trickleReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[n:]
	return n, nil
}

func TestPeekClientHelloGarbage(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "shop.gw.test"})
	hugeRecord := []byte{0x16, 0x03, 0x01, 0xff, 0xff}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"one byte", []byte{0x16}},
		{"plain http", []byte("GET / HTTP/1.1\r\nHost: shop.gw.test\r\n\r\n")},
		{"ssh banner", []byte("SSH-2.0-OpenSSH_9.6\r\n")},
		{"sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10}},
		{"alert record", []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}},
		{"application data first", []byte{0x17, 0x03, 0x03, 0x00, 0x01, 0x00}},
		{"record too large", append(hugeRecord, make([]byte, 100)...)},
		{"truncated hello", hello[:len(hello)/2]},
		{"hello body corrupted", corrupt(hello)},
		{"zeros", make([]byte, 4096)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, peeked, err := peekClientHello(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatalf("no error; hello %+v", h)
			}
			if h != nil || peeked != nil {
				t.Errorf("error %v came with a hello or bytes", err)
			}
		})
	}
}

// corrupt returns hello with its handshake message length made inconsistent.
func corrupt(hello []byte) []byte {
	b := slices.Clone(hello)
	b[6], b[7], b[8] = 0xff, 0xff, 0xff
	return b
}

// TestPeekClientHelloBlocking: a peek on a connection that stalls returns
// the read error (the deadline) rather than hanging.
func TestPeekClientHelloBlocking(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go c1.Write([]byte{0x16, 0x03, 0x01})
	c2.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, _, err := peekClientHello(c2)
	if !isTimeout(err) {
		t.Errorf("peek of a stalled conn: %v, want a timeout", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var (
	fuzzSeedOnce sync.Once
	fuzzSeeds    [][]byte
)

func FuzzPeekClientHello(f *testing.F) {
	fuzzSeedOnce.Do(func() {
		for _, cfg := range []*tls.Config{
			{ServerName: "shop.gw.test", NextProtos: []string{"h2", "http/1.1"}},
			{ServerName: "gw.test", NextProtos: []string{tunnel.ALPN}},
			{ServerName: "old.gw.test", MaxVersion: tls.VersionTLS12},
			{InsecureSkipVerify: true},
		} {
			fuzzSeeds = append(fuzzSeeds, captureHello(f, cfg))
		}
	})
	for _, s := range fuzzSeeds {
		f.Add(s)
		f.Add(s[:len(s)/2])
		f.Add(corrupt(s))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, peeked, err := peekClientHello(bytes.NewReader(data))
		if err != nil {
			if h != nil || peeked != nil {
				t.Fatalf("error %v came with a hello or bytes", err)
			}
			return
		}
		if h == nil {
			t.Fatal("no error and no hello")
		}
		// The peeked bytes are exactly what was read, to be replayed.
		if !bytes.HasPrefix(data, peeked) {
			t.Fatalf("peeked bytes are not a prefix of the input")
		}
	})
}
