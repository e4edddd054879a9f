package yamlconf

import (
	"strings"
	"testing"
	"time"
)

type limits struct {
	Idle time.Duration `yaml:"idle_timeout"`
}

type conf struct {
	Domain string   `yaml:"domain"`
	IPs    []string `yaml:"public_ip"`
	Limits limits   `yaml:"limits"`
	List   []limits `yaml:"list"`
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // substring of the error; "" for success
	}{
		{"empty", "", ""},
		{"valid", "domain: example.org\npublic_ip: [192.0.2.1]\nlimits:\n  idle_timeout: 5s\n", ""},
		{"unknown top key", "colour: blue\n", `line 1: unknown key "colour"`},
		{"unknown nested key", "limits:\n  foo: 1\n", `line 2: unknown key "limits.foo"`},
		{"unknown key in list", "list:\n  - bar: 2\n", `line 2: unknown key "list[0].bar"`},
		{"bad duration", "limits:\n  idle_timeout: soon\n", "(key limits.idle_timeout)"},
		{"bad type", "domain: [a, b]\n", "line 1"},
		{"syntax", "domain: [\n", "line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c conf
			err := Decode([]byte(tc.in), &c)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Decode: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("Decode accepted %q", tc.in)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			case tc.want != "" && strings.Contains(err.Error(), "yamlconf."):
				t.Fatalf("error %q names a Go type", err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("domain: x\nlimits:\n  idle_timeout: 1s\n"))
	f.Add([]byte("list: [{bar: 1}, {idle_timeout: x}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c conf
		_ = Decode(data, &c) // must not panic
	})
}
