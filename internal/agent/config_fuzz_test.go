package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadConfig feeds arbitrary bytes to the agent's YAML config loader and
// validation: they must never panic, and a config that validates must name
// at least one gateway and one service with a parsed target.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("gateways:\n  - addr: 127.0.0.1:8443\nservices:\n  - name: shop\n    target: http://127.0.0.1:3000\n"))
	f.Add([]byte("token: wgw_x\ngateways: [{addr: '[::1]:443', fingerprint: 'sha256:00'}]\nservices: [{target: 'h2c://[::1]:1'}]\ndrain_timeout: 5s\n"))
	f.Add([]byte("gateways: [{addr: 'gw:443'}]\nservices:\n  - name: ssh\n    target: tcp://127.0.0.1:22\n    port: 2222\n  - target: udp://[::1]:53\nudp_idle_timeout: 30s\n"))
	f.Add([]byte("gateways: [{addr: 'gw:443'}]\nservices: [{target: 'tcp://127.0.0.1', port: 70000}]\n"))
	f.Add([]byte("gateways: [{addr: 'gw:443'}]\nservices: [{target: 'http://127.0.0.1:1', port: 80}]\n"))
	f.Add([]byte("gateways: [{addr: 'gw:443'}]\nservices: [{target: 'tcp://127.0.0.1:5432', proxy_protocol: 2}, {target: 'udp://127.0.0.1:53', proxy_protocol: 1}]\n"))
	f.Add([]byte("version: 2\n"))
	f.Add([]byte("services: {name: x}\n"))
	f.Add([]byte("gateways:\n  - addr: x\n    colour: blue\n"))
	f.Add([]byte("\x00\xff: ["))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(p)
		if err != nil {
			if !IsConfigError(err) {
				t.Fatalf("LoadConfig error is not a ConfigError: %v", err)
			}
			return
		}
		// CA files named by the input are not read in validation, only stat'ed.
		svcs, err := c.validate()
		if err != nil {
			if !IsConfigError(err) {
				t.Fatalf("validate error is not a ConfigError: %v", err)
			}
			return
		}
		if len(c.Gateways) == 0 || len(svcs) == 0 {
			t.Fatalf("valid config without gateways or services: %+v", c)
		}
		for _, s := range svcs {
			if s.addr == "" || !s.protocol.Valid() || s.port < 0 || s.port > 65535 || (s.port != 0 && !s.protocol.Forwarded()) {
				t.Fatalf("valid config with an unparsed service: %+v", s)
			}
		}
	})
}
