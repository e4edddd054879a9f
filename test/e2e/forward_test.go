package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	pp "github.com/pires/go-proxyproto"
)

// reHostPort is the one stdout line of `webgw expose tcp://…` or `udp://…`.
var reHostPort = regexp.MustCompile(`^(127\.0\.0\.1:(\d+))$`)

// freePortRange returns FIRST-LAST of n consecutive ports, below the
// kernel's ephemeral range, that were free for TCP and UDP a moment ago.
func freePortRange(t testing.TB, n int) (string, int) {
	t.Helper()
	for range 100 {
		first := 20000 + rand.IntN(12000)
		ok := true
		for p := first; p < first+n && ok; p++ {
			a := "127.0.0.1:" + strconv.Itoa(p)
			ln, err := net.Listen("tcp", a)
			if err != nil {
				ok = false
				break
			}
			pc, err := net.ListenPacket("udp", a)
			if err != nil {
				ok = false
			} else {
				pc.Close()
			}
			ln.Close()
		}
		if ok {
			return fmt.Sprintf("%d-%d", first, first+n-1), first
		}
	}
	t.Fatal("no free port range found")
	return "", 0
}

// exposePort starts `webgw expose ... TARGET` for a tcp:// or udp:// target
// and returns the HOST:PORT it prints as its one stdout line.
func (g *gateway) exposePort(t testing.TB, args ...string) (*proc, string) {
	t.Helper()
	p := startProc(t, "expose", append([]string{"expose", "--gateway", g.httpsAddr, "--ca", g.caFile}, args...)...)
	addr := p.waitLine(t, reHostPort, 15*time.Second)[1]
	if out := strings.TrimSpace(p.stdout.String()); out != addr {
		t.Errorf("expose stdout %q, want the address %s as its one line", out, addr)
	}
	return p, addr
}

// needTool skips when a Debian tool the test drives is missing (.ci/run
// installs them all).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install it; .ci/run does)", name)
	}
	return p
}

