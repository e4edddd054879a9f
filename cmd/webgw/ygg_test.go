package main

import (
	"strings"
	"testing"
)

// TestGatewayYggFlags: bad --ygg-* values exit 2 naming the flag, before
// anything starts.
func TestGatewayYggFlags(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		contains string
	}{
		{[]string{"--ygg-listen", "udp://0.0.0.0:9001"}, `ygg_listen (--ygg-listen): "udp://0.0.0.0:9001": scheme "udp" not accepted`},
		{[]string{"--ygg-peer", "tls://peer.example.net"}, "ygg_peer (--ygg-peer)"},
		{[]string{"--ygg-listen", "tls://0.0.0.0:9001", "--ygg-allow-key", "abc"}, "ygg_allow_key (--ygg-allow-key)"},
		{[]string{"--ygg-password", "x"}, "need ygg_listen, ygg_peer or ygg_tun"},
		{[]string{"--ygg-tun", "bad/name"}, "ygg_tun (--ygg-tun)"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append([]string{"gateway", "--data-dir", t.TempDir()}, tt.args...)
			_, stderr, code := execute(t, args...)
			if code != 2 || !strings.Contains(stderr, tt.contains) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.contains)
			}
		})
	}
}
