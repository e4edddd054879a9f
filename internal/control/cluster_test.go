package control_test

import (
	"context"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

// fakeCluster is a control.GatewayLister whose list the test sets.
type fakeCluster struct {
	mu      sync.Mutex
	list    []tunnel.GatewayInfo // guarded by mu
	changed chan struct{}        // closed by set; guarded by mu
}

var _ control.GatewayLister = (*fakeCluster)(nil)

func newFakeCluster(list ...tunnel.GatewayInfo) *fakeCluster {
	return &fakeCluster{list: list, changed: make(chan struct{})}
}

func (f *fakeCluster) Gateways() []tunnel.GatewayInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.list)
}

func (f *fakeCluster) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// set replaces the list and signals the change (also when the list is the same).
func (f *fakeCluster) set(list ...tunnel.GatewayInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = list
	close(f.changed)
	f.changed = make(chan struct{})
}

var (
	gwSelf  = tunnel.GatewayInfo{ID: "gw-test", Addr: "192.0.2.1:443", Region: "eu"}
	gwTwo   = tunnel.GatewayInfo{ID: "gw-two", Addr: "192.0.2.2:443"}
	gwThree = tunnel.GatewayInfo{ID: "gw-three", Addr: "[2001:db8::3]:443"}
)

func clusterHello(id string, specs ...tunnel.ServiceSpec) *tunnel.Hello {
	h := hello(id, "", specs...)
	h.Cluster = true
	return h
}

// senders counts the goroutines sending gateway lists, in the whole process.
func senders() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "control.(*Server).sendGateways(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// wantSenders waits until n sender goroutines run.
func wantSenders(t *testing.T, n int) {
	t.Helper()
	eventually(t, "sender goroutines", func() bool { return senders() == n })
}

// readGateways reads the next control message, which must be a gateways one.
func (fa *fakeAgent) readGateways(t *testing.T) []tunnel.GatewayInfo {
	t.Helper()
	fa.ctrl.SetReadDeadline(time.Now().Add(waitFor))
	defer fa.ctrl.SetReadDeadline(time.Time{})
	m, err := tunnel.ReadMessage(fa.ctrl)
	if err != nil {
		t.Fatalf("read gateways message: %v", err)
	}
	if m.Type != tunnel.MsgGateways {
		t.Fatalf("got a %q message, want gateways", m.Type)
	}
	return m.Gateways
}

func TestWelcomeListsGateways(t *testing.T) {
	fc := newFakeCluster(gwTwo, gwSelf)
	h := newHarness(t, func(s *control.Server) { s.Cluster = fc })
	for _, cluster := range []bool{true, false} {
		hl := hello("agent-list", "", spec("", model.ProtoHTTP))
		hl.Cluster = cluster
		fa := h.connect(t, hl)
		wantAdmitted(t, fa)
		// The field is optional: agents that do not follow the cluster get
		// it too, and ignore it.
		if want := []tunnel.GatewayInfo{gwTwo, gwSelf}; !slices.Equal(fa.welcome.Gateways, want) {
			t.Errorf("cluster %v: welcome lists %+v, want %+v", cluster, fa.welcome.Gateways, want)
		}
		fa.sess.Close()
		fa.waitDone(t)
	}
	// A refused agent learns nothing of the cluster.
	h.srv.Open = false
	fa := h.connect(t, clusterHello("agent-refused", spec("", model.ProtoHTTP)))
	wantRefused(t, fa, true, "requires a tenant token")
	if len(fa.welcome.Gateways) != 0 {
		t.Errorf("a refusal lists %+v, want no gateways", fa.welcome.Gateways)
	}
}

