package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// startServer serves s on loopback UDP and TCP ports (the same number)
// until the test ends and returns the address.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return pc.LocalAddr().String()
}

func testServer(names ...string) *Server {
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	return &Server{
		Domain:     "gw.test",
		Addrs:      []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")},
		Exists:     func(l string) bool { return set[l] },
		CAAIssuers: []string{"letsencrypt.org"},
		Serial:     2026112401,
	}
}

// query asks addr over net ("udp" or "tcp"), with EDNS0 when edns > 0.
func query(t *testing.T, addr, network, name string, qtype uint16, edns uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &mdns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: edns}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, mdns.TypeToString[qtype], err)
	}
	return r
}

func rrStrings(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		h := rr.Header()
		out = append(out, strings.TrimPrefix(rr.String(), h.String()))
	}
	return out
}

func TestAnswers(t *testing.T) {
	addr := startServer(t, testServer("shop"))
	tests := []struct {
		name    string
		qtype   uint16
		rcode   int
		answer  []string // record data, in order
		authSOA bool     // the SOA in the authority section (negative answers)
	}{
		{"gw.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.10"}, false},
		{"GW.Test", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"2001:db8::10"}, false},
		{"gw.test", mdns.TypeSOA, mdns.RcodeSuccess, []string{"ns1.gw.test. hostmaster.gw.test. 2026112401 3600 600 604800 60"}, false},
		{"gw.test", mdns.TypeNS, mdns.RcodeSuccess, []string{"ns1.gw.test.", "ns2.gw.test."}, false},
		{"gw.test", mdns.TypeCAA, mdns.RcodeSuccess, []string{`0 issue "letsencrypt.org"`, `0 issuewild "letsencrypt.org"`}, false},
		{"gw.test", mdns.TypeMX, mdns.RcodeSuccess, nil, true},
		{"shop.gw.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.10"}, false},
		{"shop.gw.test", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"2001:db8::10"}, false},
		{"shop.gw.test", mdns.TypeTXT, mdns.RcodeSuccess, nil, true},
		{"ns2.gw.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.10"}, false},
		{"nope.gw.test", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"a.shop.gw.test", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"example.org", mdns.TypeA, mdns.RcodeRefused, nil, false},
		{"xgw.test", mdns.TypeA, mdns.RcodeRefused, nil, false},
	}
	for _, tt := range tests {
		for _, network := range []string{"udp", "tcp"} {
			r := query(t, addr, network, tt.name, tt.qtype, 0)
			what := network + " " + tt.name + " " + mdns.TypeToString[tt.qtype]
			if r.Rcode != tt.rcode {
				t.Errorf("%s: rcode %s, want %s", what, mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tt.rcode])
			}
			if got := strings.Join(rrStrings(r.Answer), " | "); got != strings.Join(tt.answer, " | ") {
				t.Errorf("%s: answer %q, want %q", what, got, strings.Join(tt.answer, " | "))
			}
			if tt.rcode != mdns.RcodeRefused && !r.Authoritative {
				t.Errorf("%s: aa not set", what)
			}
			if tt.rcode == mdns.RcodeRefused && r.Authoritative {
				t.Errorf("%s: aa set on a name outside the zone", what)
			}
			hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == mdns.TypeSOA
			if hasSOA != tt.authSOA {
				t.Errorf("%s: authority %v, want the SOA: %v", what, r.Ns, tt.authSOA)
			}
		}
	}
	// NS answers carry the name servers' glue.
	r := query(t, addr, "udp", "gw.test", mdns.TypeNS, 0)
	if len(r.Extra) != 4 {
		t.Errorf("NS glue %v, want A and AAAA of ns1 and ns2", r.Extra)
	}
}

