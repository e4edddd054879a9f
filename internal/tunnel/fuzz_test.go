package tunnel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func FuzzReadHeader(f *testing.F) {
	for _, h := range []Header{
		{Kind: KindHTTP, Service: "web", Client: "192.0.2.1:52000", Host: "web.example.test"},
		{Kind: KindH2C, Service: "g", Client: "[2001:db8::1]:1"},
		{Kind: KindTLS, Service: "db", Host: "db.example.test"},
		{Kind: KindTCP, Service: "ssh"},
		{Kind: KindUDP, Service: "dns", Client: "c", Host: "h"},
		{Kind: KindTLS, Service: strings.Repeat("s", maxServiceLen), Client: strings.Repeat("c", maxClientLen), Host: strings.Repeat("h", maxHostLen)},
	} {
		b, err := AppendHeader(nil, &h)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(append(b, "payload"...))
		f.Add(b[:len(b)/2])
	}
	withExt := validRaw()
	withExt.ext = []byte{1, 2, 3}
	maxExt := validRaw()
	maxExt.ext = make([]byte, maxExtLen)
	overExt := validRaw()
	overExt.extLen = maxExtLen + 1
	flags := validRaw()
	flags.flags = 0x80
	for _, r := range []rawHeader{withExt, maxExt, overExt, flags} {
		f.Add(r.bytes())
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, 1, 0, 1, 'a', 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 1, 'a', 0, 0, 0, 0})
	f.Add([]byte{1, 6, 0, 1, 'a', 0, 0, 0, 0})
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 1, 0, 64})
	f.Add([]byte{1, 1, 0, 1, 'a', 65})
	f.Add([]byte{1, 1, 0, 1, 'a', 0, 254})
	f.Add([]byte{1, 1, 0, 1, 'a', 0, 0, 0xff, 0xff})

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadHeader(r)
		if err != nil {
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("error %v does not wrap ErrHeader", err)
			}
			if h != nil {
				t.Fatalf("header %+v returned with error %v", h, err)
			}
			return
		}
		used := len(data) - r.Len()
		if used > MaxHeaderLen {
			t.Fatalf("read %d bytes, more than MaxHeaderLen", used)
		}
		b, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", h, err)
		}
		// Without flags and extensions there is one encoding: ours.
		extAt := 6 + len(h.Service) + len(h.Client) + len(h.Host)
		if data[2] == 0 && binary.BigEndian.Uint16(data[extAt:]) == 0 && !bytes.Equal(b, data[:used]) {
			t.Fatalf("re-encoded % x, read % x", b, data[:used])
		}
		h2, err := ReadHeader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("decode re-encoding of %+v: %v", h, err)
		}
		if *h2 != *h {
			t.Fatalf("round trip changed %+v to %+v", h, h2)
		}
	})
}

func FuzzReadMessage(f *testing.F) {
	for _, m := range []*Message{
		{Type: MsgHello, Hello: &Hello{Version: 1, Token: "t", AgentID: "a", AgentVersion: "v", Services: []ServiceSpec{{Name: "web", Protocol: "http"}, {Protocol: "tls"}}}},
		{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "a"}},
		{Type: MsgWelcome, Welcome: &Welcome{GatewayID: "g", Services: []ServiceGrant{{Name: "web", Protocol: "http", URL: "https://web.example.test"}, {Error: "taken", Permanent: true}}}},
		{Type: MsgWelcome, Welcome: &Welcome{Error: "no", Permanent: true}},
		{Type: MsgDrain},
		{Type: MsgHello, Hello: &Hello{Version: 1, AgentID: "a", Cluster: true, Services: []ServiceSpec{{Protocol: "http"}}}},
		{Type: MsgWelcome, Welcome: &Welcome{GatewayID: "g1", Services: []ServiceGrant{{Name: "web", Protocol: "http"}},
			Gateways: []GatewayInfo{{ID: "g1", Addr: "192.0.2.1:443", Region: "eu"}, {ID: "g2", Addr: "[2001:db8::2]:8443"}}}},
		{Type: MsgGateways, Gateways: []GatewayInfo{{ID: "g1", Addr: "gw1.example.test:443"}, {ID: "g3", Addr: "192.0.2.3:443", Region: "us-east"}}},
		{Type: MsgGateways, Gateways: manyGateways(MaxGateways)},
	} {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		f.Add(buf.Bytes()[:buf.Len()-1])
	}
	for _, body := range []string{
		``, `{}`, `null`, `[]`, `{"type":"hello"}`, `{"type":"welcome"}`, `{"type":"drain","hello":{}}`,
		`{"type":"x"}`, `{"type":"hello","hello":{"services":null}}`, `{"type":"welcome","welcome":{"services":[]}}`,
		`{"type":"hello","hello":{"version":1e400}}`, `{"TYPE":"drain"}`, `{"type":"drain"}{}`,
		`{"type":"hello","hello":{"agent_id":"\ud800<>&\u2028"}}`, "{\"type\":\"hello\",\"hello\":{\"token\":\"\xff\"}}",
		`{"type":"gateways"}`, `{"type":"gateways","gateways":[]}`, `{"type":"gateways","gateways":null}`,
		`{"type":"gateways","gateways":[{"id":"a","addr":"h:1"},{"id":"a","addr":"h:2"}]}`,
		`{"type":"gateways","gateways":[{"id":"a b","addr":"h:1"}]}`, `{"type":"gateways","gateways":[{"id":"a","addr":"h:0"}]}`,
		`{"type":"gateways","gateways":[{"id":"a","addr":"[::1]:65535","region":"\u003c\u2028"}]}`,
		`{"type":"gateways","gateways":{}}`, `{"type":"gateways","gateways":[{"id":"\u0041","addr":":1"}]}`,
		`{"type":"welcome","welcome":{"gateways":[{"id":"a"}]}}`, `{"type":"drain","gateways":[{"id":""}]}`,
	} {
		f.Add(frame(body))
	}
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(binary.BigEndian.AppendUint32(nil, MaxMessageLen+1))

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadMessage(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrMessage) && err != io.EOF {
				t.Fatalf("error %v neither wraps ErrMessage nor is io.EOF", err)
			}
			if err == io.EOF && len(data) != 0 {
				t.Fatalf("io.EOF after %d bytes", len(data))
			}
			if m != nil {
				t.Fatalf("message %+v returned with error %v", m, err)
			}
			return
		}
		// Escaping may grow a message past the limit (each "<" becomes
		// \u003c); such a message cannot be sent again, only read.
		if body, err := json.Marshal(m); err != nil {
			t.Fatalf("marshal %+v: %v", m, err)
		} else if len(body) > MaxMessageLen {
			return
		}
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("re-encode %+v: %v", m, err)
		}
		m2, err := ReadMessage(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("decode re-encoding %q: %v", buf.Bytes(), err)
		}
		// An empty list and a missing one encode alike (omitempty), so
		// compare what goes on the wire, then the decoded values once they
		// are in that canonical form.
		b1, _ := json.Marshal(m)
		b2, _ := json.Marshal(m2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip changed\n%s\nto\n%s", b1, b2)
		}
		buf.Reset()
		if err := WriteMessage(&buf, m2); err != nil {
			t.Fatal(err)
		}
		m3, err := ReadMessage(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m2, m3) {
			t.Fatalf("second round trip changed %#v to %#v", m2, m3)
		}
	})
}