func TestWelcomeWithoutCluster(t *testing.T) {
	h := newHarness(t, nil)
	fa := h.connect(t, clusterHello("agent-alone", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	if len(fa.welcome.Gateways) != 0 {
		t.Errorf("a gateway without a cluster lists %+v", fa.welcome.Gateways)
	}
	if n := senders(); n != 0 {
		t.Errorf("%d gateway list senders without a cluster, want 0", n)
	}
}

func TestGatewaysUpdates(t *testing.T) {
	fc := newFakeCluster(gwSelf)
	h := newHarness(t, func(s *control.Server) { s.Cluster = fc })
	fa := h.connect(t, clusterHello("agent-follows", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	if want := []tunnel.GatewayInfo{gwSelf}; !slices.Equal(fa.welcome.Gateways, want) {
		t.Fatalf("welcome lists %+v, want %+v", fa.welcome.Gateways, want)
	}
	wantSenders(t, 1)

	// A gateway joins: the full new list is sent.
	fc.set(gwSelf, gwThree, gwTwo)
	if got, want := fa.readGateways(t), []tunnel.GatewayInfo{gwSelf, gwThree, gwTwo}; !slices.Equal(got, want) {
		t.Fatalf("after a join: %+v, want %+v", got, want)
	}
	// A change signal with the same list, and an empty list, send nothing:
	// the next message is the one after them.
	fc.set(gwSelf, gwThree, gwTwo)
	fc.set()
	fc.set(gwSelf, gwTwo)
	if got, want := fa.readGateways(t), []tunnel.GatewayInfo{gwSelf, gwTwo}; !slices.Equal(got, want) {
		t.Fatalf("after a leave: %+v, want %+v", got, want)
	}
	// The end of the session stops the sender.
	fa.sess.Close()
	fa.waitDone(t)
	if n := senders(); n != 0 {
		t.Errorf("%d gateway list senders after the session ended, want 0", n)
	}
}

// Only agents whose hello sets cluster get gateways messages: an agent
// that does not know them would take one for a malformed message.
func TestGatewaysOnlyToFollowers(t *testing.T) {
	fc := newFakeCluster(gwSelf)
	h := newHarness(t, func(s *control.Server) { s.Cluster = fc })
	old := h.connect(t, hello("agent-old", "", spec("", model.ProtoHTTP)))
	wantAdmitted(t, old)
	follower := h.connect(t, clusterHello("agent-new", spec("", model.ProtoHTTP)))
	wantAdmitted(t, follower)
	wantSenders(t, 1)
	fc.set(gwSelf, gwTwo)
	if got := follower.readGateways(t); !slices.Equal(got, []tunnel.GatewayInfo{gwSelf, gwTwo}) {
		t.Errorf("follower got %+v", got)
	}
	// The old agent's control stream stays empty: after its drain, the
	// gateway's direction ends with the session, with nothing before it.
	if err := tunnel.WriteMessage(old.ctrl, &tunnel.Message{Type: tunnel.MsgDrain}); err != nil {
		t.Fatal(err)
	}
	old.sess.Close()
	old.waitDone(t)
	old.ctrl.SetReadDeadline(time.Now().Add(waitFor))
	if m, err := tunnel.ReadMessage(old.ctrl); err == nil {
		t.Errorf("an agent without cluster got a %q message", m.Type)
	}
}

// A list the welcome cannot carry (malformed here) does not keep the agent
// out: it is welcomed without it, and later lists still reach it.
func TestGatewaysBadList(t *testing.T) {
	bad := tunnel.GatewayInfo{ID: "gw bad", Addr: "nowhere"}
	fc := newFakeCluster(gwSelf, bad)
	h := newHarness(t, func(s *control.Server) { s.Cluster = fc })
	fa := h.connect(t, clusterHello("agent-bad-list", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	if len(fa.welcome.Gateways) != 0 {
		t.Errorf("welcome lists %+v, want none", fa.welcome.Gateways)
	}
	wantSenders(t, 1)
	fc.set(gwSelf, gwTwo)
	if got := fa.readGateways(t); !slices.Equal(got, []tunnel.GatewayInfo{gwSelf, gwTwo}) {
		t.Errorf("after the fix: %+v", got)
	}
}

// The gateway stopping (ctx) stops the sender too, and ServeConn returns.
func TestGatewaysSenderStopsWithServer(t *testing.T) {
	fc := newFakeCluster(gwSelf)
	h := newHarness(t, func(s *control.Server) { s.Cluster = fc })
	ctx, cancel := context.WithCancel(t.Context())
	h.ctx = ctx
	gw, ag := net.Pipe()
	fa := h.connectOver(t, gw, ag, clusterHello("agent-stop", spec("", model.ProtoHTTP)))
	wantAdmitted(t, fa)
	wantSenders(t, 1)
	cancel()
	fa.waitDone(t)
	if n := senders(); n != 0 {
		t.Errorf("%d gateway list senders after the server stopped, want 0", n)
	}
}