// startRedis runs a throwaway redis-server on a free loopback port.
func startRedis(t *testing.T) string {
	t.Helper()
	bin := needTool(t, "redis-server")
	addr := freeAddr(t)
	cmd := exec.Command(bin, "--port", portOf(addr), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--protected-mode", "no")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", tail(out.String(), 3000))
		}
	})
	waitFor(t, 10*time.Second, "redis-server to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// redisCLI runs redis-cli against addr and returns its trimmed output.
func redisCLI(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, p, _ := net.SplitHostPort(addr)
	out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", h, "-p", p}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestTCPForwardRedis: a real TCP protocol (redis) through a public port
// exposed by `webgw expose tcp://`; the port is the tenant's, survives a
// gateway restart, and closes when the service is removed.
func TestTCPForwardRedis(t *testing.T) {
	t.Parallel()
	needTool(t, "redis-cli")
	redis := startRedis(t)
	rng, _ := freePortRange(t, 3)
	addrs := freeAddrs(t, 3)
	dataDir := t.TempDir()
	args := []string{"gateway", "--https-addr", addrs[0], "--http-addr", addrs[1], "--api-addr", addrs[2],
		"--data-dir", dataDir, "--port-range", rng}
	g := startGatewayArgs(t, args...)
	tok := g.addTenant(t, "acme")
	agent, pub := g.exposePort(t, "--token", tok, "--name", "cache", "tcp://"+redis)

	if out, err := redisCLI(t, pub, "PING"); err != nil || out != "PONG" {
		t.Fatalf("redis-cli -h %s PING = %q, %v; want PONG", pub, out, err)
	}
	if out, err := redisCLI(t, pub, "SET", "greeting", "hello through webgw"); err != nil || out != "OK" {
		t.Fatalf("SET = %q, %v", out, err)
	}
	if out, err := redisCLI(t, pub, "GET", "greeting"); err != nil || out != "hello through webgw" {
		t.Fatalf("GET = %q, %v", out, err)
	}

	// The port is the tenant's: after a gateway restart the same agent
	// serves the same port again.
	g.signal(t, syscall.SIGTERM)
	if code := g.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("gateway exit code after SIGTERM = %d, want 0", code)
	}
	g2 := startGatewayArgs(t, args...)
	waitFor(t, 15*time.Second, "redis PING through "+pub+" after the gateway restart", func() bool {
		out, err := redisCLI(t, pub, "PING")
		return err == nil && out == "PONG"
	})
	if !agent.running() {
		t.Fatalf("the agent exited (%v) instead of reconnecting", agent.state)
	}
	if out := mustRun(t, append([]string{"port", "list"}, g2.admin()...)...); !strings.Contains(out, "tcp/"+portOf(pub)) || !strings.Contains(out, "cache") {
		t.Errorf("port list does not show tcp/%s of cache:\n%s", portOf(pub), out)
	}

	// Removing the service releases the port: its listener closes.
	mustRun(t, append([]string{"service", "remove", "cache"}, g2.admin()...)...)
	waitFor(t, 10*time.Second, "the port to close after the service was removed", func() bool {
		c, err := net.Dial("tcp", pub)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
}

// TestTCPForwardHalfClose: a client that shuts down its write side still
// gets the whole answer, which the backend sends only after it saw EOF.
func TestTCPForwardHalfClose(t *testing.T) {
	t.Parallel()
	backend := tcpListen(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		// Answer 4 MiB after EOF, then close.
		w := bufio.NewWriter(c)
		fmt.Fprintf(w, "got %d bytes\n", n)
		w.Write(bytes.Repeat([]byte("z"), 4<<20))
		w.Flush()
	})
	rng, _ := freePortRange(t, 2)
	g := startGateway(t, "--port-range", rng)
	_, pub := g.exposePort(t, "tcp://"+backend)
	c, err := net.Dial("tcp", pub)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write(bytes.Repeat([]byte("a"), 100000))
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v (got %d bytes)", err, len(all))
	}
	want := "got 100000 bytes\n"
	if !bytes.HasPrefix(all, []byte(want)) || len(all) != len(want)+4<<20 {
		t.Fatalf("answer of %d bytes starting %q, want %q and 4 MiB", len(all), all[:min(len(all), 40)], want)
	}
}

// tcpListen serves each connection to a loopback listener with handle.
func tcpListen(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// TestTCPForwardProxyV2: `expose --proxy-protocol 2` makes the gateway hand
// the backend a PROXY v2 header with the true client address and port.
func TestTCPForwardProxyV2(t *testing.T) {
	t.Parallel()
	headers := make(chan *pp.Header, 1)
	backend := tcpListen(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		h, err := pp.Read(br)
		if err != nil {
			headers <- nil
			return
		}
		headers <- h
		line, _ := br.ReadString('\n')
		c.Write([]byte("echo " + line))
	})
	rng, _ := freePortRange(t, 2)
	g := startGateway(t, "--port-range", rng)
	_, pub := g.exposePort(t, "--proxy-protocol", "2", "tcp://"+backend)

	c, err := net.Dial("tcp", pub)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("hello\n"))
	h := <-headers
	if h == nil {
		t.Fatal("the backend got no PROXY header")
	}
	if h.Version != 2 || h.SourceAddr.String() != c.LocalAddr().String() || h.DestinationAddr.String() != pub {
		t.Errorf("PROXY header v%d %s -> %s, want v2 %s -> %s (the client's own address and port)",
			h.Version, h.SourceAddr, h.DestinationAddr, c.LocalAddr(), pub)
	}
	if line, _ := bufio.NewReader(c).ReadString('\n'); line != "echo hello\n" {
		t.Errorf("answer %q, want the backend's echo", line)
	}
}

