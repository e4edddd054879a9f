//go:build linux

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The cluster test: three gateways on one etcd, each on its own host, an
// agent behind NAT, clients on another host. See TestCluster.

const (
	clusterDomain = "gw.test"
	// etcdOutage is how long etcd stays down in TestCluster/etcd-outage.
	etcdOutage = 30 * time.Second
	// propagationGoal: a name registered on one gateway is served by every
	// gateway within this.
	propagationGoal = time.Second
	// withdrawLimit bounds how long the DNS of the live gateways may still
	// name a killed gateway (its lease TTL, ~10 s, and a little).
	withdrawLimit = 20 * time.Second
	// storeErrorLimit: with etcd down, a write fails within this (~10 s)
	// instead of hanging.
	storeErrorLimit = 12 * time.Second
	// storeBackLimit: after etcd is back, a write works within this.
	storeBackLimit = 15 * time.Second
)

// clusterSpec is the topology of TestCluster.
var clusterSpec = netSpec{
	Hosts: []hostSpec{
		{Name: "gw1", Octet: 11}, {Name: "gw2", Octet: 12}, {Name: "gw3", Octet: 13},
		{Name: "etcd", Octet: 20},
		{Name: "client", Octet: 30},
		{Name: "up", Octet: 31}, // a direct upstream the gateways may dial
	},
	NATs: []natSpec{{Router: hostSpec{Name: "nat", Octet: 2}, Host: "priv"}},
}

// nsGateway is a `webgw gateway` running in its own host of a testNet.
type nsGateway struct {
	*proc
	n       *testNet
	host    string     // gw1, gw2, gw3
	ip      netip.Addr // its address: --public-ip and the listeners' host
	dataDir string
	id      string // from its banner
}

var reGatewayReady = regexp.MustCompile(`(?m)^webgw gateway (\S+) ready `)

// startNSGateway starts a gateway in host with the cluster's flags; wait
// for it with ready.
func (n *testNet) startNSGateway(t testing.TB, host string, extra ...string) *nsGateway {
	t.Helper()
	ip := n.host(host).IP4
	g := &nsGateway{n: n, host: host, ip: ip, dataDir: n.t.TempDir()}
	args := []string{webgwBin, "gateway", "--domain", clusterDomain, "--public-ip", ip.String(),
		"--https-addr", ip.String() + ":443", "--http-addr", ip.String() + ":80", "--dns-addr", ip.String() + ":53",
		"--api-addr", "127.0.0.1:8081", "--data-dir", g.dataDir,
		"--access-log=false"} // the loads would bury the log lines that explain a failure
	g.proc = n.start(t, host, "gateway", nil, append(args, extra...)...)
	return g
}

// ready waits for the gateway's banner and reads its id.
func (g *nsGateway) ready(t testing.TB) {
	t.Helper()
	g.waitLine(t, reExposeLine, 30*time.Second)
	m := reGatewayReady.FindStringSubmatch(g.stdout.String())
	if m == nil {
		t.Fatalf("%s: banner has no line matching %q:\n%s", g.name, reGatewayReady, g.stdout.String())
	}
	g.id = m[1]
}

func (g *nsGateway) String() string { return g.host + " (" + g.ip.String() + ")" }

// webgw runs a webgw admin command in the gateway's host against its API.
func (g *nsGateway) webgw(t testing.TB, timeout time.Duration, args ...string) cmdResult {
	t.Helper()
	return g.n.webgw(t, g.host, timeout, append(args, "--api-addr", "127.0.0.1:8081", "--data-dir", g.dataDir)...)
}

// mustWebgw is webgw that fails t unless it exits 0 within 30 s.
func (g *nsGateway) mustWebgw(t testing.TB, args ...string) string {
	t.Helper()
	r := g.webgw(t, 30*time.Second, args...)
	if r.code != 0 || r.timedOut {
		t.Fatalf("%s: webgw %s: %s", g, strings.Join(args, " "), r)
	}
	return r.stdout
}

