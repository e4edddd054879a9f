package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// rawHeader builds a header byte by byte, without AppendHeader's checks, so
// tests can write what a broken or newer peer would send.
type rawHeader struct {
	version, kind, flags byte
	service, client      string
	host                 string
	ext                  []byte
	extLen               int // -1 means len(ext)
}

func (r rawHeader) bytes() []byte {
	b := []byte{r.version, r.kind, r.flags}
	for _, s := range []string{r.service, r.client, r.host} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	n := r.extLen
	if n < 0 {
		n = len(r.ext)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	return append(b, r.ext...)
}

func validRaw() rawHeader {
	return rawHeader{version: 1, kind: 3, service: "web", client: "192.0.2.1:4711", host: "web.example.test", extLen: -1}
}

func TestHeaderRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    Header
	}{
		{"http", Header{Kind: KindHTTP, Service: "web", Client: "192.0.2.1:52000", Host: "web.example.test"}},
		{"h2c", Header{Kind: KindH2C, Service: "grpc", Client: "[2001:db8::1]:443", Host: "grpc.example.test"}},
		{"tls", Header{Kind: KindTLS, Service: "db", Client: "198.51.100.7:1", Host: "db.example.test"}},
		{"tcp no host", Header{Kind: KindTCP, Service: "ssh", Client: "203.0.113.9:22"}},
		{"udp", Header{Kind: KindUDP, Service: "dns"}},
		{"probe", Header{Kind: KindProbe, Service: "web"}},
		{"service of 1", Header{Kind: KindHTTP, Service: "a"}},
		{"all at limits", Header{
			Kind:    KindTLS,
			Service: strings.Repeat("s", maxServiceLen),
			Client:  strings.Repeat("c", maxClientLen),
			Host:    strings.Repeat("h", maxHostLen),
		}},
		{"binary bytes kept", Header{Kind: KindTCP, Service: "\x00\xff", Client: "\n", Host: "é.test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AppendHeader(nil, &tt.h)
			if err != nil {
				t.Fatalf("AppendHeader: %v", err)
			}
			want := 3 + 1 + len(tt.h.Service) + 1 + len(tt.h.Client) + 1 + len(tt.h.Host) + 2
			if len(b) != want {
				t.Errorf("encoded length %d, want %d", len(b), want)
			}
			if b[0] != HeaderVersion || b[1] != byte(tt.h.Kind) || b[2] != 0 {
				t.Errorf("fixed bytes % x, want %02x %02x 00", b[:3], HeaderVersion, byte(tt.h.Kind))
			}
			var w bytes.Buffer
			if err := WriteHeader(&w, &tt.h); err != nil {
				t.Fatalf("WriteHeader: %v", err)
			}
			if !bytes.Equal(w.Bytes(), b) {
				t.Errorf("WriteHeader wrote % x, AppendHeader % x", w.Bytes(), b)
			}
			got, err := ReadHeader(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("ReadHeader: %v", err)
			}
			if *got != tt.h {
				t.Errorf("read %+v, want %+v", *got, tt.h)
			}
		})
	}
}

func TestHeaderMaxLen(t *testing.T) {
	r := rawHeader{
		version: 1, kind: 1,
		service: strings.Repeat("s", maxServiceLen),
		client:  strings.Repeat("c", maxClientLen),
		host:    strings.Repeat("h", maxHostLen),
		ext:     make([]byte, maxExtLen), extLen: -1,
	}
	b := r.bytes()
	if len(b) != MaxHeaderLen {
		t.Fatalf("largest valid header is %d bytes, MaxHeaderLen is %d", len(b), MaxHeaderLen)
	}
	if _, err := ReadHeader(bytes.NewReader(b)); err != nil {
		t.Fatalf("largest valid header: %v", err)
	}
}

func TestAppendHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		h    Header
	}{
		{"kind 0", Header{Kind: 0, Service: "a"}},
		{"kind 7", Header{Kind: 7, Service: "a"}},
		{"kind 255", Header{Kind: 255, Service: "a"}},
		{"no service", Header{Kind: KindHTTP}},
		{"service too long", Header{Kind: KindHTTP, Service: strings.Repeat("s", maxServiceLen+1)}},
		{"client too long", Header{Kind: KindHTTP, Service: "a", Client: strings.Repeat("c", maxClientLen+1)}},
		{"host too long", Header{Kind: KindHTTP, Service: "a", Host: strings.Repeat("h", maxHostLen+1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			b, err := AppendHeader(prefix, &tt.h)
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("AppendHeader error %v, want ErrHeader", err)
			}
			if string(b) != "keep" {
				t.Errorf("AppendHeader changed b on error: %q", b)
			}
			w := &countWriter{}
			if err := WriteHeader(w, &tt.h); !errors.Is(err, ErrHeader) {
				t.Errorf("WriteHeader error %v, want ErrHeader", err)
			}
			if w.calls != 0 {
				t.Errorf("WriteHeader wrote %d times on error", w.calls)
			}
		})
	}
}

type countWriter struct {
	calls int
	bytes.Buffer
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.calls++
	return w.Buffer.Write(p)
}

