package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// frame is a control message on the wire: the length prefix and body.
func frame(body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(b, body...)
}

func TestMessageRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    Message
	}{
		{"hello", Message{Type: MsgHello, Hello: &Hello{
			Version: ProtocolVersion, Token: "t0k3n", AgentID: "a1b2c3", AgentVersion: "v0.1.0",
			Services: []ServiceSpec{{Name: "web", Protocol: "http"}, {Protocol: "h2c"}, {Name: "db", Protocol: "tls"}},
		}}},
		{"hello anonymous, no services", Message{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "x"}}},
		{"hello with 256 services", Message{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "x", Services: make([]ServiceSpec, maxHelloServices)}}},
		{"welcome", Message{Type: MsgWelcome, Welcome: &Welcome{
			GatewayID: "gw-1",
			Services: []ServiceGrant{
				{Name: "web", Protocol: "http", URL: "https://web.example.test"},
				{Name: "db", Protocol: "tls", Error: "name taken", Permanent: true},
			},
		}}},
		{"welcome refusing", Message{Type: MsgWelcome, Welcome: &Welcome{Error: "token refused", Permanent: true}}},
		{"welcome empty", Message{Type: MsgWelcome, Welcome: &Welcome{}}},
		{"drain", Message{Type: MsgDrain}},
		{"escaping", Message{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "<&>\"\\\n\u2028é", Token: "\x00"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, &tt.m); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			n := binary.BigEndian.Uint32(buf.Bytes())
			if int(n) != buf.Len()-4 {
				t.Fatalf("length prefix %d, body %d bytes", n, buf.Len()-4)
			}
			buf.WriteString("trailing")
			got, err := ReadMessage(&buf)
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if !reflect.DeepEqual(got, &tt.m) {
				t.Errorf("read %#v, want %#v", got, &tt.m)
			}
			if buf.String() != "trailing" {
				t.Errorf("ReadMessage left %q, want only the trailing bytes", buf.String())
			}
		})
	}
}

// TestMessageWireFormat pins the JSON field names of spec.md.
func TestMessageWireFormat(t *testing.T) {
	var buf bytes.Buffer
	m := &Message{Type: MsgHello, Hello: &Hello{
		Version: 1, Token: "t", AgentID: "a", AgentVersion: "v", Services: []ServiceSpec{{Name: "n", Protocol: "http"}},
	}}
	if err := WriteMessage(&buf, m); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"hello","hello":{"version":1,"token":"t","agent_id":"a","agent_version":"v","services":[{"name":"n","protocol":"http"}]}}`
	if got := string(buf.Bytes()[4:]); got != want {
		t.Errorf("hello encodes as\n%s\nwant\n%s", got, want)
	}
	buf.Reset()
	m = &Message{Type: MsgWelcome, Welcome: &Welcome{
		Error: "e", Permanent: true, GatewayID: "g",
		Services: []ServiceGrant{{Name: "n", Protocol: "tls", URL: "u", Error: "e", Permanent: true}},
	}}
	if err := WriteMessage(&buf, m); err != nil {
		t.Fatal(err)
	}
	want = `{"type":"welcome","welcome":{"error":"e","permanent":true,"gateway_id":"g","services":[{"name":"n","protocol":"tls","url":"u","error":"e","permanent":true}]}}`
	if got := string(buf.Bytes()[4:]); got != want {
		t.Errorf("welcome encodes as\n%s\nwant\n%s", got, want)
	}
}

func TestMessageUnknownFieldsIgnored(t *testing.T) {
	in := frame(`{"type":"hello","future":[1,2],"hello":{"version":2,"agent_id":"a","services":[],"new_field":{"x":1}}}`)
	m, err := ReadMessage(bytes.NewReader(in))
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	if m.Hello.Version != 2 || m.Hello.AgentID != "a" {
		t.Errorf("read %+v", m.Hello)
	}
}

func TestReadMessageErrors(t *testing.T) {
	tooLong := binary.BigEndian.AppendUint32(nil, MaxMessageLen+1)
	tooLong = append(tooLong, make([]byte, MaxMessageLen+1)...)
	services := `{"type":"hello","hello":{"version":1,"agent_id":"a","services":[` +
		strings.TrimSuffix(strings.Repeat(`{"protocol":"http"},`, maxHelloServices+1), ",") + `]}}`
	tests := []struct {
		name string
		in   []byte
	}{
		{"length 0", frame("")},
		{"length past limit", tooLong},
		{"length 2^32-1", []byte{0xff, 0xff, 0xff, 0xff, '{', '}'}},
		{"length prefix cut at 1", []byte{0}},
		{"length prefix cut at 3", []byte{0, 0, 0}},
		{"body shorter than length", frame(`{"type":"drain"}`)[:10]},
		{"bad JSON", frame(`{"type":`)},
		{"not an object", frame(`"drain"`)},
		{"null", frame(`null`)},
		{"trailing garbage", frame(`{"type":"drain"}x`)},
		{"type not a string", frame(`{"type":1}`)},
		{"no type", frame(`{}`)},
		{"unknown type", frame(`{"type":"reboot"}`)},
		{"type in wrong case", frame(`{"type":"Hello","hello":{}}`)},
		{"hello without body", frame(`{"type":"hello"}`)},
		{"hello with null body", frame(`{"type":"hello","hello":null}`)},
		{"hello with welcome body", frame(`{"type":"hello","welcome":{}}`)},
		{"hello with too many services", frame(services)},
		{"hello version not a number", frame(`{"type":"hello","hello":{"version":"1"}}`)},
		{"welcome without body", frame(`{"type":"welcome"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadMessage(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrMessage) {
				t.Fatalf("ReadMessage = %+v, %v; want an error wrapping ErrMessage", m, err)
			}
			if m != nil {
				t.Errorf("ReadMessage returned a message with error %v", err)
			}
		})
	}
}

