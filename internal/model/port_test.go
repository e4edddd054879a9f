package model_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/model"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in      string
		want    model.PortRange
		wantErr string // "" means valid; otherwise a substring of the error
	}{
		{"20000-29999", model.PortRange{First: 20000, Last: 29999}, ""},
		{"20000", model.PortRange{First: 20000, Last: 20000}, ""},
		{"20000-20000", model.PortRange{First: 20000, Last: 20000}, ""},
		{"1-65535", model.PortRange{First: 1, Last: 65535}, ""},
		{"65535", model.PortRange{First: 65535, Last: 65535}, ""},
		{"020000-020010", model.PortRange{First: 20000, Last: 20010}, ""},
		{"", model.PortRange{}, "a port number is missing"},
		{"0", model.PortRange{}, "port 0 is outside 1-65535"},
		{"0-100", model.PortRange{}, "port 0 is outside"},
		{"65536", model.PortRange{}, "port 65536 is outside"},
		{"20000-65536", model.PortRange{}, "port 65536 is outside"},
		{"99999999999999999999", model.PortRange{}, "outside 1-65535"},
		{"29999-20000", model.PortRange{}, "first port 29999 is above last port 20000"},
		{"20000-", model.PortRange{}, "missing"},
		{"-20000", model.PortRange{}, "missing"},
		{"20000-20010-20020", model.PortRange{}, `"20010-20020" is not a port number`},
		{"+80", model.PortRange{}, "not a port number"},
		{"-1", model.PortRange{}, "missing"},
		{" 80", model.PortRange{}, "not a port number"},
		{"80 ", model.PortRange{}, "not a port number"},
		{"20000:20010", model.PortRange{}, "not a port number"},
		{"20000..20010", model.PortRange{}, "not a port number"},
		{"http", model.PortRange{}, "not a port number"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := model.ParsePortRange(tt.in)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ParsePortRange(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
				}
				back, err := model.ParsePortRange(got.String())
				if err != nil || back != got {
					t.Errorf("ParsePortRange(%q.String() = %q) = %+v, %v; want it back", tt.in, got.String(), back, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParsePortRange(%q) = %+v, want an error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePortRange(%q): %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			// Every refusal names the accepted form.
			if !strings.Contains(err.Error(), "use FIRST-LAST such as 20000-29999, or one port such as 20000") {
				t.Errorf("ParsePortRange(%q): %q does not name the accepted form", tt.in, err)
			}
		})
	}
}

func TestPortRange(t *testing.T) {
	tests := []struct {
		r         model.PortRange
		size      int
		str       string
		in, notIn []int
	}{
		{model.PortRange{First: 20000, Last: 20099}, 100, "20000-20099", []int{20000, 20050, 20099}, []int{0, 19999, 20100, -1}},
		{model.PortRange{First: 22, Last: 22}, 1, "22", []int{22}, []int{21, 23}},
		{model.PortRange{First: 1, Last: 65535}, 65535, "1-65535", []int{1, 65535}, []int{0, 65536}},
		{model.PortRange{}, 0, "0", nil, []int{0, 1}},
		{model.PortRange{First: 10, Last: 5}, 0, "10-5", nil, []int{5, 7, 10}},
		{model.PortRange{First: 0, Last: 5}, 0, "0-5", nil, []int{0, 1, 5}},
		{model.PortRange{First: 65535, Last: 70000}, 0, "65535-70000", nil, []int{65535, 65536}},
	}
	for _, tt := range tests {
		if got := tt.r.Size(); got != tt.size {
			t.Errorf("%+v.Size() = %d, want %d", tt.r, got, tt.size)
		}
		if got := tt.r.String(); got != tt.str {
			t.Errorf("%+v.String() = %q, want %q", tt.r, got, tt.str)
		}
		if got := tt.r.Valid(); got != (tt.size > 0) {
			t.Errorf("%+v.Valid() = %v, want %v", tt.r, got, tt.size > 0)
		}
		for _, n := range tt.in {
			if !tt.r.Contains(n) {
				t.Errorf("%+v.Contains(%d) = false, want true", tt.r, n)
			}
		}
		for _, n := range tt.notIn {
			if tt.r.Contains(n) {
				t.Errorf("%+v.Contains(%d) = true, want false", tt.r, n)
			}
		}
	}
}

func TestValidatePort(t *testing.T) {
	for _, tt := range []struct {
		n  int
		ok bool
	}{{1, true}, {22, true}, {20000, true}, {65535, true}, {0, false}, {-1, false}, {65536, false}, {1 << 40, false}} {
		err := model.ValidatePort(tt.n)
		if (err == nil) != tt.ok {
			t.Errorf("ValidatePort(%d) = %v, want ok=%v", tt.n, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "use 1-65535") {
			t.Errorf("ValidatePort(%d) = %q, want it to name 1-65535", tt.n, err)
		}
	}
}

func TestPortProto(t *testing.T) {
	for _, tt := range []struct {
		p  model.PortProto
		ok bool
	}{{model.PortTCP, true}, {model.PortUDP, true}, {"", false}, {"TCP", false}, {"sctp", false}, {"http", false}} {
		if got := tt.p.Valid(); got != tt.ok {
			t.Errorf("PortProto(%q).Valid() = %v, want %v", tt.p, got, tt.ok)
		}
	}
}

func TestPortJSON(t *testing.T) {
	p := model.Port{Proto: model.PortUDP, Number: 20001, Tenant: "acme", Service: "dns", Created: time.Unix(1700000000, 0).UTC()}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"proto":"udp","number":20001,"tenant":"acme","service":"dns","created":"2023-11-14T22:13:20Z"}`
	if string(b) != want {
		t.Errorf("JSON %s, want %s", b, want)
	}
	var back model.Port
	if err := json.Unmarshal(b, &back); err != nil || back != p {
		t.Errorf("round trip = %+v, %v; want %+v", back, err, p)
	}
	if got := p.String(); got != "udp/20001" {
		t.Errorf("String() = %q, want udp/20001", got)
	}
}