func TestWriteHeaderOneWrite(t *testing.T) {
	w := &countWriter{}
	h := Header{Kind: KindHTTP, Service: strings.Repeat("s", maxServiceLen), Client: strings.Repeat("c", maxClientLen), Host: strings.Repeat("h", maxHostLen)}
	if err := WriteHeader(w, &h); err != nil {
		t.Fatal(err)
	}
	if w.calls != 1 {
		t.Errorf("WriteHeader made %d Write calls, want 1", w.calls)
	}
}

func TestReadHeaderErrors(t *testing.T) {
	mod := func(f func(*rawHeader)) []byte {
		r := validRaw()
		f(&r)
		return r.bytes()
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"version 0", mod(func(r *rawHeader) { r.version = 0 })},
		{"version 2", mod(func(r *rawHeader) { r.version = 2 })},
		{"version 255", mod(func(r *rawHeader) { r.version = 255 })},
		{"kind 0", mod(func(r *rawHeader) { r.kind = 0 })},
		{"kind 7", mod(func(r *rawHeader) { r.kind = 7 })},
		{"kind 255", mod(func(r *rawHeader) { r.kind = 255 })},
		{"service empty", mod(func(r *rawHeader) { r.service = "" })},
		{"service 64", mod(func(r *rawHeader) { r.service = strings.Repeat("s", maxServiceLen+1) })},
		{"service 255", mod(func(r *rawHeader) { r.service = strings.Repeat("s", 255) })},
		{"client 65", mod(func(r *rawHeader) { r.client = strings.Repeat("c", maxClientLen+1) })},
		{"client 255", mod(func(r *rawHeader) { r.client = strings.Repeat("c", 255) })},
		{"host 254", mod(func(r *rawHeader) { r.host = strings.Repeat("h", maxHostLen+1) })},
		{"host 255", mod(func(r *rawHeader) { r.host = strings.Repeat("h", 255) })},
		{"extensions 1025", mod(func(r *rawHeader) { r.ext = make([]byte, maxExtLen+1) })},
		{"extensions 65535 declared", mod(func(r *rawHeader) { r.extLen = 0xffff })},
		{"extensions shorter than declared", mod(func(r *rawHeader) { r.ext = []byte{1, 2, 3}; r.extLen = 4 })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("ReadHeader = %+v, %v; want an error wrapping ErrHeader", h, err)
			}
			if h != nil {
				t.Errorf("ReadHeader returned a header with error %v", err)
			}
		})
	}
}

// TestReadHeaderTruncated cuts a valid header with extensions at every byte
// offset: each prefix must give an error wrapping ErrHeader (and the
// underlying EOF), never a header or a panic.
func TestReadHeaderTruncated(t *testing.T) {
	r := validRaw()
	r.ext = []byte("ext-bytes")
	full := r.bytes()
	for i := range len(full) {
		h, err := ReadHeader(bytes.NewReader(full[:i]))
		if !errors.Is(err, ErrHeader) {
			t.Fatalf("prefix of %d/%d bytes: ReadHeader = %+v, %v; want ErrHeader", i, len(full), h, err)
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("prefix of %d bytes: error %v does not wrap the EOF", i, err)
		}
	}
	if _, err := ReadHeader(bytes.NewReader(full)); err != nil {
		t.Fatalf("full header: %v", err)
	}
}

// TestReadHeaderExact checks that ReadHeader consumes exactly the header,
// extensions included, and leaves the payload behind it unread, whatever
// sizes the reader hands out.
func TestReadHeaderExact(t *testing.T) {
	payload := []byte("\x16\x03\x01 the ClientHello follows")
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"plain", func(r io.Reader) io.Reader { return r }},
		{"one byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
	}
	headers := []struct {
		name string
		raw  rawHeader
	}{
		{"no extensions", validRaw()},
		{"extensions", func() rawHeader { r := validRaw(); r.ext = []byte{0xde, 0xad, 0xbe, 0xef, 0}; return r }()},
		{"max extensions", func() rawHeader { r := validRaw(); r.ext = bytes.Repeat([]byte{0xee}, maxExtLen); return r }()},
		{"flags ignored", func() rawHeader { r := validRaw(); r.flags = 0xff; return r }()},
		{"empty strings", rawHeader{version: 1, kind: 4, service: "x", extLen: -1}},
	}
	for _, hh := range headers {
		for _, rr := range readers {
			t.Run(hh.name+"/"+rr.name, func(t *testing.T) {
				in := append(hh.raw.bytes(), payload...)
				src := bytes.NewReader(in)
				h, err := ReadHeader(rr.wrap(src))
				if err != nil {
					t.Fatalf("ReadHeader: %v", err)
				}
				want := Header{Kind: Kind(hh.raw.kind), Service: hh.raw.service, Client: hh.raw.client, Host: hh.raw.host}
				if *h != want {
					t.Errorf("read %+v, want %+v", *h, want)
				}
				rest, _ := io.ReadAll(src)
				if !bytes.Equal(rest, payload) {
					t.Errorf("left %q after the header, want the payload %q", rest, payload)
				}
			})
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{
		KindHTTP: "http", KindH2C: "h2c", KindTLS: "tls", KindTCP: "tcp", KindUDP: "udp", KindProbe: "probe", 0: "kind(0)", 200: "kind(200)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}