// clusterStatus is what the test reads of `webgw status --json` (GET /v1/status).
type clusterStatus struct {
	Gateway struct {
		ID string `json:"id"`
	} `json:"gateway"`
	Agents []struct {
		ID       string   `json:"id"`
		Remote   string   `json:"remote"`
		Services []string `json:"services"`
	} `json:"agents"`
}

func (g *nsGateway) status(t testing.TB) clusterStatus {
	t.Helper()
	var st clusterStatus
	if err := json.Unmarshal([]byte(g.mustWebgw(t, "status", "--json")), &st); err != nil {
		t.Fatalf("%s: webgw status --json: %v", g, err)
	}
	return st
}

// sessions returns the remote addresses of the agent sessions that serve service.
func (g *nsGateway) sessions(t testing.TB, service string) []string {
	t.Helper()
	var out []string
	for _, a := range g.status(t).Agents {
		if slices.Contains(a.Services, service) {
			out = append(out, a.Remote)
		}
	}
	return out
}

// gatewayListEntry is one gateway of `webgw gateway list --json`.
type gatewayListEntry struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// cluster is the running system of TestCluster.
type cluster struct {
	n      *testNet
	etcd   *nsEtcd
	gws    []*nsGateway // gw1, gw2, gw3
	caFile string       // gw1's <data-dir>/ca.pem; every gateway has the same CA
	roots  *x509.CertPool
	token  string // tenant acme's
}

// live returns the gateways whose process runs.
func (c *cluster) live() []*nsGateway {
	var out []*nsGateway
	for _, g := range c.gws {
		if g.running() {
			out = append(out, g)
		}
	}
	return out
}

func ips(gws []*nsGateway) []netip.Addr {
	var out []netip.Addr
	for _, g := range gws {
		out = append(out, g.ip)
	}
	return out
}

// client returns an HTTPS client in the client host that connects to g for every URL.
func (c *cluster) client(t testing.TB, g *nsGateway) *http.Client {
	return c.n.httpClient(t, "client", netip.AddrPortFrom(g.ip, 443).String(), c.roots)
}

// dig runs dig in the client host against server's DNS.
func (c *cluster) dig(t testing.TB, server netip.Addr, args ...string) string {
	t.Helper()
	r := c.n.exec(t, "client", 15*time.Second, append([]string{"dig", "@" + server.String(), "+time=1", "+tries=2"}, args...)...)
	if r.code != 0 {
		t.Fatalf("dig @%s %s: %s", server, strings.Join(args, " "), r)
	}
	return r.stdout
}

// expose starts `webgw expose` in the private host and waits for its URL.
func (c *cluster) expose(t testing.TB, name, gw string, args ...string) *proc {
	t.Helper()
	argv := append([]string{webgwBin, "expose", "--gateway", gw, "--ca", c.caFile, "--token", c.token, "--name", name}, args...)
	p := c.n.start(t, "priv", "expose-"+name, nil, argv...)
	p.waitLine(t, regexp.MustCompile(`^https://`+regexp.QuoteMeta(name+"."+clusterDomain)+`(:443)?$`), 20*time.Second)
	return p
}

