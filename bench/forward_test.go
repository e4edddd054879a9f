package main

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestForwardDirect runs the forward part's measurements against the
// forward backend's servers in this process (no webgw): the protocol of
// fwdbackend.go and the clients of forward.go agree, and every figure is
// positive.
func TestForwardDirect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go serveFwdTCP(ln)
	go serveUDPEcho(pc)
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tcp, udp := ln.Addr().String(), pc.LocalAddr().String()

	for _, tc := range []struct {
		mode    byte
		streams int
	}{{fwdDownload, 1}, {fwdDownload, fwdStreams}, {fwdUpload, 1}, {fwdUpload, fwdStreams}} {
		br, err := fwdBulk(ctx, tcp, tc.mode, tc.streams, 4<<20, nil, nil)
		if err != nil {
			t.Fatalf("bulk %q x%d: %v", tc.mode, tc.streams, err)
		}
		if br.mibps <= 0 {
			t.Errorf("bulk %q x%d: %v MiB/s", tc.mode, tc.streams, br.mibps)
		}
	}

	h := &harness{cfg: Config{Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond}}
	h.cfg.complete()
	cr, err := h.connRate(ctx, tcp, nil, nil)
	if err != nil {
		t.Fatalf("connRate: %v", err)
	}
	if cr.rate <= 0 || cr.p50 <= 0 || cr.errors != 0 {
		t.Errorf("connRate: %.0f conn/s, p50 %s, %d errors (first: %v)", cr.rate, cr.p50, cr.errors, cr.firstErr)
	}

	h.cfg.UDPRate = 5000
	ur, err := h.udpRun(ctx, udp, nil, nil)
	if err != nil {
		t.Fatalf("udpRun: %v", err)
	}
	if ur.sent < 1000 || ur.recv <= 0 || ur.pps <= 0 || ur.p50 <= 0 {
		t.Errorf("udpRun: sent %d, received %d, %.0f pps, p50 %s", ur.sent, ur.recv, ur.pps, ur.p50)
	}
	t.Logf("conn/s %.0f (p50 %s); udp %d sent, %d back (%.2f%% lost), p50 %s", cr.rate, cr.p50, ur.sent, ur.recv, ur.lossPct, ur.p50)
}
