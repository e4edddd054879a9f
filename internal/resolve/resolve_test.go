package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fakeResolver answers from records on a loopback UDP port.
func fakeResolver(t *testing.T, records ...string) string {
	t.Helper()
	zone := map[string][]mdns.RR{}
	names := map[string]bool{}
	for _, s := range records {
		rr, err := mdns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		k := strings.ToLower(rr.Header().Name) + "/" + mdns.TypeToString[rr.Header().Rrtype]
		zone[k] = append(zone[k], rr)
		names[strings.ToLower(rr.Header().Name)] = true
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		m.Answer = zone[name+"/"+mdns.TypeToString[q.Qtype]]
		if !names[name] {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestLookups(t *testing.T) {
	addr := fakeResolver(t,
		`_webgw-challenge.www.example.test. 60 IN TXT "tok" "en"`,
		`www.example.test. 60 IN CNAME Shop.GW.test.`,
		`apex.example.test. 60 IN A 192.0.2.1`,
		`apex.example.test. 60 IN AAAA 2001:db8::1`,
		`empty.example.test. 60 IN MX 10 mail.example.test.`,
	)
	r := &Resolver{Servers: []string{addr}, Timeout: 2 * time.Second}
	ctx := context.Background()
	if txt, err := r.TXT(ctx, "_webgw-challenge.www.example.test"); err != nil || len(txt) != 1 || txt[0] != "token" {
		t.Errorf("TXT = %q, %v; want [token]", txt, err)
	}
	if c, err := r.CNAME(ctx, "www.example.test"); err != nil || c != "shop.gw.test" {
		t.Errorf("CNAME = %q, %v", c, err)
	}
	if a, err := r.Addrs(ctx, "apex.example.test"); err != nil || len(a) != 2 || a[0] != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("Addrs = %v, %v", a, err)
	}
	if _, err := r.TXT(ctx, "missing.example.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("TXT of a missing name: %v, want ErrNotFound", err)
	}
	if _, err := r.Addrs(ctx, "empty.example.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Addrs of a name without addresses: %v, want ErrNotFound", err)
	}
	// A resolver that does not answer: an error, not ErrNotFound.
	dead := &Resolver{Servers: []string{"127.0.0.1:1"}, Timeout: 200 * time.Millisecond}
	if _, err := dead.TXT(ctx, "x.example.test"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("TXT through a dead resolver: %v, want a failure", err)
	}
}

func TestParseServer(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.53": "192.0.2.53:53", "127.0.0.1:5353": "127.0.0.1:5353",
		"2001:db8::53": "[2001:db8::53]:53", "[::1]:8053": "[::1]:8053"} {
		if got, err := ParseServer(in); err != nil || got != want {
			t.Errorf("ParseServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "dns.example", "1.2.3.4:x", "300.1.1.1"} {
		if _, err := ParseServer(bad); err == nil {
			t.Errorf("ParseServer(%q) accepted", bad)
		}
	}
}