// startDNS runs a DNS server on a free loopback UDP port that answers
// A queries for NAME with 192.0.2.1 and a TXT naming the query's source.
func startDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		switch q.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		case dns.TypeTXT:
			// A large answer: datagram boundaries must hold for 1200 bytes.
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
				Txt: []string{strings.Repeat("a", 250), strings.Repeat("b", 250), strings.Repeat("c", 250), strings.Repeat("d", 250)}})
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

// TestUDPForwardDig: a real UDP protocol: dig queries a DNS server behind
// a public UDP port exposed with `webgw expose udp://`.
func TestUDPForwardDig(t *testing.T) {
	t.Parallel()
	needTool(t, "dig")
	server := startDNS(t)
	rng, _ := freePortRange(t, 3)
	g := startGateway(t, "--port-range", rng)
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			// Over QUIC the datagrams travel as QUIC datagrams (the 1 KB
			// TXT answer does not fit one and goes on the stream).
			p, pub := g.exposePort(t, "--transport", transport, "udp://"+server)
			if want := transport == "quic"; strings.Contains(p.stderr.String(), "udp_datagrams=true") != want {
				t.Errorf("agent over %s: QUIC datagrams on = %v, want %v:\n%s", transport, !want, want, p.stderr.String())
			}
			digThrough(t, pub)
		})
	}
}

// digThrough queries the test DNS server through pub with dig.
func digThrough(t *testing.T, pub string) {
	host, port, _ := net.SplitHostPort(pub)
	dig := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "dig", append([]string{"@" + host, "-p", port, "+tries=3", "+time=2", "+notcp", "+ignore", "+bufsize=4096"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := dig("+short", "www.example.test", "A")
	if strings.TrimSpace(out) != "192.0.2.1" {
		t.Fatalf("dig +short www.example.test A = %q, want 192.0.2.1", out)
	}
	out = dig("big.example.test", "TXT")
	if !strings.Contains(out, "flags: qr aa") || !strings.Contains(out, strings.Repeat("d", 250)) || strings.Contains(out, "tc;") {
		t.Fatalf("dig TXT answer is not the whole 1 KB record in one datagram:\n%s", out)
	}
}

// TestInboundProxyProtocol: with --proxy-protocol-from, a trusted load
// balancer's PROXY header sets the client address (X-Forwarded-For, and
// the backend's own PROXY header); the same header from an untrusted source
// is not honoured, and a trusted source without a header is cut.
func TestInboundProxyProtocol(t *testing.T) {
	t.Parallel()
	xff := make(chan string, 4)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		xff <- r.Header.Get("X-Forwarded-For")
		io.WriteString(w, "ok\n")
	}))

	// requestVia sends a PROXY v1 header claiming 198.51.100.7:5555, then
	// a TLS request for url, and returns the status or the error.
	requestVia := func(g *gateway, url string, header bool) (int, error) {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", g.httpsAddr)
				if err == nil && header {
					_, err = fmt.Fprintf(c, "PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\n")
				}
				return c, err
			},
			TLSClientConfig: &tls.Config{RootCAs: caPool(t, g.caFile)},
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	t.Run("trusted", func(t *testing.T) {
		g := startGateway(t, "--proxy-protocol-from", "127.0.0.1/32")
		_, url := g.expose(t, backend)
		if code, err := requestVia(g, url, true); err != nil || code != 200 {
			t.Fatalf("GET %s behind a trusted balancer = %d, %v; want 200", url, code, err)
		}
		if got := <-xff; got != "198.51.100.7" {
			t.Errorf("X-Forwarded-For %q, want the PROXY header's client 198.51.100.7", got)
		}
		// A trusted source must send the header: without one it is cut.
		if _, err := requestVia(g, url, false); err == nil {
			t.Errorf("GET %s from a trusted source without a PROXY header succeeded; want it cut", url)
		}
	})

	t.Run("untrusted", func(t *testing.T) {
		g := startGateway(t, "--proxy-protocol-from", "192.0.2.0/24")
		_, url := g.expose(t, backend)
		// curl's own PROXY header, from a source the gateway does not trust.
		res := curl(t, "--haproxy-protocol", "--cacert", g.caFile, "--max-time", "10", url)
		if res.code == 0 {
			t.Errorf("curl --haproxy-protocol from an untrusted source succeeded (%q); want the header refused", res.stdout)
		}
		if _, err := requestVia(g, url, true); err == nil {
			t.Errorf("a spoofed PROXY header from an untrusted source was accepted")
		}
		if code, err := requestVia(g, url, false); err != nil || code != 200 {
			t.Fatalf("plain GET %s = %d, %v; want 200", url, code, err)
		}
		if got := <-xff; got != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, want the socket's 127.0.0.1", got)
		}
	})
}

