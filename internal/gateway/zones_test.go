package gateway

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/resolve"
	"github.com/webgw/webgw/internal/store"
)

// TestRecheckZones: a verified zone whose TXT proof goes away stays
// verified for the grace period, then goes back to pending; one whose
// proof is there stays verified.
func TestRecheckZones(t *testing.T) {
	var mu sync.Mutex
	txt := map[string]string{"_webgw-challenge.kept.test.": "tok-kept", "_webgw-challenge.lost.test.": "tok-lost"}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		mu.Lock()
		v, ok := txt[r.Question[0].Name]
		mu.Unlock()
		if ok {
			m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET, Ttl: 1}, Txt: []string{v}})
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	defer srv.Shutdown()

	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for _, z := range []model.Zone{
		{Name: "kept.test", Tenant: "a", Token: "tok-kept", State: model.ZoneVerified},
		{Name: "lost.test", Tenant: "a", Token: "tok-lost", State: model.ZoneVerified},
	} {
		if _, err := store.CreateZone(ctx, st, z); err != nil {
			t.Fatal(err)
		}
	}
	g := &Gateway{store: st, log: slog.New(slog.DiscardHandler), resolver: &resolve.Resolver{Servers: []string{pc.LocalAddr().String()}, Timeout: time.Second}}
	state := func(name string) model.ZoneState {
		z, _, err := store.GetZone(ctx, st, name)
		if err != nil {
			t.Fatal(err)
		}
		return z.State
	}
	gone := map[string]time.Time{}
	now := time.Now()
	g.recheckZonesOnce(ctx, time.Hour, gone, now)
	if state("kept.test") != model.ZoneVerified || state("lost.test") != model.ZoneVerified {
		t.Fatal("a zone with its proof in place changed state")
	}
	mu.Lock()
	delete(txt, "_webgw-challenge.lost.test.")
	mu.Unlock()
	g.recheckZonesOnce(ctx, time.Hour, gone, now.Add(time.Minute))
	if state("lost.test") != model.ZoneVerified {
		t.Error("a zone went back to pending at once, without its grace period")
	}
	g.recheckZonesOnce(ctx, time.Hour, gone, now.Add(2*time.Hour))
	if state("lost.test") != model.ZonePending {
		t.Error("a zone whose proof has been gone past the grace period is still verified")
	}
	if state("kept.test") != model.ZoneVerified {
		t.Error("the zone with its proof went back to pending")
	}
}
