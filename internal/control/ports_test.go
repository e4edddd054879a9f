package control_test

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/tunnel"
)

// portHarness is a harness whose server allocates ports from 20000-20002
// (quota 2) and records the ports it was asked to open.
type portHarness struct {
	*harness
	mu     sync.Mutex
	opened []model.Port
	fail   error // returned by OpenPort when set
}

func newPortHarness(t *testing.T) *portHarness {
	ph := &portHarness{}
	ph.harness = newHarness(t, func(s *control.Server) {
		s.PortRange = model.PortRange{First: 20000, Last: 20002}
		s.MaxPortsPerTenant = 2
		s.OpenPort = func(p model.Port) (string, error) {
			ph.mu.Lock()
			defer ph.mu.Unlock()
			if ph.fail != nil {
				return "", ph.fail
			}
			ph.opened = append(ph.opened, p)
			return "203.0.113.7:" + strconv.Itoa(p.Number), nil
		}
	})
	return ph
}

func portSpec(name string, proto model.Protocol, port int) tunnel.ServiceSpec {
	return tunnel.ServiceSpec{Name: name, Protocol: string(proto), Port: port}
}

func TestClaimPort(t *testing.T) {
	h := newPortHarness(t)
	tok := h.addTenant(t, "alpha")
	fa := h.connect(t, hello("a", tok, portSpec("db", model.ProtoTCP, 0), portSpec("resolver", model.ProtoUDP, 20001)))
	wantAdmitted(t, fa)
	gs := fa.welcome.Services
	if gs[0].Error != "" || gs[0].Port < 20000 || gs[0].Port > 20002 || gs[0].URL != "203.0.113.7:"+strconv.Itoa(gs[0].Port) {
		t.Fatalf("tcp grant %+v, want a port of 20000-20002 announced as HOST:PORT", gs[0])
	}
	if gs[1].Error != "" || gs[1].Port != 20001 || gs[1].URL != "203.0.113.7:20001" {
		t.Fatalf("udp grant %+v, want port 20001", gs[1])
	}
	held, err := store.PortsOf(h.ctx, h.st, "alpha")
	if err != nil || len(held) != 2 {
		t.Fatalf("PortsOf(alpha) = %v, %v; want the two ports", held, err)
	}
	h.mu.Lock()
	opened := len(h.opened)
	h.mu.Unlock()
	if opened != 2 {
		t.Errorf("OpenPort called %d times, want 2 (before the grants)", opened)
	}
	wantAgents(t, h.harness, "db", 1)

	// The same service again (a replica, or after a restart) keeps its port.
	fb := h.connect(t, hello("b", tok, portSpec("db", model.ProtoTCP, 0)))
	wantAdmitted(t, fb)
	if g := fb.welcome.Services[0]; g.Port != gs[0].Port {
		t.Errorf("second agent's grant %+v, want the service's port %d", g, gs[0].Port)
	}
	// Asking for another port than the one held is refused, naming both.
	other := 20000
	if gs[0].Port == 20000 {
		other = 20002
	}
	fc := h.connect(t, hello("c", tok, portSpec("db", model.ProtoTCP, other)))
	if g := fc.welcome; g.Error == "" && (g.Services[0].Error == "" || !strings.Contains(g.Services[0].Error, "holds tcp port")) {
		t.Errorf("grant for another port %+v, want a refusal saying which port it holds", g.Services[0])
	}
}

func TestClaimPortRefusals(t *testing.T) {
	h := newPortHarness(t)
	alpha := h.addTenant(t, "alpha")
	beta := h.addTenant(t, "beta")
	fa := h.connect(t, hello("a", alpha, portSpec("a1", model.ProtoTCP, 20000)))
	wantAdmitted(t, fa)

	tests := []struct {
		spec      tunnel.ServiceSpec
		token     string
		permanent bool
		want      string
	}{
		{portSpec("b1", model.ProtoTCP, 20000), beta, true, "held by another"},
		{portSpec("b2", model.ProtoTCP, 30000), beta, true, "outside the gateway's range"},
		{portSpec("b3", model.ProtoHTTP, 20001), beta, true, "public port is for tcp and udp"},
	}
	for i, tt := range tests {
		fb := h.connect(t, hello("b"+strconv.Itoa(i), tt.token, tt.spec))
		if fb.welcome.Error != "" {
			if !strings.Contains(fb.welcome.Error, tt.want) {
				t.Errorf("%+v: refusal %q, want it to contain %q", tt.spec, fb.welcome.Error, tt.want)
			}
			continue
		}
		g := fb.welcome.Services[0]
		if !strings.Contains(g.Error, tt.want) || g.Permanent != tt.permanent {
			t.Errorf("%+v: grant %+v, want an error containing %q, permanent %v", tt.spec, g, tt.want, tt.permanent)
		}
	}

	// The quota (2) holds: a third port for alpha is refused for good.
	f2 := h.connect(t, hello("a2", alpha, portSpec("a2", model.ProtoUDP, 0), portSpec("a3", model.ProtoUDP, 0)))
	if g := f2.welcome.Services[1]; !strings.Contains(g.Error, "quota") || !g.Permanent {
		t.Errorf("third port: grant %+v, want a permanent quota refusal", g)
	}

	// A listener that cannot open refuses the service, for now.
	h.mu.Lock()
	h.fail = errors.New("address already in use")
	h.mu.Unlock()
	f3 := h.connect(t, hello("b9", beta, portSpec("b9", model.ProtoTCP, 0)))
	if g := f3.welcome; g.Error == "" && (!strings.Contains(g.Services[0].Error, "address already in use") || g.Services[0].Permanent) {
		t.Errorf("grant when the port cannot open %+v, want a temporary refusal", g.Services[0])
	}
	if held, _ := store.PortsOf(h.ctx, h.st, "beta"); len(held) != 0 {
		t.Errorf("beta holds %v after its port failed to open, want it released", held)
	}
}

