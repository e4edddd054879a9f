package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// urlAt is url (https://NAME.localhost:PORT) with the port of g's HTTPS
// address: the same name through another gateway.
func urlAt(g *gateway, url string) string {
	return "https://" + hostOf(url) + ":" + g.httpsPort()
}

// statusAt GETs url through g's HTTPS address with curl (the name resolved
// to g), like status.
func statusAt(t testing.TB, g *gateway, url string) (string, string) {
	t.Helper()
	h, _, _ := net.SplitHostPort(g.httpsAddr)
	r := curl(t, "--max-time", "1", "--cacert", g.caFile, "--resolve", hostOf(url)+":"+g.httpsPort()+":"+h,
		"-w", "\n%{http_code}", url)
	body, code, _ := cutLast(r.stdout, "\n")
	if code == "" {
		code = "000"
	}
	return code, body
}

// TestRelay: two gateways on one etcd, an agent connected to the first
// only. The second gateway (on another loopback address, as a second host
// would be) relays what it holds no tunnel for to the first, over a peer
// session: HTTPS (curl, HTTP/2, a WebSocket), a quick tunnel it does not
// know from the store, a TCP port and a UDP port. When the agent goes, the
// second gateway answers 502/503 at once, not a hang.
func TestRelay(t *testing.T) {
	t.Parallel()
	etcd := startEtcd(t)
	rng, _ := freePortRange(t, 4)
	g1 := startGateway(t, "--store", "etcd://"+etcd, "--port-range", rng)
	g2 := startGateway(t, "--store", "etcd://"+etcd, "--port-range", rng, "--https-addr", "127.0.0.2:0")
	if !strings.HasPrefix(g2.httpsAddr, "127.0.0.2:") {
		t.Fatalf("second gateway's https on %s, want 127.0.0.2", g2.httpsAddr)
	}
	tok := g1.addTenant(t, "acme")
	shopAgent, shopURL := g1.expose(t, "--max-gateways", "1", "--token", tok, "--name", "shop", textBackend(t, "relayed\n"))
	shop2 := urlAt(g2, shopURL)

	// The second gateway attaches its peer session to shop as soon as the
	// first publishes it; from then on every request is served.
	waitFor(t, 10*time.Second, "shop through the second gateway", func() bool {
		code, _ := statusAt(t, g2, shop2)
		return code == "200"
	})
	for i := range 10 {
		if code, body := statusAt(t, g2, shop2); code != "200" || body != "relayed\n" {
			t.Fatalf("request %d through the second gateway = %s %q, want 200 relayed", i, code, body)
		}
	}

	// HTTP/2 from the client; HTTP/1.1 in the tunnel streams.
	c := g2.client(t, caPool(t, g2.caFile))
	resp, err := c.Get(shop2)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || string(body) != "relayed\n" {
		t.Errorf("HTTP/2 GET through the second gateway = %s %s %q", resp.Proto, resp.Status, body)
	}

	// A WebSocket, upgraded through both gateways.
	_, wsURL := g1.expose(t, "--max-gateways", "1", "--token", tok, "--name", "ws", wsEcho(t))
	waitFor(t, 10*time.Second, "ws through the second gateway", func() bool {
		code, _ := statusAt(t, g2, urlAt(g2, wsURL))
		return code == "200"
	})
	ws := g2.dialWS(t, urlAt(g2, wsURL))
	for _, msg := range []string{"one", "two", strings.Repeat("x", 100000)} {
		wsRoundTrip(t, ws, msg)
	}
	ws.Close()

	// A quick tunnel: the name is the first gateway's alone (not in the
	// store), and the second learns it only from the cluster.
	_, quickURL := g1.expose(t, "--max-gateways", "1", textBackend(t, "quick\n"))
	waitFor(t, 10*time.Second, "the quick tunnel through the second gateway", func() bool {
		code, body := statusAt(t, g2, urlAt(g2, quickURL))
		return code == "200" && body == "quick\n"
	})

	// A TCP port: allocated in the store, so the second gateway listens on
	// the same number on its own address and relays its connections.
	echo := tcpListen(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	_, pub := g1.exposePort(t, "--max-gateways", "1", "--token", tok, "--name", "db", "tcp://"+echo)
	pub2 := net.JoinHostPort("127.0.0.2", portOf(pub))
	waitFor(t, 10*time.Second, "the tcp port through the second gateway", func() bool {
		return tcpEcho(pub2, "hello\n") == "echo hello\n"
	})

	// A UDP port likewise, datagram by datagram.
	needTool(t, "dig")
	_, upub := g1.exposePort(t, "--max-gateways", "1", "--token", tok, "--name", "resolver", "udp://"+startDNS(t))
	upub2 := net.JoinHostPort("127.0.0.2", portOf(upub))
	waitFor(t, 10*time.Second, "the udp port through the second gateway", func() bool {
		m := new(dns.Msg)
		m.SetQuestion("www.example.test.", dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 500 * time.Millisecond}).Exchange(m, upub2)
		return err == nil && len(r.Answer) == 1
	})
	digThrough(t, upub2)

	// The agent goes: the second gateway says so at once, every time.
	shopAgent.signal(t, syscall.SIGKILL)
	shopAgent.wait(t, 10*time.Second)
	waitFor(t, 10*time.Second, "shop to fail through the second gateway", func() bool {
		code, _ := statusAt(t, g2, shop2)
		return code == "502" || code == "503"
	})
	for i := range 5 {
		start := time.Now()
		code, _ := statusAt(t, g2, shop2)
		if (code != "502" && code != "503") || time.Since(start) > 900*time.Millisecond {
			t.Fatalf("request %d without an agent = %s after %v, want 502/503 at once", i, code, time.Since(start))
		}
	}
}

// tcpEcho sends line to addr and returns the first line of the answer ("" on error).
func tcpEcho(addr, line string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(c, line)
	got, _ := bufio.NewReader(c).ReadString('\n')
	return got
}
