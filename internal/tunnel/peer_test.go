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

func TestPeerToken(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	tok := PeerToken(secret, "aaaa", "bbbb")
	if len(tok) != 64 || strings.ToLower(tok) != tok {
		t.Fatalf("token %q, want 64 lower-case hex digits", tok)
	}
	if !CheckPeerToken(secret, "aaaa", "bbbb", tok) {
		t.Fatal("CheckPeerToken refused the right token")
	}
	if !CheckPeerToken(secret, "aaaa", "bbbb", strings.ToUpper(tok)) {
		t.Error("CheckPeerToken refused the token in upper case")
	}
	other := bytes.Repeat([]byte{8}, 32)
	for _, c := range []struct {
		name          string
		secret        []byte
		from, to, tok string
	}{
		{"swapped ids", secret, "bbbb", "aaaa", tok},
		{"another secret", other, "aaaa", "bbbb", tok},
		{"another sender", secret, "aaab", "bbbb", tok},
		{"shifted boundary", secret, "aaaab", "bbb", tok},
		{"truncated", secret, "aaaa", "bbbb", tok[:62]},
		{"not hex", secret, "aaaa", "bbbb", "zz" + tok[2:]},
		{"empty", secret, "aaaa", "bbbb", ""},
		{"id too long", secret, strings.Repeat("a", MaxPeerIDLen+1), "bbbb", PeerToken(secret, strings.Repeat("a", MaxPeerIDLen+1), "bbbb")},
	} {
		if CheckPeerToken(c.secret, c.from, c.to, c.tok) {
			t.Errorf("%s: CheckPeerToken accepted", c.name)
		}
	}
	// The boundary between the ids is part of the input.
	if PeerToken(secret, "ab", "c") == PeerToken(secret, "a", "bc") {
		t.Error("ids ab,c and a,bc give the same token")
	}
}

func TestPeerMessageRoundTrip(t *testing.T) {
	for _, m := range []*PeerMessage{
		{Type: MsgHello, Hello: &PeerHello{Version: 1, From: "a1", To: "b2", Token: "00ff"}},
		{Type: MsgWelcome, Welcome: &PeerWelcome{GatewayID: "b2"}},
		{Type: MsgWelcome, Welcome: &PeerWelcome{Error: "no"}},
	} {
		var buf bytes.Buffer
		if err := WritePeerMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		got, err := ReadPeerMessage(&buf)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip of %+v = %+v, %v", m, got, err)
		}
	}
	for _, m := range []*PeerMessage{
		nil,
		{Type: MsgHello},
		{Type: MsgHello, Hello: &PeerHello{To: "b"}},
		{Type: MsgHello, Hello: &PeerHello{From: "a", To: strings.Repeat("b", MaxPeerIDLen+1)}},
		{Type: MsgWelcome},
		{Type: MsgDrain},
	} {
		if err := WritePeerMessage(io.Discard, m); !errors.Is(err, ErrMessage) {
			t.Errorf("WritePeerMessage(%+v) = %v, want ErrMessage", m, err)
		}
	}
}

func FuzzReadPeerMessage(f *testing.F) {
	for _, m := range []*PeerMessage{
		{Type: MsgHello, Hello: &PeerHello{Version: 1, From: "0a1b2c3d4e5f", To: "f5e4d3c2b1a0", Token: PeerToken([]byte("s"), "0a1b2c3d4e5f", "f5e4d3c2b1a0")}},
		{Type: MsgHello, Hello: &PeerHello{From: strings.Repeat("a", MaxPeerIDLen), To: "b"}},
		{Type: MsgWelcome, Welcome: &PeerWelcome{GatewayID: "g"}},
		{Type: MsgWelcome, Welcome: &PeerWelcome{Error: "unknown member"}},
	} {
		var buf bytes.Buffer
		if err := WritePeerMessage(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		f.Add(buf.Bytes()[:buf.Len()-1])
	}
	for _, body := range []string{
		``, `{}`, `null`, `[]`, `{"type":"hello"}`, `{"type":"welcome"}`, `{"type":"drain"}`,
		`{"type":"hello","hello":{"from":"","to":"b"}}`, `{"type":"hello","hello":{"from":"a","to":"b","version":1e400}}`,
		`{"type":"hello","hello":{"from":"a","to":"b"}}{}`, "{\"type\":\"hello\",\"hello\":{\"from\":\"\xff\",\"to\":\"b\"}}",
		`{"type":"welcome","welcome":{"error":"\ud800<>&"}}`,
	} {
		f.Add(frame(body))
	}
	f.Add([]byte{0, 0})
	f.Add(binary.BigEndian.AppendUint32(nil, MaxPeerMessageLen+1))

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadPeerMessage(bytes.NewReader(data))
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
		if m.Type == MsgHello && (m.Hello.From == "" || len(m.Hello.From) > MaxPeerIDLen || m.Hello.To == "" || len(m.Hello.To) > MaxPeerIDLen) {
			t.Fatalf("hello with ids %q, %q accepted", m.Hello.From, m.Hello.To)
		}
		// Escaping may grow a message past the limit; such a message
		// cannot be sent again, only read.
		if body, err := json.Marshal(m); err != nil {
			t.Fatalf("marshal %+v: %v", m, err)
		} else if len(body) > MaxPeerMessageLen {
			return
		}
		var buf bytes.Buffer
		if err := WritePeerMessage(&buf, m); err != nil {
			t.Fatalf("re-encode %+v: %v", m, err)
		}
		m2, err := ReadPeerMessage(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("decode re-encoding %q: %v", buf.Bytes(), err)
		}
		b1, _ := json.Marshal(m)
		b2, _ := json.Marshal(m2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip changed\n%s\nto\n%s", b1, b2)
		}
	})
}
