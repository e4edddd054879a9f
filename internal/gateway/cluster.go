package gateway

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/dns"
	"github.com/webgw/webgw/internal/tunnel"
)

// heldEvery is how often the names this gateway can serve are compared
// with what it published: a tunnel lost or gained shows in the cluster's
// view (and DNS answers) within this.
const heldEvery = 250 * time.Millisecond

// startCluster registers this gateway as a member of the cluster on its
// store (alone with a bolt file) and keeps the names it can serve
// published, until ctx ends.
func (g *Gateway) startCluster(ctx context.Context, addrs []netip.Addr, tunnelHost, httpsPort string) error {
	self := cluster.Member{ID: g.ID, Tunnel: net.JoinHostPort(tunnelHost, httpsPort), Region: g.cfg.Region,
		Version: Version, Started: time.Now().UTC().Truncate(time.Second)}
	for _, a := range addrs {
		self.Addrs = append(self.Addrs, a.String())
	}
	if len(g.cfg.PublicIPs) == 0 && strings.HasPrefix(g.cfg.Store, "etcd://") {
		// Other gateways and agents dial the address published here, and
		// DNS answers with it: without --public-ip it is a guess.
		g.log.Warn("cluster: no --public-ip; other gateways, agents and DNS answers use " + self.Tunnel + ", set --public-ip to this gateway's own address")
	}
	c, err := cluster.New(g.store, self, cluster.Options{TTL: g.cfg.ClusterTTL, Log: g.log})
	if err != nil {
		return err
	}
	g.cluster = c
	g.goRun(func() error { c.Run(ctx); return nil })
	g.goRun(func() error { g.publishHeld(ctx); return nil })
	return nil
}

// publishHeld keeps the cluster told which names this gateway can serve
// now (a live local agent or a healthy direct upstream), until ctx ends.
func (g *Gateway) publishHeld(ctx context.Context) {
	t := time.NewTicker(heldEvery)
	defer t.Stop()
	for {
		held := map[string]cluster.Holding{}
		for _, s := range g.table.List() {
			if s.Live() {
				h := cluster.Holding{Protocol: string(s.Protocol), ProxyProtocol: s.ProxyProtocol(), Tenant: s.Tenant}
				if s.Tenant == "" {
					var ids []string
					for _, a := range s.Agents() {
						if b := cluster.AgentBase(a.ID); !slices.Contains(ids, b) {
							ids = append(ids, b)
						}
					}
					slices.Sort(ids)
					h.Agents = strings.Join(ids, ",")
				}
				held[s.Name] = h
			}
		}
		g.cluster.SetHeld(held)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dnsCluster is the cluster as the DNS server sees it: every live gateway
// a name server, a service answered with the gateways that hold it.
type dnsCluster struct{ c *cluster.Cluster }

func memberAddrs(m cluster.Member) []netip.Addr {
	var out []netip.Addr
	for _, s := range m.Addrs {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func (d dnsCluster) NameServers() []dns.NameServer {
	var out []dns.NameServer
	for _, m := range d.c.Members() {
		out = append(out, dns.NameServer{Label: "ns-" + strings.ToLower(m.ID), Addrs: memberAddrs(m)})
	}
	return out
}

func (d dnsCluster) ServiceAddrs(service string) []netip.Addr {
	var out []netip.Addr
	for _, id := range d.c.Holders(service) {
		if m, ok := d.c.Member(id); ok {
			out = append(out, memberAddrs(m)...)
		}
	}
	return out
}

// agentCluster is the cluster as agents see it (control.GatewayLister):
// the live gateways' tunnel addresses.
type agentCluster struct{ c *cluster.Cluster }

func (a agentCluster) Gateways() []tunnel.GatewayInfo {
	var out []tunnel.GatewayInfo
	for _, m := range a.c.Members() {
		if m.Tunnel != "" {
			out = append(out, tunnel.GatewayInfo{ID: m.ID, Addr: m.Tunnel, Region: m.Region})
		}
	}
	return out
}

func (a agentCluster) Changed() <-chan struct{} { return a.c.MembersChanged() }

// quickHeldElsewhere is control.Server.QuickElsewhere: whether another
// live gateway serves name as a quick tunnel, and whether agentID's
// process is one of the agents it serves it with.
func (g *Gateway) quickHeldElsewhere(name, agentID string) (held, byAgent bool) {
	for _, h := range g.cluster.OthersHolding(name) {
		if h.Tenant != "" {
			continue
		}
		held = true
		if agentID != "" && slices.Contains(strings.Split(h.Agents, ","), cluster.AgentBase(agentID)) {
			byAgent = true
		}
	}
	return held, byAgent
}