func TestReadMessageEOF(t *testing.T) {
	if _, err := ReadMessage(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadMessage at end of stream = %v, want io.EOF itself", err)
	}
	// After one message, the clean end of the stream is io.EOF again.
	r := bytes.NewReader(frame(`{"type":"drain"}`))
	if _, err := ReadMessage(r); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMessage(r); err != io.EOF {
		t.Errorf("ReadMessage after the last message = %v, want io.EOF", err)
	}
}

func TestReadMessageReaderError(t *testing.T) {
	boom := errors.New("boom")
	if _, err := ReadMessage(errReader{boom}); !errors.Is(err, boom) {
		t.Errorf("ReadMessage = %v, want the reader's error", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestWriteMessageErrors(t *testing.T) {
	tests := []struct {
		name string
		m    *Message
	}{
		{"nil", nil},
		{"unknown type", &Message{Type: "reboot"}},
		{"no type", &Message{}},
		{"hello without body", &Message{Type: MsgHello}},
		{"welcome without body", &Message{Type: MsgWelcome, Hello: &Hello{}}},
		{"too many services", &Message{Type: MsgHello, Hello: &Hello{Services: make([]ServiceSpec, maxHelloServices+1)}}},
		{"too large", &Message{Type: MsgHello, Hello: &Hello{Token: strings.Repeat("x", MaxMessageLen)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &countWriter{}
			if err := WriteMessage(w, tt.m); !errors.Is(err, ErrMessage) {
				t.Errorf("WriteMessage error %v, want ErrMessage", err)
			}
			if w.calls != 0 {
				t.Errorf("WriteMessage wrote after an error")
			}
		})
	}
}

func TestWriteMessageOneWrite(t *testing.T) {
	w := &countWriter{}
	m := &Message{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "a", Token: strings.Repeat("t", 40<<10)}}
	if err := WriteMessage(w, m); err != nil {
		t.Fatal(err)
	}
	if w.calls != 1 {
		t.Errorf("WriteMessage made %d Write calls, want 1", w.calls)
	}
}