// startOpenSSLServer runs `openssl s_server -www` with a fresh self-signed
// certificate for name and returns its address.
func startOpenSSLServer(t *testing.T, name string) string {
	t.Helper()
	bin := needTool(t, "openssl")
	dir := t.TempDir()
	certFile, keyFile := selfSignedFiles(t, dir, name)
	addr := freeAddr(t)
	cmd := exec.Command(bin, "s_server", "-accept", addr, "-cert", certFile, "-key", keyFile, "-www", "-quiet")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("openssl s_server %s output:\n%s", name, tail(out.String(), 2000))
		}
	})
	waitFor(t, 10*time.Second, "openssl s_server to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// tlsPeer connects to addr with SNI serverName, sends an HTTP GET, and
// returns the name in the certificate the server presented and the first
// line of its answer.
func tlsPeer(addr, serverName string) (string, string, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, strings.TrimSpace(line), err
}

// TestSNIPort: TLS passthrough on a public TCP port shared by a tenant's
// tls services (SNI mode), to real `openssl s_server` backends that keep
// their own certificates; another tenant's name is refused on it.
func TestSNIPort(t *testing.T) {
	t.Parallel()
	rng, _ := freePortRange(t, 3)
	g := startGateway(t, "--port-range", rng)
	tok := g.addTenant(t, "acme")
	other := g.addTenant(t, "other")
	for _, name := range []string{"one", "two"} {
		g.expose(t, "--token", tok, "--name", name, "https://"+startOpenSSLServer(t, name+".localhost"))
	}
	g.expose(t, "--token", other, "--name", "three", "https://"+startOpenSSLServer(t, "three.localhost"))

	out := mustRun(t, append([]string{"port", "add", "tcp", "--sni", "--token", tok}, g.admin()...)...)
	pub := strings.TrimSpace(out)
	if !reHostPort.MatchString(pub) {
		t.Fatalf("port add tcp --sni printed %q, want HOST:PORT as its one line", out)
	}
	for _, name := range []string{"one", "two"} {
		host := name + ".localhost"
		var cn, line string
		waitFor(t, 10*time.Second, host+" through the SNI port "+pub, func() bool {
			var err error
			cn, line, err = tlsPeer(pub, host)
			return err == nil
		})
		if cn != host || line != "HTTP/1.0 200 ok" {
			t.Errorf("SNI %s on %s: certificate %q, answer %q; want the backend's own certificate and s_server's 200", host, pub, cn, line)
		}
	}
	if _, _, err := tlsPeer(pub, "three.localhost"); err == nil {
		t.Errorf("another tenant's name three.localhost was served on acme's SNI port")
	}

	// A port of its own for one tls service: every connection goes to it,
	// whatever the ClientHello names.
	out = mustRun(t, append([]string{"port", "add", "tcp", "--service", "one", "--token", tok}, g.admin()...)...)
	own := strings.TrimSpace(out)
	if !reHostPort.MatchString(own) || own == pub {
		t.Fatalf("port add tcp --service one printed %q, want another HOST:PORT", out)
	}
	for _, sn := range []string{"one.localhost", "anything.example"} {
		var cn string
		waitFor(t, 10*time.Second, "one's own port "+own, func() bool {
			var err error
			cn, _, err = tlsPeer(own, sn)
			return err == nil
		})
		if cn != "one.localhost" {
			t.Errorf("SNI %q on one's own port: certificate %q, want one's backend's", sn, cn)
		}
	}
}

// selfSignedFiles writes a self-signed certificate for name and its key as
// PEM files in dir.
func selfSignedFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	cert, der := selfSigned(t, name)
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestTCPForwardReplicas: two agents serve one tcp service; new
// connections are balanced over both, and when one agent is killed they
// all go to the other.
func TestTCPForwardReplicas(t *testing.T) {
	t.Parallel()
	named := func(name string) string {
		return tcpListen(t, func(c net.Conn) { io.WriteString(c, name+"\n") })
	}
	rng, _ := freePortRange(t, 2)
	g := startGateway(t, "--port-range", rng)
	tok := g.addTenant(t, "acme")
	a, pub := g.exposePort(t, "--token", tok, "--name", "echo", "tcp://"+named("a"))
	_, pub2 := g.exposePort(t, "--token", tok, "--name", "echo", "tcp://"+named("b"))
	if pub2 != pub {
		t.Fatalf("second agent got %s, want the service's port %s", pub2, pub)
	}
	who := func() string {
		c, err := net.Dial("tcp", pub)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "read: " + err.Error()
		}
		return strings.TrimSpace(line)
	}
	seen := map[string]int{}
	for range 20 {
		seen[who()]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 20 {
		t.Fatalf("20 connections went to %v, want both agents and nothing else", seen)
	}
	a.kill(t)
	waitFor(t, 10*time.Second, "connections to go to b only", func() bool { return who() == "b" })
	for i := range 20 {
		if got := who(); got != "b" {
			t.Fatalf("connection %d after the kill went to %q, want b", i, got)
		}
	}
}

// TestPortTaken: a port one tenant holds is refused to another, for good:
// its expose exits with the reason.
func TestPortTaken(t *testing.T) {
	t.Parallel()
	backend := tcpListen(t, func(c net.Conn) { io.WriteString(c, "a\n") })
	rng, first := freePortRange(t, 2)
	g := startGateway(t, "--port-range", rng)
	a, b := g.addTenant(t, "a"), g.addTenant(t, "b")
	want := "127.0.0.1:" + strconv.Itoa(first)
	if _, pub := g.exposePort(t, "--token", a, "--port", strconv.Itoa(first), "tcp://"+backend); pub != want {
		t.Fatalf("expose --port %d printed %s, want %s", first, pub, want)
	}
	out, errOut, code := run(t, 20*time.Second, "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--token", b,
		"--port", strconv.Itoa(first), "tcp://"+backend)
	if code == 0 || out != "" || !strings.Contains(errOut, "held by another tenant") {
		t.Errorf("expose of a port another tenant holds: exit %d, stdout %q, stderr:\n%s\nwant a non-zero exit saying so", code, out, errOut)
	}
	// Outside the gateway's range: refused too, naming the range.
	out, errOut, code = run(t, 20*time.Second, "expose", "--gateway", g.httpsAddr, "--ca", g.caFile, "--token", b,
		"--port", strconv.Itoa(first+10), "tcp://"+backend)
	if code == 0 || !strings.Contains(errOut, "outside the gateway's range "+rng) {
		t.Errorf("expose of a port outside the range: exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
}

// TestHTTPProxyProtocol: an http service whose backend wants PROXY v2 gets
// it on every upstream connection, naming the client's own address and
// port, with X-Forwarded-For agreeing.
func TestHTTPProxyProtocol(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s\n", r.RemoteAddr, r.Header.Get("X-Forwarded-For"))
	})}
	go srv.Serve(&pp.Listener{Listener: ln}) // requires a PROXY header on every connection
	t.Cleanup(func() { srv.Close() })

	g := startGateway(t)
	_, url := g.expose(t, "--proxy-protocol", "2", "http://"+ln.Addr().String())
	var (
		mu    sync.Mutex
		local = map[string]bool{} // the client's own addresses
	)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", g.httpsAddr)
			if err == nil {
				mu.Lock()
				local[c.LocalAddr().String()] = true
				mu.Unlock()
			}
			return c, err
		},
		TLSClientConfig: &tls.Config{RootCAs: caPool(t, g.caFile)},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var body string
	waitFor(t, 10*time.Second, url+" to answer", func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == 200
	})
	addr, xff, _ := strings.Cut(strings.TrimSpace(body), " ")
	mu.Lock()
	defer mu.Unlock()
	if !local[addr] || xff != "127.0.0.1" {
		t.Errorf("backend saw %q, want one of the client's own addresses %v (from the PROXY header) and X-Forwarded-For 127.0.0.1", body, local)
	}
}