// TestCluster: three gateways on one etcd, each on its own host with its
// own address, DNS on :53 and HTTPS on :443; an agent on a private host
// behind NAT; clients on a fifth host. The parent test builds the system
// with what works on one gateway today (shared tenants through etcd, an
// agent through one gateway, DNS); each subtest checks one cluster feature
// of issue 6 and logs its measured figures.
func TestCluster(t *testing.T) {
	t.Parallel()
	needTool(t, "dig")
	n := newTestNet(t, clusterSpec)
	c := &cluster{n: n}
	c.etcd = n.startEtcd(t, "etcd")
	store := "etcd://" + c.etcd.client
	allow := netip.PrefixFrom(n.host("up").IP4, 32).String()
	// gw1 first makes the CA in etcd; the others load it.
	for i, host := range []string{"gw1", "gw2", "gw3"} {
		c.gws = append(c.gws, n.startNSGateway(t, host, "--store", store, "--upstream-allow", allow))
		if i == 0 {
			c.gws[0].ready(t)
		}
	}
	for _, g := range c.gws[1:] {
		g.ready(t)
	}
	gw1 := c.gws[0]
	c.caFile = gw1.dataDir + "/ca.pem"
	c.roots = caPool(t, c.caFile)
	ca1, _ := os.ReadFile(c.caFile)
	for _, g := range c.gws[1:] {
		if ca, _ := os.ReadFile(g.dataDir + "/ca.pem"); string(ca) != string(ca1) {
			t.Errorf("%s's ca.pem differs from gw1's: the gateways do not share the CA through etcd", g)
		}
	}

	// A tenant made on gw1 exists on gw2.
	c.token = strings.TrimSpace(gw1.mustWebgw(t, "tenant", "add", "acme"))
	if r := n.webgw(t, "gw2", 30*time.Second, "service", "list", "--api-addr", "127.0.0.1:8081", "--token", c.token); r.code != 0 {
		t.Fatalf("acme's token, made on gw1, is not accepted by gw2: %s", r)
	}

	// The agent for web: in priv, through gw1.
	backend := n.serveHTTP(t, "priv", "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "web from priv\n")
	}))
	c.expose(t, "web", netip.AddrPortFrom(gw1.ip, 443).String(), backend)
	var code int
	var body string
	var err error
	cl := c.client(t, gw1)
	if !poll(10*time.Second, func() bool {
		code, body, err = get(cl, "https://web."+clusterDomain+"/")
		return code == http.StatusOK
	}) || body != "web from priv\n" {
		t.Fatalf("GET https://web.%s/ from the client through gw1: %d %q %v", clusterDomain, code, body, err)
	}
	if remotes := gw1.sessions(t, "web"); len(remotes) == 0 || remoteIP(remotes[0]) != n.host("nat").IP4 {
		t.Errorf("gw1 sees web's agent sessions from %v, want the NAT router's address %s", remotes, n.host("nat").IP4)
	}
	if a := c.dig(t, gw1.ip, "+short", "web."+clusterDomain, "A"); !strings.Contains(a, gw1.ip.String()) {
		t.Errorf("dig @gw1 +short web.%s A = %q, want gw1's address among them", clusterDomain, a)
	}

	t.Run("membership", c.testMembership)
	t.Run("agent-on-all-gateways", c.testAgentOnAll)
	t.Run("dns-steering", c.testDNS)
	t.Run("propagation", c.testPropagation)
	t.Run("relay", c.testRelay)
	t.Run("ports", c.testPorts)
	t.Run("failover", c.testFailover)
	t.Run("etcd-outage", c.testEtcdOutage)
}

// testMembership: `webgw gateway list` on gw1 lists the three gateways,
// with their ids and public addresses, within a few seconds.
func (c *cluster) testMembership(t *testing.T) {
	gw1 := c.gws[0]
	var r cmdResult
	ok := poll(10*time.Second, func() bool {
		r = gw1.webgw(t, 10*time.Second, "gateway", "list")
		if r.code == 2 {
			t.Fatalf("webgw gateway list: %s", r)
		}
		return r.code == 0 && c.listsAll(r.stdout)
	})
	if !ok {
		t.Fatalf("webgw gateway list on gw1 does not list all three gateways (one line each with its id and address) within 10 s: %s", r)
	}
	out := gw1.mustWebgw(t, "gateway", "list", "--json")
	var list []gatewayListEntry
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("webgw gateway list --json: %v\n%s", err, out)
	}
	if len(list) != len(c.gws) {
		t.Errorf("webgw gateway list --json has %d gateways, want %d:\n%s", len(list), len(c.gws), out)
	}
	for _, g := range c.gws {
		i := slices.IndexFunc(list, func(e gatewayListEntry) bool { return e.ID == g.id })
		if i < 0 || !slices.Contains(list[i].Addrs, g.ip.String()) {
			t.Errorf("webgw gateway list --json: no entry with id %s and addrs holding %s:\n%s", g.id, g.ip, out)
		}
	}
}

