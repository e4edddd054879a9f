package tunnel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
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
		{"hello following the cluster", Message{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "x", Cluster: true}}},
		{"welcome with gateways", Message{Type: MsgWelcome, Welcome: &Welcome{GatewayID: "gw-1", Gateways: []GatewayInfo{
			{ID: "gw-1", Addr: "192.0.2.1:443", Region: "eu-west"}, {ID: "gw-2", Addr: "[2001:db8::2]:443"},
		}}}},
		{"gateways", Message{Type: MsgGateways, Gateways: []GatewayInfo{
			{ID: "gw-1", Addr: "gw1.example.test:8443"}, {ID: "gw-3", Addr: "192.0.2.3:443", Region: "Zürich"},
		}}},
		{"gateways, 64 of them", Message{Type: MsgGateways, Gateways: manyGateways(MaxGateways)}},
		{"gateways, largest fields", Message{Type: MsgGateways, Gateways: []GatewayInfo{{
			ID: strings.Repeat("~", MaxGatewayIDLen), Addr: strings.Repeat("h", maxGatewayHostLen) + ":65535", Region: strings.Repeat("r", MaxRegionLen),
		}}}},
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

// manyGateways is a valid list of n gateways.
func manyGateways(n int) []GatewayInfo {
	out := make([]GatewayInfo, n)
	for i := range out {
		out[i] = GatewayInfo{ID: fmt.Sprintf("gw-%02d", i), Addr: fmt.Sprintf("192.0.2.%d:443", i+1)}
	}
	return out
}

// TestGatewaysWireFormat pins the JSON of the cluster additions in spec.md.
func TestGatewaysWireFormat(t *testing.T) {
	tests := []struct {
		m    *Message
		want string
	}{
		{&Message{Type: MsgGateways, Gateways: []GatewayInfo{{ID: "a", Addr: "192.0.2.1:443", Region: "eu"}, {ID: "b", Addr: "gw-b.example.test:443"}}},
			`{"type":"gateways","gateways":[{"id":"a","addr":"192.0.2.1:443","region":"eu"},{"id":"b","addr":"gw-b.example.test:443"}]}`},
		{&Message{Type: MsgWelcome, Welcome: &Welcome{GatewayID: "a", Gateways: []GatewayInfo{{ID: "a", Addr: "192.0.2.1:443"}}}},
			`{"type":"welcome","welcome":{"gateway_id":"a","gateways":[{"id":"a","addr":"192.0.2.1:443"}]}}`},
		{&Message{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "x", Cluster: true}},
			`{"type":"hello","hello":{"version":1,"agent_id":"x","cluster":true,"services":null}}`},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, tt.m); err != nil {
			t.Fatal(err)
		}
		if got := string(buf.Bytes()[4:]); got != tt.want {
			t.Errorf("encodes as\n%s\nwant\n%s", got, tt.want)
		}
	}
}

func TestGatewayListErrors(t *testing.T) {
	tests := []struct {
		name string
		g    GatewayInfo
	}{
		{"empty id", GatewayInfo{Addr: "192.0.2.1:443"}},
		{"id too long", GatewayInfo{ID: strings.Repeat("i", MaxGatewayIDLen+1), Addr: "192.0.2.1:443"}},
		{"id with a space", GatewayInfo{ID: "gw 1", Addr: "192.0.2.1:443"}},
		{"id with a control character", GatewayInfo{ID: "gw\n1", Addr: "192.0.2.1:443"}},
		{"id not ASCII", GatewayInfo{ID: "gwé", Addr: "192.0.2.1:443"}},
		{"no addr", GatewayInfo{ID: "a"}},
		{"addr without port", GatewayInfo{ID: "a", Addr: "192.0.2.1"}},
		{"addr without host", GatewayInfo{ID: "a", Addr: ":443"}},
		{"addr with empty port", GatewayInfo{ID: "a", Addr: "gw:"}},
		{"addr port 0", GatewayInfo{ID: "a", Addr: "gw:0"}},
		{"addr port too big", GatewayInfo{ID: "a", Addr: "gw:65536"}},
		{"addr named port", GatewayInfo{ID: "a", Addr: "gw:https"}},
		{"addr port with a sign", GatewayInfo{ID: "a", Addr: "gw:+443"}},
		{"addr port with a leading zero", GatewayInfo{ID: "a", Addr: "gw:0443"}},
		{"addr host too long", GatewayInfo{ID: "a", Addr: strings.Repeat("h", maxGatewayHostLen+1) + ":443"}},
		{"region too long", GatewayInfo{ID: "a", Addr: "gw:443", Region: strings.Repeat("r", MaxRegionLen+1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, m := range []*Message{
				{Type: MsgGateways, Gateways: []GatewayInfo{{ID: "ok", Addr: "gw:443"}, tt.g}},
				{Type: MsgWelcome, Welcome: &Welcome{Gateways: []GatewayInfo{tt.g}}},
			} {
				checkRefused(t, m)
			}
		})
	}
	t.Run("too many", func(t *testing.T) {
		checkRefused(t, &Message{Type: MsgGateways, Gateways: manyGateways(MaxGateways + 1)})
	})
	t.Run("one id twice", func(t *testing.T) {
		checkRefused(t, &Message{Type: MsgGateways, Gateways: []GatewayInfo{{ID: "a", Addr: "gw1:443"}, {ID: "a", Addr: "gw2:443"}}})
	})
}

// checkRefused asserts that WriteMessage refuses m and ReadMessage refuses
// its encoding.
func checkRefused(t *testing.T, m *Message) {
	t.Helper()
	if err := WriteMessage(io.Discard, m); !errors.Is(err, ErrMessage) {
		t.Errorf("WriteMessage(%+v) = %v, want ErrMessage", m, err)
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ReadMessage(bytes.NewReader(frame(string(body)))); !errors.Is(err, ErrMessage) {
		t.Errorf("ReadMessage(%s) = %+v, %v; want ErrMessage", body, got, err)
	}
}

// An empty list is a well-formed gateways message that carries no news; a
// gateways body under another type is ignored like any other.
func TestGatewaysLenient(t *testing.T) {
	for _, body := range []string{`{"type":"gateways"}`, `{"type":"gateways","gateways":[]}`, `{"type":"drain","gateways":[{"id":""}]}`} {
		if _, err := ReadMessage(bytes.NewReader(frame(body))); err != nil {
			t.Errorf("ReadMessage(%s): %v", body, err)
		}
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
