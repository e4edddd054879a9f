package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Cluster figures (Report.Scenarios["cluster"]), three gateways on one
// etcd (embedded in the bench process), each on its own loopback address
// (127.0.0.2-4, its --public-ip):
//
//	join_ms                 from starting the three gateways to each listing all three
//	propagate_ms            a service added on the first gateway (API, direct upstream):
//	                        from the CLI's exit to the last of the three serving it, median of clusterProbes
//	propagate_max_ms        the slowest of those
//	dns_withdraw_ms         the first gateway killed (SIGKILL): until the second's DNS no
//	                        longer lists it for the service (the lease TTL, --cluster-ttl 10 s)
//	member_gone_ms          until the second's `gateway list` no longer shows it
const clusterProbes = 5

// clusterScenario runs the cluster measurements once.
func (h *harness) clusterScenario(ctx context.Context, dir string) (Figures, error) {
	etcd, stopEtcd, err := startBenchEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	defer stopEtcd()
	var stops []*proc
	defer func() {
		for _, p := range stops {
			p.stop()
		}
	}()
	b, err := h.startBackend(ctx, dir)
	if err != nil {
		return nil, err
	}
	stops = append(stops, b.proc)

	f := Figures{}
	start := time.Now()
	gws := make([]*gateway, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := fmt.Sprintf("127.0.0.%d", i+2)
			gws[i], errs[i] = h.startGateway(ctx, dir, fmt.Sprintf("gateway%d", i+1), nil,
				"--store", "etcd://"+etcd, "--domain", dnsDomain, "--public-ip", ip,
				"--https-addr", ip+":0", "--http-addr", ip+":0", "--api-addr", ip+":0", "--dns-addr", ip+":0",
				"--upstream-allow", "127.0.0.1/32", "--http3=false")
		}()
	}
	wg.Wait()
	for i, g := range gws {
		if g != nil {
			stops = append(stops, g.proc)
		}
		if errs[i] != nil {
			return nil, fmt.Errorf("gateway %d: %w", i+1, errs[i])
		}
	}
	for _, g := range gws {
		if err := waitFor(ctx, 20*time.Second, "three gateways in the member list", func() bool {
			ids, _ := h.members(ctx, g)
			return len(ids) == 3
		}); err != nil {
			return nil, err
		}
	}
	f["join_ms"] = ms(time.Since(start))

	if _, err := h.cli(ctx, gws[0], "tenant", "add", "bench"); err != nil {
		return nil, err
	}
	var props []float64
	for i := range clusterProbes {
		name := fmt.Sprintf("probe%d", i)
		if _, err := h.cli(ctx, gws[0], "service", "add", name, "--tenant", "bench", "--upstream", "http://"+b.httpAddr); err != nil {
			return nil, err
		}
		added := time.Now()
		var last time.Duration
		for _, g := range gws {
			u := &url.URL{Scheme: "https", Host: name + "." + dnsDomain + ":" + portOf(g.httpsAddr)}
			t := g.publicTarget("cluster", u)
			tr := t.transport(false, 1)
			err := waitFor(ctx, 10*time.Second, name+" served by "+g.httpsAddr, func() bool {
				return getOnce(ctx, tr, t.base+"/small") == nil
			})
			tr.CloseIdleConnections()
			if err != nil {
				return nil, err
			}
			last = max(last, time.Since(added))
		}
		props = append(props, ms(last))
	}
	f["propagate_ms"] = median(props)
	f["propagate_max_ms"] = slices.Max(props)

	// Kill the first gateway; watch the second drop it.
	victimIP := "127.0.0.2"
	ids, err := h.members(ctx, gws[1])
	if err != nil {
		return nil, err
	}
	victim := ""
	for _, m := range ids {
		if slices.Contains(m.Addrs, victimIP) {
			victim = m.ID
		}
	}
	// Every gateway reaches the direct upstream: each holds the name (and
	// says so in etcd, which is what DNS answers from).
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	if err := waitFor(ctx, 5*time.Second, "all three gateways holding probe0", func() bool {
		resp, err := cli.Get(ctx, "webgw/cluster/held/probe0/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 3
	}); err != nil {
		return nil, err
	}
	if addrs, err := lookupA(gws[1].dnsAddr, "probe0."+dnsDomain); err != nil || len(addrs) != 3 {
		return nil, fmt.Errorf("probe0's DNS answer before the kill: %v %v, want the three gateways", addrs, err)
	}
	killed := time.Now()
	gws[0].proc.stop()
	var dnsGone, memberGone time.Duration
	err = waitFor(ctx, 60*time.Second, "the killed gateway to leave DNS and the member list", func() bool {
		if dnsGone == 0 {
			if addrs, err := lookupA(gws[1].dnsAddr, "probe0."+dnsDomain); err == nil && len(addrs) > 0 && !slices.Contains(addrs, victimIP) {
				dnsGone = time.Since(killed)
			}
		}
		if memberGone == 0 {
			if ms, err := h.members(ctx, gws[1]); err == nil && !slices.ContainsFunc(ms, func(m benchMember) bool { return m.ID == victim }) {
				memberGone = time.Since(killed)
			}
		}
		return dnsGone != 0 && memberGone != 0
	})
	if err != nil {
		return nil, err
	}
	f["dns_withdraw_ms"] = ms(dnsGone)
	f["member_gone_ms"] = ms(memberGone)
	return f, nil
}