func TestClaimPortWithoutForwarding(t *testing.T) {
	h := newHarness(t, nil) // no OpenPort: this gateway forwards no ports
	fa := h.connect(t, hello("q", "", portSpec("", model.ProtoUDP, 0)))
	if fa.welcome.Error == "" && !strings.Contains(fa.welcome.Services[0].Error, "forwards no public ports") {
		t.Errorf("welcome %+v, want the udp service refused", fa.welcome)
	}
}

func TestClaimPortProtocolChange(t *testing.T) {
	h := newPortHarness(t)
	tok := h.addTenant(t, "alpha")
	fa := h.connect(t, hello("a", tok, portSpec("svc", model.ProtoTCP, 20000)))
	wantAdmitted(t, fa)
	fa.sess.Close()
	fa.waitDone(t)
	eventually(t, "agent gone", func() bool { s := h.table.Lookup("svc"); return s != nil && !s.Live() })
	fb := h.connect(t, hello("a", tok, portSpec("svc", model.ProtoUDP, 0)))
	wantAdmitted(t, fb)
	if g := fb.welcome.Services[0]; g.Error != "" {
		t.Fatalf("udp grant %+v", g)
	}
	held, _ := store.PortsOf(h.ctx, h.st, "alpha")
	if len(held) != 1 || held[0].Proto != model.PortUDP {
		t.Errorf("ports after the change to udp: %v, want only the udp one", held)
	}
}

func TestClaimProxyProtocol(t *testing.T) {
	h := newPortHarness(t)
	tok := h.addTenant(t, "alpha")
	sp := portSpec("db", model.ProtoTCP, 0)
	sp.ProxyProtocol = 2
	fa := h.connect(t, hello("a", tok, sp))
	wantAdmitted(t, fa)
	sv, _, err := store.GetService(h.ctx, h.st, "db")
	if err != nil || sv.ProxyProtocol != 2 {
		t.Errorf("stored service %+v, %v; want proxy_protocol 2 from the hello", sv, err)
	}
	if got := h.table.Lookup("db").Spec().ProxyProtocol; got != 2 {
		t.Errorf("table's proxy_protocol %d, want 2 at once", got)
	}
	// An agent asking for none leaves the stored setting.
	fb := h.connect(t, hello("b", tok, portSpec("db", model.ProtoTCP, 0)))
	wantAdmitted(t, fb)
	if sv, _, _ := store.GetService(h.ctx, h.st, "db"); sv.ProxyProtocol != 2 {
		t.Errorf("proxy_protocol %d after an agent without it, want 2 kept", sv.ProxyProtocol)
	}

	// A quick tunnel's setting lives in the table.
	q := tunnel.ServiceSpec{Protocol: string(model.ProtoTLS), ProxyProtocol: 1}
	fq := h.connect(t, hello("q", "", q))
	wantAdmitted(t, fq)
	if got := h.table.Lookup(fq.welcome.Services[0].Name).Spec().ProxyProtocol; got != 1 {
		t.Errorf("quick tunnel proxy_protocol %d, want 1", got)
	}

	for _, bad := range []tunnel.ServiceSpec{
		{Name: "u1", Protocol: "udp", ProxyProtocol: 2},
		{Name: "u2", Protocol: "tcp", ProxyProtocol: 3},
	} {
		f := h.connect(t, hello("x"+bad.Name, tok, bad))
		if f.welcome.Error == "" && (!strings.Contains(f.welcome.Services[0].Error, "proxy_protocol") || !f.welcome.Services[0].Permanent) {
			t.Errorf("%+v: grant %+v, want a permanent refusal naming proxy_protocol", bad, f.welcome.Services[0])
		}
	}
}