// TestPassthroughACME: a backend behind a TLS-passthrough service gets its
// ACME challenges through the gateway: HTTP-01 requests on the gateway's
// HTTP port reach its challenge port, and a TLS-ALPN-01 handshake (ALPN
// acme-tls/1) reaches the backend itself; other HTTP requests are still
// redirected to HTTPS.
func TestPassthroughACME(t *testing.T) {
	t.Parallel()
	// The backend: TLS on one port (recording the ALPN it is offered),
	// its ACME HTTP-01 responder on another.
	cert, _ := selfSigned(t, "certbot.localhost")
	alpn := make(chan []string, 1)
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"acme-tls/1", "http/1.1"},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			select {
			case alpn <- h.SupportedProtos:
			default:
			}
			return nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := tlsLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.(*tls.Conn).Handshake()
			}()
		}
	}()
	t.Cleanup(func() { tlsLn.Close() })
	challenge := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/acme-challenge/tok123" {
			io.WriteString(w, "tok123.keyauth")
			return
		}
		http.NotFound(w, r)
	}))
	g := startGateway(t)
	_, url := g.expose(t, "--name", "certbot", "--acme-http", challenge, "https://"+tlsLn.Addr().String())
	host := hostOf(url)

	// HTTP-01 on the plain HTTP port.
	res := curl(t, "-s", "--resolve", host+":"+portOf(g.httpAddr)+":127.0.0.1", "http://"+host+":"+portOf(g.httpAddr)+"/.well-known/acme-challenge/tok123")
	if res.code != 0 || res.stdout != "tok123.keyauth" {
		t.Errorf("HTTP-01 challenge through the gateway: exit %d, body %q; want the backend's key authorization", res.code, res.stdout)
	}
	// Anything else on the HTTP port still goes to HTTPS.
	res = curl(t, "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "http://"+host+":"+portOf(g.httpAddr)+"/page")
	if want := "308 https://" + host + ":" + g.httpsPort() + "/page"; res.stdout != want {
		t.Errorf("plain HTTP request: %q, want %q", res.stdout, want)
	}

	// TLS-ALPN-01: the validation handshake reaches the backend.
	c, err := tls.Dial("tcp", g.httpsAddr, &tls.Config{ServerName: host, NextProtos: []string{"acme-tls/1"}, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS-ALPN-01 handshake through the gateway: %v", err)
	}
	proto := c.ConnectionState().NegotiatedProtocol
	c.Close()
	if proto != "acme-tls/1" {
		t.Errorf("negotiated %q, want acme-tls/1 from the backend", proto)
	}
	select {
	case got := <-alpn:
		if len(got) != 1 || got[0] != "acme-tls/1" {
			t.Errorf("backend was offered ALPN %v, want [acme-tls/1]", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("the backend saw no handshake")
	}
}