// TestLive: a service that appears is answered at once, one that goes is
// NXDOMAIN at once.
func TestLive(t *testing.T) {
	live := map[string]bool{}
	var mu = make(chan struct{}, 1)
	s := testServer()
	s.Exists = func(l string) bool { mu <- struct{}{}; defer func() { <-mu }(); return live[l] }
	addr := startServer(t, s)
	if r := query(t, addr, "udp", "new.gw.test", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("before: %s", mdns.RcodeToString[r.Rcode])
	}
	mu <- struct{}{}
	live["new"] = true
	<-mu
	if r := query(t, addr, "udp", "new.gw.test", mdns.TypeA, 0); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("after: %s %v", mdns.RcodeToString[r.Rcode], r.Answer)
	}
}

// TestTruncation: an answer too large for a plain UDP message is truncated
// (TC), and the whole of it comes over TCP; EDNS0 raises the limit.
func TestTruncation(t *testing.T) {
	s := testServer()
	s.Addrs = nil
	for i := range 60 {
		s.Addrs = append(s.Addrs, netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}))
	}
	addr := startServer(t, s)
	r := query(t, addr, "udp", "gw.test", mdns.TypeA, 0)
	if !r.Truncated || len(r.Answer) >= 60 {
		t.Errorf("UDP without EDNS0: TC %v with %d answers, want TC and fewer than 60", r.Truncated, len(r.Answer))
	}
	r.Compress = true // as it came on the wire
	if r.Len() > mdns.MinMsgSize {
		t.Errorf("UDP answer of %d bytes, more than 512", r.Len())
	}
	if r := query(t, addr, "tcp", "gw.test", mdns.TypeA, 0); r.Truncated || len(r.Answer) != 60 {
		t.Errorf("TCP: TC %v with %d answers, want all 60", r.Truncated, len(r.Answer))
	}
	r = query(t, addr, "udp", "gw.test", mdns.TypeA, 4096)
	if r.Truncated || len(r.Answer) != 60 || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != maxUDPSize {
		t.Errorf("UDP with EDNS0 4096: TC %v, %d answers, OPT %v; want all 60 and our size %d", r.Truncated, len(r.Answer), r.IsEdns0(), maxUDPSize)
	}
}

func TestBadQueries(t *testing.T) {
	s := testServer("shop")
	// Not a query.
	m := new(mdns.Msg)
	m.SetQuestion("shop.gw.test.", mdns.TypeA)
	m.Opcode = mdns.OpcodeUpdate
	if r := s.Answer(m); r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("UPDATE: %s, want NOTIMP", mdns.RcodeToString[r.Rcode])
	}
	// Two questions.
	m = new(mdns.Msg)
	m.SetQuestion("shop.gw.test.", mdns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	if r := s.Answer(m); r.Rcode != mdns.RcodeFormatError {
		t.Errorf("two questions: %s, want FORMERR", mdns.RcodeToString[r.Rcode])
	}
	// An unknown EDNS version.
	m = new(mdns.Msg)
	m.SetQuestion("shop.gw.test.", mdns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	if r := s.Answer(m); r.Rcode != mdns.RcodeBadVers {
		t.Errorf("EDNS version 1: %s, want BADVERS", mdns.RcodeToString[r.Rcode])
	}
	// A response is not answered.
	m = new(mdns.Msg)
	m.SetQuestion("shop.gw.test.", mdns.TypeA)
	m.Response = true
	if r := s.Answer(m); r != nil {
		t.Errorf("a response was answered: %v", r)
	}
}

// FuzzAnswer: any message a stranger sends is answered without a panic,
// and the answer packs.
func FuzzAnswer(f *testing.F) {
	for _, q := range []struct {
		name string
		t    uint16
	}{{"shop.gw.test.", mdns.TypeA}, {"gw.test.", mdns.TypeNS}, {"x.y.gw.test.", mdns.TypeANY}, {"example.org.", mdns.TypeSOA}} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.t)
		m.SetEdns0(4096, true)
		b, _ := m.Pack()
		f.Add(b)
	}
	s := testServer("shop")
	s.serial = 1
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(mdns.Msg)
		if err := m.Unpack(b); err != nil {
			return
		}
		r := s.Answer(m)
		if r == nil {
			return
		}
		r.Truncate(mdns.MinMsgSize)
		if _, err := r.Pack(); err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, r)
		}
	})
}