// listsAll reports whether a `gateway list` table has exactly one line per
// gateway that holds its id and address, and no other gateway id.
func (c *cluster) listsAll(out string) bool {
	for _, g := range c.gws {
		lines := 0
		for line := range strings.SplitSeq(out, "\n") {
			if strings.Contains(line, g.id) {
				if !strings.Contains(line, g.ip.String()) {
					return false
				}
				lines++
			}
		}
		if lines != 1 {
			return false
		}
	}
	return true
}

// testAgentOnAll: the agent, given gw1 only, learns the other gateways and
// holds a session for web on each.
func (c *cluster) testAgentOnAll(t *testing.T) {
	var missing []*nsGateway
	poll(15*time.Second, func() bool {
		missing = missing[:0]
		for _, g := range c.gws {
			if len(g.sessions(t, "web")) == 0 {
				missing = append(missing, g)
			}
		}
		return len(missing) == 0
	})
	for _, g := range missing {
		t.Errorf("%s has no agent session for web within 15 s (the agent was given gw1 only)", g)
	}
}

// testDNS: every gateway answers web.gw.test A with the three gateways'
// addresses (all hold a tunnel for it), and gw.test NS with three name
// servers whose glue is the three addresses.
func (c *cluster) testDNS(t *testing.T) {
	want := sortedStrings(ips(c.gws))
	got := make([][]string, len(c.gws))
	poll(10*time.Second, func() bool {
		all := true
		for i, g := range c.gws {
			got[i] = strings.Fields(c.dig(t, g.ip, "+short", "web."+clusterDomain, "A"))
			slices.Sort(got[i])
			all = all && slices.Equal(got[i], want)
		}
		return all
	})
	for i, g := range c.gws {
		if !slices.Equal(got[i], want) {
			t.Errorf("dig @%s +short web.%s A = %v, want exactly %v", g, clusterDomain, got[i], want)
		}
	}
	out := c.dig(t, c.gws[0].ip, "+norec", clusterDomain, "NS")
	var ns, glue []string
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 5 && !strings.HasPrefix(line, ";") && f[2] == "IN" {
			switch f[3] {
			case "NS":
				ns = append(ns, f[4])
			case "A":
				glue = append(glue, f[4])
			}
		}
	}
	slices.Sort(glue)
	if len(ns) != len(c.gws) || !slices.Equal(glue, want) {
		t.Errorf("dig @gw1 %s NS: name servers %v with glue %v, want %d name servers with glue %v:\n%s", clusterDomain, ns, glue, len(c.gws), want, out)
	}
}

func sortedStrings(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}

// testPropagation: a service with a direct upstream, added through gw1's
// API, is served by every gateway within propagationGoal.
func (c *cluster) testPropagation(t *testing.T) {
	up := c.n.serveHTTP(t, "up", netip.AddrPortFrom(c.n.host("up").IP4, 0).String(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "prop upstream\n")
	}))
	url := "https://prop." + clusterDomain + "/"
	gws := c.live()
	clients := make([]*http.Client, len(gws))
	for i, g := range gws {
		clients[i] = c.client(t, g)
		if code, _, err := get(clients[i], url); code == http.StatusOK {
			t.Fatalf("%s serves %s before it exists (%d %v)", g, url, code, err)
		}
	}

	start := time.Now()
	served := make([]time.Duration, len(gws)) // since start; 0: not within the deadline
	last := make([]string, len(gws))
	var wg sync.WaitGroup
	for i := range gws {
		wg.Go(func() {
			poll(5*time.Second, func() bool {
				code, body, err := get(clients[i], url)
				if code == http.StatusOK && body == "prop upstream\n" {
					served[i] = time.Since(start)
					return true
				}
				last[i] = fmt.Sprintf("%d %q %v", code, tail(body, 200), err)
				return false
			})
		})
	}
	r := c.gws[0].webgw(t, 30*time.Second, "service", "add", "prop", "--tenant", "acme", "--upstream", up)
	added := time.Since(start)
	wg.Wait()
	if r.code != 0 {
		t.Fatalf("webgw service add prop --upstream %s on gw1: %s", up, r)
	}
	var figures []string
	for i, g := range gws {
		if served[i] == 0 {
			t.Errorf("%s did not serve prop within 5 s of `webgw service add` on gw1 (last answer: %s)", g, last[i])
			figures = append(figures, g.host+" never")
			continue
		}
		figures = append(figures, fmt.Sprintf("%s %v", g.host, served[i].Round(time.Millisecond)))
		if served[i] > propagationGoal {
			t.Errorf("%s served prop %v after `webgw service add` on gw1 started, want within %v", g, served[i], propagationGoal)
		}
	}
	t.Logf("propagation: a service added on gw1 is served after %s (from the start of `webgw service add`, which took %v)",
		strings.Join(figures, ", "), added.Round(time.Millisecond))
}

