package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"

	"github.com/webgw/webgw/internal/edge"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/netpolicy"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

const portsWait = 10 * time.Second

// freePort returns a port number that was free a moment ago on proto.
func freePort(t *testing.T, proto string) int {
	t.Helper()
	var a net.Addr
	if proto == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a = pc.LocalAddr()
		pc.Close()
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a = ln.Addr()
		ln.Close()
	}
	_, p, _ := net.SplitHostPort(a.String())
	n, _ := strconv.Atoi(p)
	return n
}

// portsFixture runs a ports manager over a bolt store and a table whose
// services reach direct upstreams on loopback.
type portsFixture struct {
	st    *store.Bolt
	table *route.Table
	m     *ports
}

func newPortsFixture(t *testing.T, trusted ...string) *portsFixture {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	table := route.NewTable(nil)
	pol := netpolicy.NewWithPublic(mustPrefixes(t, "127.0.0.1/32"), nil)
	table.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
		return pol.DialUpstream(ctx, u, nil)
	}
	tr, err := parseTrusted(trusted)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &ports{host: "127.0.0.1", table: table, names: &edge.Names{Domain: "localhost", Table: table}, store: st,
		log: slog.New(slog.DiscardHandler), trusted: tr, maxUDPTenant: 16,
		open: map[string]*openPort{}, limits: map[string]*edge.SessionLimit{}, ctx: ctx}
	done := make(chan struct{})
	go func() { defer close(done); m.watch(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), portsWait)
		defer scancel()
		m.shutdown(sctx)
		cancel()
		<-done
		table.Close()
		st.Close()
	})
	return &portsFixture{st: st, table: table, m: m}
}

func mustPrefixes(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	out, err := netpolicy.ParseAllow(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// service stores and configures a service with one direct upstream.
func (f *portsFixture) service(t *testing.T, name string, proto model.Protocol, upstream string, proxyProtocol int) {
	t.Helper()
	sv := model.Service{Name: name, Tenant: "alpha", Protocol: proto, Created: time.Now(), ProxyProtocol: proxyProtocol,
		Upstreams: []model.Upstream{{URL: upstream}}}
	if _, err := store.CreateService(t.Context(), f.st, sv); err != nil {
		t.Fatal(err)
	}
	f.table.Configure(sv)
}

func (f *portsFixture) allocate(t *testing.T, proto model.PortProto, service string) int {
	t.Helper()
	n := freePort(t, string(proto))
	p := model.Port{Proto: proto, Number: n, Tenant: "alpha", Service: service, Created: time.Now()}
	if _, err := store.AllocatePort(t.Context(), f.st, p, model.PortRange{First: n, Last: n}, 0); err != nil {
		t.Fatal(err)
	}
	return n
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(portsWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tcpServer runs handle for each connection to a loopback listener.
func tcpServer(t *testing.T, handle func(net.Conn)) string {
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

// upperAfterEOF reads everything, then answers it in upper case and closes.
func upperAfterEOF(c net.Conn) {
	b, _ := io.ReadAll(c)
	c.Write([]byte(strings.ToUpper(string(b))))
}

func TestPortsOpenAndCloseLive(t *testing.T) {
	f := newPortsFixture(t)
	f.service(t, "db", model.ProtoTCP, "tcp://"+tcpServer(t, upperAfterEOF), 0)
	n := f.allocate(t, model.PortTCP, "db")
	addr := "127.0.0.1:" + strconv.Itoa(n)

	// The listener opens once the record is stored; a half-closed client
	// still gets the whole answer.
	var c net.Conn
	poll(t, "the port to open", func() bool {
		var err error
		c, err = net.Dial("tcp", addr)
		return err == nil
	})
	c.SetDeadline(time.Now().Add(portsWait))
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "HELLO" {
		t.Fatalf("answer %q, %v; want HELLO after the half-close", got, err)
	}

	// Released: the listener closes.
	if err := store.ReleasePort(t.Context(), f.st, model.PortTCP, n, "alpha"); err != nil {
		t.Fatal(err)
	}
	poll(t, "the port to close", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
}

func TestPortsUDP(t *testing.T) {
	f := newPortsFixture(t)
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], a)
		}
	}()
	f.service(t, "resolver", model.ProtoUDP, "udp://"+echo.LocalAddr().String(), 0)
	n := f.allocate(t, model.PortUDP, "resolver")
	c, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(n))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	// Datagrams sent before the port opens are lost (ICMP refused): retry.
	poll(t, "an echo through the udp port", func() bool {
		c.Write([]byte("probe"))
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		return err == nil && string(buf[:n]) == "probe"
	})
	c.SetReadDeadline(time.Now().Add(portsWait))
	for _, size := range []int{1, 700, 1400} {
		p := []byte(strings.Repeat("x", size))
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil || n != size {
			t.Fatalf("echo of %d bytes: %d, %v; want the same datagram", size, n, err)
		}
	}
}

// proxyBackend records the PROXY header of each connection.
func proxyBackend(t *testing.T) (string, chan *pp.Header) {
	headers := make(chan *pp.Header, 4)
	addr := tcpServer(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(portsWait))
		br := bufio.NewReader(c)
		h, err := pp.Read(br)
		if err != nil {
			headers <- nil
			return
		}
		headers <- h
		rest, _ := br.ReadString('\n')
		c.Write([]byte(rest))
	})
	return addr, headers
}

func TestPortsInboundProxyProtocol(t *testing.T) {
	for _, tt := range []struct {
		name    string
		trusted string
		wantSrc string
	}{
		{"trusted", "127.0.0.1/32", "198.51.100.9:4242"},
		{"untrusted", "10.0.0.0/8", "127.0.0.1:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newPortsFixture(t, tt.trusted)
			backend, headers := proxyBackend(t)
			f.service(t, "db", model.ProtoTCP, "tcp://"+backend, 2)
			n := f.allocate(t, model.PortTCP, "db")
			var c net.Conn
			poll(t, "the port to open", func() bool {
				var err error
				c, err = net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(n))
				return err == nil
			})
			defer c.Close()
			c.SetDeadline(time.Now().Add(portsWait))
			// What a load balancer (or a spoofer) sends first.
			c.Write([]byte("PROXY TCP4 198.51.100.9 203.0.113.1 4242 " + strconv.Itoa(n) + "\r\nping\n"))
			h := <-headers
			if h == nil {
				t.Fatal("backend got no PROXY header")
			}
			if src := h.SourceAddr.String(); !strings.HasPrefix(src, tt.wantSrc) {
				t.Errorf("backend saw client %s, want %s…", src, tt.wantSrc)
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			want := "ping\n"
			if tt.name == "untrusted" {
				// The stranger's header is not honoured: it reaches the backend as data.
				want = "PROXY TCP4 198.51.100.9 203.0.113.1 4242 " + strconv.Itoa(n) + "\r\n"
			}
			if line != want {
				t.Errorf("backend echoed %q, want %q", line, want)
			}
		})
	}
}
