package e2e

import (
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// txtServer is a tiny DNS server standing in for the Internet's DNS: it
// answers TXT records from a map the test changes, NXDOMAIN for the rest.
type txtServer struct {
	addr string
	mu   sync.Mutex
	txt  map[string]string // FQDN -> text; guarded by mu
}

func startTXTServer(t *testing.T) *txtServer {
	t.Helper()
	ts := &txtServer{txt: map[string]string{}}
	srv := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		ts.mu.Lock()
		v, ok := ts.txt[strings.ToLower(q.Name)]
		ts.mu.Unlock()
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeTXT:
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{v}})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown() })
	ts.addr = srv.PacketConn.LocalAddr().String()
	return ts
}

func (ts *txtServer) set(name, text string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.txt[dns.Fqdn(name)] = text
}

// TestZone: a tenant adds a zone, proves control with a TXT record found
// through --resolver, adds records, and the gateway answers them
// authoritatively; another tenant cannot take the zone nor touch it.
func TestZone(t *testing.T) {
	t.Parallel()
	needTool(t, "dig")
	res := startTXTServer(t)
	g := startGateway(t, "--domain", "gw.test", "--public-ip", "192.0.2.10", "--resolver", res.addr)
	acme := g.addTenant(t, "acme")
	beta := g.addTenant(t, "beta")
	as := func(tok string) []string { return []string{"--api-addr", g.apiAddr, "--token", tok} }

	out := mustRun(t, append([]string{"dns", "zone", "add", "example.test"}, as(acme)...)...)
	m := regexp.MustCompile(`_webgw-challenge\.example\.test\. TXT "(webgw-[0-9a-f]+)"`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "example.test. NS ns1.gw.test.") || !strings.Contains(out, "example.test. NS ns2.gw.test.") {
		t.Fatalf("dns zone add: want the TXT record with the token and the NS records:\n%s", out)
	}
	token := m[1]

	// Not yet proved: refused with the reason; not served.
	_, errOut, code := run(t, 30*time.Second, append([]string{"dns", "zone", "verify", "example.test"}, as(acme)...)...)
	if code == 0 || !strings.Contains(errOut, "not verified: no TXT record at _webgw-challenge.example.test") {
		t.Errorf("verify before the TXT exists: exit %d, stderr:\n%s", code, errOut)
	}
	if a := g.dig(t, "www.example.test", "A"); !strings.Contains(a, "status: REFUSED") {
		t.Errorf("a pending zone is answered:\n%s", a)
	}
	// Another tenant: the same zone, or one inside it, is refused.
	for _, z := range []string{"example.test", "sub.example.test"} {
		_, errOut, code = run(t, 30*time.Second, append([]string{"dns", "zone", "add", z}, as(beta)...)...)
		if code == 0 || !strings.Contains(errOut, "another tenant") || !strings.Contains(errOut, "409") {
			t.Errorf("beta adding %s: exit %d, stderr:\n%s", z, code, errOut)
		}
	}

	res.set("_webgw-challenge.example.test", token)
	if out := mustRun(t, append([]string{"dns", "zone", "verify", "example.test"}, as(acme)...)...); !strings.Contains(out, "verified") {
		t.Errorf("verify: %s", out)
	}

	mustRun(t, append([]string{"service", "add", "shop", "--tenant", "acme"}, g.admin()...)...)
	for _, rec := range [][]string{
		{"www", "A", "192.0.2.1"},
		{"@", "MX", "10", "mail.example.test."},
		{"@", "TXT", "v=spf1 -all"},
		{"alias", "CNAME", "www"},
		{"shop", "--service", "shop", "--ttl", "300"},
	} {
		id := strings.TrimSpace(mustRun(t, append(append([]string{"dns", "record", "add", "example.test"}, rec...), as(acme)...)...))
		if id == "" {
			t.Errorf("record add %v printed no id", rec)
		}
	}
	// Invalid records: exit 2 naming the field.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"www", "CNAME", "other.test."}, "CNAME"},
		{[]string{"www", "A", "not-an-ip"}, "data:"},
		{[]string{"www", "NS", "ns.other.test."}, "type:"},
	} {
		_, errOut, code = run(t, 30*time.Second, append(append([]string{"dns", "record", "add", "example.test"}, bad.args...), as(acme)...)...)
		if code != 2 || !strings.Contains(errOut, bad.want) {
			t.Errorf("record add %v: exit %d, stderr:\n%s", bad.args, code, errOut)
		}
	}
	// A record in a zone the tenant does not own: refused.
	_, errOut, code = run(t, 30*time.Second, append([]string{"dns", "record", "add", "example.test", "evil", "A", "192.0.2.66"}, as(beta)...)...)
	if code == 0 || !strings.Contains(errOut, "belongs to another tenant") {
		t.Errorf("beta adding a record to acme's zone: exit %d, stderr:\n%s", code, errOut)
	}
	list := mustRun(t, append([]string{"dns", "record", "list", "example.test"}, as(acme)...)...)
	if !strings.Contains(squash(list), "shop 300 service shop") || strings.Count(list, "\n") != 6 {
		t.Errorf("record list:\n%s", list)
	}

	// The gateway answers them, live (the watch may lag the API by a moment).
	waitFor(t, 10*time.Second, "the verified zone to be answered", func() bool {
		return strings.Contains(g.dig(t, "+short", "www.example.test", "A"), "192.0.2.1")
	})
	for _, q := range []struct {
		args []string
		want []string
	}{
		{[]string{"www.example.test", "A"}, []string{"www.example.test. 60 IN A 192.0.2.1"}},
		{[]string{"example.test", "MX"}, []string{"example.test. 60 IN MX 10 mail.example.test."}},
		{[]string{"example.test", "TXT"}, []string{`example.test. 60 IN TXT "v=spf1 -all"`}},
		{[]string{"alias.example.test", "A"}, []string{"alias.example.test. 60 IN CNAME www.example.test.", "www.example.test. 60 IN A 192.0.2.1"}},
		{[]string{"shop.example.test", "A"}, []string{"shop.example.test. 300 IN A 192.0.2.10"}},
		{[]string{"example.test", "NS"}, []string{"example.test. 60 IN NS ns1.gw.test.", "example.test. 60 IN NS ns2.gw.test."}},
		{[]string{"example.test", "SOA"}, []string{"example.test. 60 IN SOA ns1.gw.test. hostmaster.example.test."}},
	} {
		a := g.dig(t, q.args...)
		for _, w := range q.want {
			if !strings.Contains(squash(a), w) || !strings.Contains(a, "flags: qr aa") || !strings.Contains(a, "status: NOERROR") {
				t.Errorf("dig %v: want %q with aa:\n%s", q.args, w, a)
			}
		}
	}
	// The name pointed at the service is served as that service (no agent
	// yet: 503 from the gateway, over a certificate for the name); a name
	// of the zone that is not pointed at a service is not served.
	https := func(host string) curlResult {
		return curl(t, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", g.caFile,
			"--resolve", host+":"+g.httpsPort()+":127.0.0.1", "https://"+host+":"+g.httpsPort()+"/")
	}
	if r := https("shop.example.test"); r.code != 0 || r.stdout != "503" {
		t.Errorf("https://shop.example.test (pointed at service shop): exit %d, status %q; want 503 from the service", r.code, r.stdout)
	}
	if r := https("www.example.test"); r.code == 0 {
		t.Errorf("https://www.example.test (not pointed at a service) was served: %q", r.stdout)
	}
	if nx := g.dig(t, "nope.example.test", "A"); !strings.Contains(nx, "status: NXDOMAIN") || !strings.Contains(nx, "flags: qr aa") ||
		!strings.Contains(nx, "SOA\tns1.gw.test. hostmaster.example.test.") {
		t.Errorf("a missing name is not an authoritative NXDOMAIN with the zone's SOA:\n%s", nx)
	}
	// The gateway's own domain is answered as before.
	if a := strings.TrimSpace(g.dig(t, "+short", "gw.test", "A")); a != "192.0.2.10" {
		t.Errorf("dig gw.test A = %q", a)
	}

	// Removed: no longer answered.
	mustRun(t, append([]string{"dns", "zone", "remove", "example.test"}, as(acme)...)...)
	waitFor(t, 10*time.Second, "the removed zone to be refused", func() bool {
		return strings.Contains(g.dig(t, "www.example.test", "A"), "status: REFUSED")
	})
}