// testRelay: an agent with --max-gateways 1 holds a tunnel to one gateway;
// a request sent to another gateway is relayed to it and gets 200.
func (c *cluster) testRelay(t *testing.T) {
	backend := c.n.serveHTTP(t, "priv", "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "solo from priv\n")
	}))
	c.expose(t, "solo", netip.AddrPortFrom(c.gws[0].ip, 443).String(), "--max-gateways", "1", backend)
	gws := c.live()
	var holders, others []*nsGateway
	if !poll(10*time.Second, func() bool {
		holders, others = nil, nil
		for _, g := range gws {
			if len(g.sessions(t, "solo")) > 0 {
				holders = append(holders, g)
			} else {
				others = append(others, g)
			}
		}
		return len(holders) == 1
	}) {
		t.Fatalf("solo (--max-gateways 1) has sessions on %v, want exactly one gateway", holders)
	}
	// The tunnel is up on one gateway: within the propagation goal the
	// others know it and relay to it.
	up := time.Now()
	// DNS steers solo to the one gateway holding its tunnel, on every gateway.
	for _, g := range gws {
		var got string
		if !poll(5*time.Second, func() bool {
			got = strings.TrimSpace(c.dig(t, g.ip, "+short", "solo."+clusterDomain, "A"))
			return got == holders[0].ip.String()
		}) {
			t.Errorf("dig @%s +short solo.%s A = %q, want only %s, which holds its tunnel", g, clusterDomain, got, holders[0])
		}
	}
	for _, g := range others {
		var (
			code      int
			body      string
			err       error
			relayedAt time.Duration
		)
		client := c.client(t, g)
		poll(5*time.Second, func() bool {
			code, body, err = get(client, "https://solo."+clusterDomain+"/")
			relayedAt = time.Since(up)
			return code == http.StatusOK && body == "solo from priv\n"
		})
		switch {
		case code != http.StatusOK || body != "solo from priv\n":
			t.Errorf("GET solo.%s through %s, which holds no tunnel for it (%s does): %d %q %v; want 200, relayed", clusterDomain, g, holders[0], code, body, err)
		case relayedAt > propagationGoal:
			t.Errorf("%s relayed solo %v after the tunnel was up on %s, want within %v", g, relayedAt, holders[0], propagationGoal)
		default:
			t.Logf("relay: %s relays solo to %s %v after its tunnel was up", g, holders[0], relayedAt.Round(time.Millisecond))
		}
	}
}

// testPorts: a tcp service's public port, allocated once in etcd, is the
// same on every gateway: a client reaches the backend through each one's
// address on that port.
func (c *cluster) testPorts(t *testing.T) {
	ln := c.n.listen(t, "priv", "127.0.0.1:0")
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	gw1 := c.gws[0]
	argv := []string{webgwBin, "expose", "--gateway", netip.AddrPortFrom(gw1.ip, 443).String(), "--ca", c.caFile, "--token", c.token,
		"--name", "echo", "tcp://" + ln.Addr().String()}
	p := c.n.start(t, "priv", "expose-echo", nil, argv...)
	m := p.waitLine(t, regexp.MustCompile(`^[0-9.]+:(\d+)$`), 20*time.Second)
	port := m[1]
	for _, g := range c.live() {
		addr := net.JoinHostPort(g.ip.String(), port)
		var last error
		if !poll(5*time.Second, func() bool {
			last = echoOnce(c.n, addr)
			return last == nil
		}) {
			t.Errorf("tcp echo through %s (port %s, allocated through gw1): %v", g, port, last)
		}
	}
}

