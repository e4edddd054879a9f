package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// tlsBackendVia is a fake agent's serve function for KindTLS streams: the
// agent side terminates TLS itself with a certificate for name and
// answers each line with name + ": " + line.
func tlsBackendVia(t *testing.T, name string) func(*tunnel.Header, net.Conn) {
	cert := selfSigned(t, name)
	return func(h *tunnel.Header, st net.Conn) {
		defer st.Close()
		if h.Kind != tunnel.KindTLS || h.Host != name {
			t.Errorf("stream %+v, want kind tls with host %s", h, name)
			return
		}
		tc := tls.Server(st, &tls.Config{Certificates: []tls.Certificate{*cert}})
		tc.SetDeadline(time.Now().Add(waitTimeout))
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return
		}
		tc.Write([]byte(name + ": " + line))
	}
}

func TestTCPForwarderSNI(t *testing.T) {
	tab := route.NewTable(nil)
	for _, name := range []string{"one", "two"} {
		tab.Upsert(name, "alpha", model.ProtoTLS, true)
		fa := newFakeAgent(t, tlsBackendVia(t, name+".gw.test"))
		if err := tab.Attach(name, fa.agent); err != nil {
			t.Fatal(err)
		}
	}
	tab.Upsert("plain", "alpha", model.ProtoTCP, true)
	names := &Names{Domain: "gw.test", Table: tab}
	f := &TCPForwarder{SNI: func(sn string) *route.Service {
		if svc := names.Lookup(sn); svc != nil && svc.Tenant == "alpha" {
			return svc
		}
		return nil
	}}
	addr := startTCPForwarder(t, f)
	for _, name := range []string{"one", "two"} {
		host := name + ".gw.test"
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: host, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		c.SetDeadline(time.Now().Add(waitTimeout))
		c.Write([]byte("hi\n"))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if want := host + ": hi\n"; line != want {
			t.Errorf("answer %q, %v; want %q from the service the SNI names", line, err, want)
		}
	}
	// A name that is not a tls service of the port's tenant gets an alert.
	for _, sn := range []string{"plain.gw.test", "nope.gw.test", ""} {
		_, err := tls.Dial("tcp", addr, &tls.Config{ServerName: sn, InsecureSkipVerify: true})
		if err == nil {
			t.Errorf("SNI %q: handshake succeeded, want it refused", sn)
		}
	}
	// A client that sends no ClientHello is cut after HelloTimeout.
	f2 := &TCPForwarder{SNI: f.SNI, HelloTimeout: 50 * time.Millisecond}
	c := dialTCP(t, startTCPForwarder(t, f2))
	c.Write([]byte("not tls at all\n"))
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err == nil {
		t.Error("a non-TLS client got bytes back from an SNI port")
	}
}

func TestTCPForwarderServiceProxyProtocol(t *testing.T) {
	headers := make(chan *pp.Header, 1)
	backend := tcpBackend(t, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitTimeout))
		h, err := pp.Read(bufio.NewReader(c))
		if err != nil {
			headers <- nil
			return
		}
		headers <- h
	})
	tab := route.NewTable(nil)
	tab.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", u.HostPort())
	}
	svc := tab.Configure(model.Service{Name: "db", Tenant: "alpha", Protocol: model.ProtoTCP, ProxyProtocol: 1,
		Upstreams: []model.Upstream{{URL: "tcp://" + backend}}})
	f := &TCPForwarder{Lookup: func() *route.Service { return svc }}
	c := dialTCP(t, startTCPForwarder(t, f))
	h := <-headers
	if h == nil || h.Version != 1 || h.SourceAddr.String() != c.LocalAddr().String() {
		t.Fatalf("backend header %+v, want v1 from %s (the service's proxy_protocol)", h, c.LocalAddr())
	}
}

func TestUDPForwarderSharedLimit(t *testing.T) {
	svc, _ := forwardService(t, relayTo(t, udpEcho(t)))
	lim := &SessionLimit{Max: 1}
	f1 := &UDPForwarder{Lookup: func() *route.Service { return svc }, Limit: lim}
	f2 := &UDPForwarder{Lookup: func() *route.Service { return svc }, Limit: lim}
	a1, a2 := startUDPForwarder(t, f1), startUDPForwarder(t, f2)
	c1 := dialUDP(t, a1)
	udpRoundTrip(t, c1, []byte("first"))
	// The second port shares the bound: its new client is dropped.
	c2 := dialUDP(t, a2)
	c2.Write([]byte("second"))
	waitFor(t, "the drop", func() bool { return f2.Drops() == 1 })
	if lim.Sessions() != 1 {
		t.Errorf("Sessions() = %d, want 1", lim.Sessions())
	}
}

func TestUDPForwarderDirect(t *testing.T) {
	tab := route.NewTable(nil)
	tab.DialDirect = func(ctx context.Context, u model.ParsedUpstream, _ model.Upstream, _ bool) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", u.HostPort())
	}
	svc := tab.Configure(model.Service{Name: "dns", Tenant: "alpha", Protocol: model.ProtoUDP,
		Upstreams: []model.Upstream{{URL: "udp://" + udpEcho(t)}}})
	f := &UDPForwarder{Lookup: func() *route.Service { return svc }}
	c := dialUDP(t, startUDPForwarder(t, f))
	for _, size := range []int{1, 1200, 0, 9000} {
		udpRoundTrip(t, c, []byte(strings.Repeat("d", size)))
	}
}

func TestTCPForwarderMaxConnsPerIP(t *testing.T) {
	svc, _ := forwardService(t, spliceTo(t, tcpBackend(t, echoTCP)))
	f := &TCPForwarder{Lookup: func() *route.Service { return svc }, MaxConnsPerIP: 2}
	addr := startTCPForwarder(t, f)
	var held []*net.TCPConn
	for i := range 2 {
		c := dialTCP(t, addr)
		c.Write([]byte{byte('a' + i)})
		b := make([]byte, 1)
		if _, err := c.Read(b); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		held = append(held, c)
	}
	// The third from the same address is closed at once.
	c := dialTCP(t, addr)
	c.Write([]byte("x"))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a third connection from one address was served with MaxConnsPerIP 2")
	}
	// One ends: there is room again.
	held[0].Close()
	waitFor(t, "the slot to free", func() bool { return f.Conns() == 1 })
	c = dialTCP(t, addr)
	c.Write([]byte("y"))
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil || b[0] != 'y' {
		t.Fatalf("after one closed: %q, %v", b, err)
	}
}
