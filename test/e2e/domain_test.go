package e2e

import (
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsZone is a DNS server on loopback acting as the gateway's resolver,
// answering from records the test changes as it goes.
type dnsZone struct {
	addr string
	mu   sync.Mutex
	rrs  []dns.RR // guarded by mu
}

func startZone(t testing.TB) *dnsZone {
	t.Helper()
	z := &dnsZone{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
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
			m.Rcode = dns.RcodeNameError
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
func (z *dnsZone) set(t testing.TB, records ...string) {
	t.Helper()
	var rrs []dns.RR
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		rrs = append(rrs, rr)
	}
	z.mu.Lock()
	z.rrs = rrs
	z.mu.Unlock()
}

// TestDomainCustom: a custom domain is served only once its DNS records
// prove control, with a certificate of its own name; another tenant cannot
// take it; when the proof goes, it stops being served after the grace period.
func TestDomainCustom(t *testing.T) {
	t.Parallel()
	zone := startZone(t)
	g := startGateway(t, "--resolver", zone.addr, "--domain-recheck", "1s", "--domain-grace", "2s")
	acme := g.addTenant(t, "acme")
	beta := g.addTenant(t, "beta")
	g.expose(t, "--token", acme, "--name", "shop", textBackend(t, "hello from shop"))
	as := func(tok string, args ...string) []string {
		return append(append(args, g.admin()...), "--token", tok)
	}

	out := mustRun(t, as(acme, "domain", "add", "www.example.test", "--service", "shop")...)
	var d struct {
		Token  string `json:"token"`
		State  string `json:"state"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, as(acme, "domain", "show", "www.example.test", "--json")...)), &d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"TXT", "_webgw-challenge.www.example.test", d.Token, "CNAME", "shop.localhost", "webgw domain verify www.example.test"} {
		if d.Token == "" || !strings.Contains(out, want) {
			t.Fatalf("domain add output lacks %q:\n%s", want, out)
		}
	}

	url := "https://www.example.test:" + g.httpsPort() + "/"
	get := func() curlResult {
		return curl(t, "--resolve", "www.example.test:"+g.httpsPort()+":127.0.0.1", "--cacert", g.caFile, "-w", "\n%{http_code}", url)
	}
	if r := get(); r.code == 0 && strings.HasSuffix(r.stdout, "\n200") {
		t.Fatalf("served before proof: %s", r.stdout)
	}
	stdout, _, code := run(t, 30*time.Second, as(acme, "domain", "verify", "www.example.test")...)
	if code != 1 || !strings.Contains(stdout, "pending") || !strings.Contains(stdout, "TXT _webgw-challenge.www.example.test not found") {
		t.Fatalf("verify without records: exit %d: %s", code, stdout)
	}

	zone.set(t, `_webgw-challenge.www.example.test. 60 IN TXT "`+d.Token+`"`, "www.example.test. 60 IN CNAME shop.localhost.")
	if out := mustRun(t, as(acme, "domain", "verify", "www.example.test")...); !strings.Contains(out, "www.example.test: verified") {
		t.Fatalf("verify: %s", out)
	}
	// curl checks the certificate against the gateway CA and the name.
	if r := get(); r.code != 0 || r.stdout != "hello from shop\n200" {
		t.Fatalf("after proof: curl exit %d: %s%s", r.code, r.stderr, r.stdout)
	}

	// One domain, one tenant.
	mustRun(t, append([]string{"service", "add", "blog", "--tenant", "beta"}, g.admin()...)...)
	_, stderr, code := run(t, 30*time.Second, as(beta, "domain", "add", "www.example.test", "--service", "blog")...)
	if code != 1 || !strings.Contains(stderr, "another tenant") || !strings.Contains(stderr, "409") {
		t.Fatalf("second tenant: exit %d: %s", code, stderr)
	}
	if out := mustRun(t, as(acme, "domain", "list")...); !strings.Contains(out, "www.example.test") || !strings.Contains(out, "verified") {
		t.Fatalf("list: %s", out)
	}

	// The proof goes: served through the grace period, then not.
	zone.set(t, "www.example.test. 60 IN CNAME shop.localhost.")
	if r := get(); r.code != 0 || r.stdout != "hello from shop\n200" {
		t.Fatalf("within the grace period: curl exit %d: %s%s", r.code, r.stderr, r.stdout)
	}
	waitFor(t, 20*time.Second, "the domain to be unverified", func() bool {
		if err := json.Unmarshal([]byte(mustRun(t, as(acme, "domain", "show", "www.example.test", "--json")...)), &d); err != nil {
			t.Fatal(err)
		}
		return d.State == "unverified"
	})
	if !strings.Contains(d.Reason, "not found") {
		t.Errorf("reason %q", d.Reason)
	}
	if r := get(); r.code == 0 {
		t.Fatalf("still served after the grace period: %s", r.stdout)
	}
}