// echoOnce sends a line to addr from the client host and checks it comes back.
func echoOnce(n *testNet, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := n.dial(ctx, "client", "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(conn, "ping through the cluster\n"); err != nil {
		return err
	}
	buf := make([]byte, len("ping through the cluster\n"))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != "ping through the cluster\n" {
		return fmt.Errorf("echo answered %q", buf)
	}
	return nil
}

// testFailover: under a browser-like load (resolve through the gateways'
// DNS, try the answer's addresses in order, next on a connection failure),
// kill -9 gw1: no request started after the kill fails, and the other
// gateways' DNS stops naming gw1 within withdrawLimit.
func (c *cluster) testFailover(t *testing.T) {
	gw1 := c.gws[0]
	if !gw1.running() {
		t.Fatal("gw1 is not running")
	}
	rest := slices.DeleteFunc(c.live(), func(g *nsGateway) bool { return g == gw1 })
	name := "web." + clusterDomain
	l := startClusterLoad(c, "web", 4, c.dnsResolver(ips(c.gws), name))
	defer l.stop()
	l.waitOK(t, 40, "the load to get going before the kill")
	// Before the kill, the other gateways' DNS names gw1 too, or the
	// withdrawal below would measure nothing.
	steered := true
	for _, g := range rest {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		got, err := c.n.lookup(ctx, "client", g.ip, name, dns.TypeA)
		cancel()
		if !slices.Contains(got, gw1.ip) {
			steered = false
			t.Errorf("before the kill, %s's DNS answers %s with %v %v, without gw1: the withdrawal cannot be measured", g, name, got, err)
		}
	}

	gw1.kill(t)
	killed := time.Now()

	// The live gateways' DNS stops naming gw1.
	var withdrawn time.Duration
	var answers []string
	if steered && poll(withdrawLimit+5*time.Second, func() bool {
		answers = answers[:0]
		for _, g := range rest {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			got, err := c.n.lookup(ctx, "client", g.ip, name, dns.TypeA)
			cancel()
			answers = append(answers, fmt.Sprintf("%s: %v %v", g.host, got, err))
			if err != nil || len(got) == 0 || slices.Contains(got, gw1.ip) {
				return false
			}
		}
		return true
	}) {
		withdrawn = time.Since(killed)
	}
	// Some more load after the withdrawal.
	from := l.ok.Load()
	if !poll(15*time.Second, func() bool { return l.ok.Load() >= from+40 }) {
		t.Errorf("the load does not go on after the kill: %d requests succeeded in 15 s", l.ok.Load()-from)
	}
	recs := l.stop()

	var before, after, failedBefore []loadRec
	for _, r := range recs {
		if r.start.Before(killed) {
			before = append(before, r)
			if !r.ok() {
				failedBefore = append(failedBefore, r)
			}
		} else {
			after = append(after, r)
		}
	}
	var failedAfter []loadRec
	served := map[string]int{}
	for _, r := range after {
		if !r.ok() {
			failedAfter = append(failedAfter, r)
		} else {
			served[r.gw]++
		}
	}
	t.Logf("failover: %d requests before the kill (%d failed, in flight at the kill or before), %d after it: %d failed; served after the kill by %v",
		len(before), len(failedBefore), len(after), len(failedAfter), served)
	if withdrawn > 0 {
		t.Logf("failover: the DNS of %v stopped naming gw1 %v after its kill -9", ips(rest), withdrawn.Round(10*time.Millisecond))
	}
	if len(failedAfter) > 0 {
		t.Errorf("%d of %d requests started after gw1's kill failed, want 0; the first: %s", len(failedAfter), len(after), describe(failedAfter, 10))
	}
	if steered && (withdrawn == 0 || withdrawn > withdrawLimit) {
		t.Errorf("the DNS of the live gateways still named gw1 %v after its kill -9 (want within %v): %v",
			time.Since(killed).Round(time.Second), withdrawLimit, answers)
	}
}

