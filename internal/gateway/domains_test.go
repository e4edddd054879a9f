package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/resolve"
	"github.com/webgw/webgw/internal/store"
)

// testZone is a DNS server on loopback answering from records that the
// test changes as it goes.
type testZone struct {
	addr string
	mu   sync.Mutex
	rrs  []mdns.RR // guarded by mu
}

func newTestZone(t *testing.T) *testZone {
	t.Helper()
	z := &testZone{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		exists := false
		z.mu.Lock()
		for _, rr := range z.rrs {
			if strings.EqualFold(rr.Header().Name, q.Name) {
				exists = true
				if rr.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		z.mu.Unlock()
		if !exists {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	z.addr = pc.LocalAddr().String()
	return z
}

// set replaces the zone's records, given in zone-file syntax.
func (z *testZone) set(t *testing.T, records ...string) {
	t.Helper()
	var rrs []mdns.RR
	for _, s := range records {
		rr, err := mdns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		rrs = append(rrs, rr)
	}
	z.mu.Lock()
	z.rrs = rrs
	z.mu.Unlock()
}

func TestDomainCheck(t *testing.T) {
	z := newTestZone(t)
	m := &domains{resolver: &resolve.Resolver{Servers: []string{z.addr}, Timeout: 2 * time.Second}, domain: "gw.test",
		addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}}
	d := model.Domain{Name: "www.example.test", Service: "shop", Token: "tok-1"}
	txt := `_webgw-challenge.www.example.test. 60 IN TXT "tok-1"`
	for _, tc := range []struct {
		name    string
		records []string
		reason  string // "" for proven
	}{
		{"nothing", nil, "TXT _webgw-challenge.www.example.test not found"},
		{"wrong token", []string{`_webgw-challenge.www.example.test. 60 IN TXT "tok-2"`}, "TXT _webgw-challenge.www.example.test holds another value"},
		{"txt only", []string{txt}, "no CNAME www.example.test to shop.gw.test, and no A/AAAA records"},
		{"cname elsewhere", []string{txt, "www.example.test. 60 IN CNAME x.example.net."}, "CNAME www.example.test points to x.example.net, want shop.gw.test"},
		{"cname", []string{txt, "www.example.test. 60 IN CNAME shop.gw.test."}, ""},
		{"cname upper case", []string{txt, "www.example.test. 60 IN CNAME SHOP.GW.TEST."}, ""},
		{"token among others", []string{`_webgw-challenge.www.example.test. 60 IN TXT "other"`, txt, "www.example.test. 60 IN CNAME shop.gw.test."}, ""},
		{"addresses", []string{txt, "www.example.test. 60 IN A 192.0.2.10", "www.example.test. 60 IN AAAA 2001:db8::10"}, ""},
		{"a foreign address", []string{txt, "www.example.test. 60 IN A 192.0.2.10", "www.example.test. 60 IN A 198.51.100.1"}, "has address 198.51.100.1, not one of this gateway's (192.0.2.10, 2001:db8::10)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z.set(t, tc.records...)
			got := m.check(context.Background(), d)
			if (tc.reason == "") != (got == "") || !strings.Contains(got, tc.reason) {
				t.Errorf("reason %q, want %q", got, tc.reason)
			}
		})
	}
	m.addrs = nil
	z.set(t, txt, "www.example.test. 60 IN A 192.0.2.10")
	if got := m.check(context.Background(), d); !strings.Contains(got, "no public address") {
		t.Errorf("without public addresses: %q", got)
	}
}

// TestDomainVerifyAndServe: a check on demand verifies and serves a domain
// at once; a recheck after the proof is gone keeps serving it through the
// grace period, then stops; the store's changes reach the served set.
func TestDomainVerifyAndServe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	z := newTestZone(t)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	m := &domains{store: st, log: slog.New(slog.DiscardHandler), resolver: &resolve.Resolver{Servers: []string{z.addr}, Timeout: 2 * time.Second},
		domain: "gw.test", grace: time.Hour, now: func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }}
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); m.watch(wctx) }()
	defer func() { wcancel(); <-done }()

	d := model.Domain{Name: "www.example.test", Tenant: "acme", Service: "shop", Token: "tok-1", State: model.DomainPending}
	if _, err := store.CreateDomain(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	served := func() bool { _, _, ok := m.lookup("www.example.test"); return ok }
	got, err := m.verify(ctx, d.Name)
	if err != nil || got.State != model.DomainPending || got.Reason == "" || served() {
		t.Fatalf("before the records: %+v %v, served %v", got, err, served())
	}
	z.set(t, `_webgw-challenge.www.example.test. 60 IN TXT "tok-1"`, "www.example.test. 60 IN CNAME shop.gw.test.")
	got, err = m.verify(ctx, d.Name)
	if err != nil || got.State != model.DomainVerified || got.Reason != "" {
		t.Fatalf("with the records: %+v %v", got, err)
	}
	if svc, tenant, ok := m.lookup("www.example.test"); !ok || svc != "shop" || tenant != "acme" {
		t.Fatalf("lookup = %q %q %v right after verify", svc, tenant, ok)
	}
	z.set(t, "www.example.test. 60 IN CNAME shop.gw.test.")
	advance(time.Minute)
	m.checkAll(ctx)
	if got, _, _ := store.GetDomain(ctx, st, d.Name); got.State != model.DomainVerified || got.FailingSince.IsZero() || !served() {
		t.Fatalf("within grace: %+v, served %v", got, served())
	}
	advance(time.Hour)
	m.checkAll(ctx)
	if got, _, _ := store.GetDomain(ctx, st, d.Name); got.State != model.DomainUnverified || !strings.Contains(got.Reason, "not found") || served() {
		t.Fatalf("after grace: %+v, served %v", got, served())
	}
	// Proven again, then removed from the store: the watch takes it away.
	z.set(t, `_webgw-challenge.www.example.test. 60 IN TXT "tok-1"`, "www.example.test. 60 IN CNAME shop.gw.test.")
	if got, err := m.verify(ctx, d.Name); err != nil || got.State != model.DomainVerified || !served() {
		t.Fatalf("proven again: %+v %v", got, err)
	}
	if err := store.DeleteDomain(ctx, st, d.Name, nil); err != nil {
		t.Fatal(err)
	}
	for served() {
		if ctx.Err() != nil {
			t.Fatal("a removed domain is still served")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := m.verify(ctx, d.Name); err == nil {
		t.Fatal("verify of a removed domain succeeded")
	}
}