type benchMember struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// members runs `webgw gateway list --json` against g.
func (h *harness) members(ctx context.Context, g *gateway) ([]benchMember, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, h.bin, append([]string{"gateway", "list", "--json"}, g.admin()...)...).Output()
	if err != nil {
		return nil, err
	}
	var ms []benchMember
	err = json.Unmarshal(out, &ms)
	return ms, err
}

// lookupA asks server for name's A records.
func lookupA(server, name string) ([]string, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	c := &mdns.Client{Timeout: time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out, nil
}

// startBenchEtcd runs a one-member etcd in this process on free loopback
// ports, with its data in dir.
func startBenchEtcd(dir string) (string, func(), error) {
	free := func() (url.URL, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return url.URL{}, err
		}
		defer ln.Close()
		return url.URL{Scheme: "http", Host: ln.Addr().String()}, nil
	}
	client, err := free()
	if err != nil {
		return "", nil, err
	}
	peer, err := free()
	if err != nil {
		return "", nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "webgw-bench"
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-srv.Server.ReadyNotify():
	case err := <-srv.Err():
		srv.Close()
		return "", nil, err
	case <-time.After(20 * time.Second):
		srv.Close()
		return "", nil, fmt.Errorf("not ready within 20 s")
	}
	return client.Host, srv.Close, nil
}

// writeCluster prints the cluster part.
func (r *Report) writeCluster(w io.Writer) {
	runs := r.Scenarios["cluster"]
	if len(runs) == 0 {
		return
	}
	m := r.ScenarioMedian["cluster"]
	fmt.Fprintf(w, "\ncluster: three gateways on one etcd, each on its own loopback address (%d runs: median (worst))\n\n", len(runs))
	for _, row := range []struct{ label, name string }{
		{"three gateways started -> each lists all three, ms", "join_ms"},
		{"service added on one -> served by all three, ms (median of 5)", "propagate_ms"},
		{"service added on one -> served by all three, ms (slowest of 5)", "propagate_max_ms"},
		{"gateway killed -> gone from another's DNS answer, ms", "dns_withdraw_ms"},
		{"gateway killed -> gone from another's member list, ms", "member_gone_ms"},
	} {
		fmt.Fprintf(w, "%-64s %10.0f (%.0f)\n", row.label, m[row.name], r.worst("cluster", row.name))
	}
}