// testEtcdOutage: with etcd killed for etcdOutage, requests through the live
// gateways all succeed; a write fails soon with a message naming the store;
// after etcd restarts on the same data dir, writes work again within
// storeBackLimit.
func (c *cluster) testEtcdOutage(t *testing.T) {
	gws := c.live()
	if len(gws) == 0 {
		t.Fatal("no gateway runs")
	}
	var loads []*clusterLoad
	for _, g := range gws {
		l := startClusterLoad(c, "web", 2, fixedResolver(g.ip))
		defer l.stop()
		loads = append(loads, l)
	}
	for i, l := range loads {
		if !poll(10*time.Second, func() bool { return l.ok.Load() >= 10 }) {
			// Go on: the outage part is checked even so.
			t.Errorf("before the outage, requests through %s do not succeed: %s", gws[i], describe(l.failures(), 3))
		}
	}

	c.etcd.kill(t)
	down := time.Now()
	w := gws[0]
	r := w.webgw(t, storeErrorLimit+10*time.Second, "tenant", "add", "other")
	switch {
	case r.code == 0:
		t.Errorf("with etcd down, `webgw tenant add other` on %s succeeded: %s", w, r)
	case r.timedOut || r.took > storeErrorLimit:
		t.Errorf("with etcd down, `webgw tenant add other` on %s took %v, want a failure within %v: %s", w, r.took.Round(time.Millisecond), storeErrorLimit, r)
	case !regexp.MustCompile(`(?i)unavailable|etcd`).MatchString(r.stderr):
		t.Errorf("with etcd down, `webgw tenant add other` on %s fails without naming the store (want \"unavailable\" or \"etcd\"): %s", w, r)
	default:
		t.Logf("etcd outage: a write fails after %v: %s", r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	}

	<-time.After(time.Until(down.Add(etcdOutage)))
	for i, l := range loads {
		recs := l.stop()
		var during, failed []loadRec
		for _, r := range recs {
			if !r.start.Before(down) {
				during = append(during, r)
				if !r.ok() {
					failed = append(failed, r)
				}
			}
		}
		t.Logf("etcd outage: %d requests through %s while etcd was down, %d failed", len(during), gws[i].host, len(failed))
		if len(during) == 0 || len(failed) > 0 {
			t.Errorf("while etcd was down, %d of %d requests through %s failed, want none (and some); the first: %s",
				len(failed), len(during), gws[i], describe(failed, 5))
		}
	}
	for _, g := range gws {
		if !g.running() {
			t.Errorf("%s exited during the etcd outage (%v)", g, g.state)
		}
	}

	restart := time.Now()
	c.etcd.start(t)
	ready := time.Since(restart)
	var last cmdResult
	i := 0
	if poll(storeBackLimit, func() bool {
		i++
		left := storeBackLimit - time.Since(restart)
		if left <= 0 {
			return false
		}
		last = w.webgw(t, left, "tenant", "add", fmt.Sprintf("other-%d", i))
		return last.code == 0
	}) && time.Since(restart) <= storeBackLimit {
		t.Logf("etcd outage: etcd restarted on its data dir (ready after %v); a write through %s works %v after the restart began (attempt %d)",
			ready.Round(10*time.Millisecond), w.host, time.Since(restart).Round(10*time.Millisecond), i)
	} else {
		t.Errorf("writes through %s still fail %v after etcd restarted: %s", w, time.Since(restart).Round(time.Second), last)
	}
}

// loadRec is one request of a clusterLoad.
type loadRec struct {
	start  time.Time
	took   time.Duration
	gw     string // the address connected to; "" if none
	status int
	err    error
}

func (r loadRec) ok() bool { return r.err == nil && r.status == http.StatusOK }

func (r loadRec) String() string {
	return fmt.Sprintf("%s +%v via %q: status %d, err %v", r.start.Format("15:04:05.000"), r.took.Round(time.Millisecond), r.gw, r.status, r.err)
}

// describe lists the first n records.
func describe(recs []loadRec, n int) string {
	var s []string
	for i, r := range recs {
		if i == n {
			s = append(s, fmt.Sprintf("... (%d in all)", len(recs)))
			break
		}
		s = append(s, r.String())
	}
	return strings.Join(s, "; ")
}

// resolver returns the addresses to try for one request, in order.
type resolver func(ctx context.Context) ([]netip.Addr, error)

// dnsResolver asks the servers in order (the next on an error, 1 s each)
// for name's A records from the client host.
func (c *cluster) dnsResolver(servers []netip.Addr, name string) resolver {
	return func(ctx context.Context) ([]netip.Addr, error) {
		var errs []string
		for _, s := range servers {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			addrs, err := c.n.lookup(qctx, "client", s, name, dns.TypeA)
			cancel()
			if err == nil {
				return addrs, nil
			}
			errs = append(errs, err.Error())
		}
		return nil, fmt.Errorf("resolve %s: %s", name, strings.Join(errs, "; "))
	}
}

func fixedResolver(a netip.Addr) resolver {
	return func(context.Context) ([]netip.Addr, error) { return []netip.Addr{a}, nil }
}

// clusterLoad is a browser-like HTTPS load on a service from the client
// host: for every request (no keep-alive) workers resolve the name, connect
// to the addresses in order (1 s connect timeout, the next on a failure)
// and GET /, 20 ms apart per worker.
type clusterLoad struct {
	ok   atomic.Int64
	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	mu   sync.Mutex
	recs []loadRec // guarded by mu
}

func startClusterLoad(c *cluster, service string, workers int, resolve resolver) *clusterLoad {
	l := &clusterLoad{quit: make(chan struct{})}
	url := "https://" + service + "." + clusterDomain + "/"
	for range workers {
		var gw atomic.Value // string: the address the current request connected to
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				addrs, err := resolve(ctx)
				if err != nil {
					return nil, err
				}
				if len(addrs) == 0 {
					return nil, fmt.Errorf("resolve %s: no address", service)
				}
				for _, a := range addrs {
					dctx, cancel := context.WithTimeout(ctx, time.Second)
					conn, derr := c.n.dial(dctx, "client", "tcp", netip.AddrPortFrom(a, 443).String())
					cancel()
					if derr == nil {
						gw.Store(a.String())
						return conn, nil
					}
					err = derr
				}
				return nil, err
			},
			TLSClientConfig:     &tls.Config{RootCAs: c.roots},
			DisableKeepAlives:   true,
			TLSHandshakeTimeout: 5 * time.Second,
		}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		l.wg.Go(func() {
			for {
				select {
				case <-l.quit:
					return
				default:
				}
				gw.Store("")
				start := time.Now()
				code, _, err := get(client, url)
				r := loadRec{start: start, took: time.Since(start), gw: gw.Load().(string), status: code, err: err}
				if r.ok() {
					l.ok.Add(1)
				}
				l.mu.Lock()
				l.recs = append(l.recs, r)
				l.mu.Unlock()
				select {
				case <-l.quit:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
	return l
}

// waitOK waits until n more requests than now have succeeded.
func (l *clusterLoad) waitOK(t testing.TB, n int64, what string) {
	t.Helper()
	from := l.ok.Load()
	if !poll(15*time.Second, func() bool { return l.ok.Load() >= from+n }) {
		t.Fatalf("timed out after 15 s waiting for %s: %d requests succeeded; failures: %s", what, l.ok.Load()-from, describe(l.failures(), 5))
	}
}

// failures returns the failed requests so far.
func (l *clusterLoad) failures() []loadRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []loadRec
	for _, r := range l.recs {
		if !r.ok() {
			out = append(out, r)
		}
	}
	return out
}

// stop ends the load (requests in flight finish) and returns all records;
// it may be called again.
func (l *clusterLoad) stop() []loadRec {
	l.once.Do(func() { close(l.quit) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}
