package e2e

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startEtcd runs a one-member etcd in the test process on free loopback
// ports until the test ends, and returns its client address.
func startEtcd(t *testing.T) string {
	t.Helper()
	client, peer := freeAddr(t), freeAddr(t)
	cfg := embed.NewConfig()
	cfg.Name = "webgw-e2e"
	cfg.Dir = t.TempDir()
	cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: client}}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: peer}}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	select {
	case <-srv.Server.ReadyNotify():
	case err := <-srv.Err():
		t.Fatalf("etcd: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("etcd not ready within 20 s")
	}
	return client
}

// TestEtcdStore: a gateway keeps its state in etcd (--store etcd://): a
// tenant's service made on one gateway is there, with its owner, for a
// second gateway on the same etcd with another data dir, which serves it.
func TestEtcdStore(t *testing.T) {
	t.Parallel()
	etcd := startEtcd(t)
	g1 := startGateway(t, "--store", "etcd://"+etcd)
	tok := g1.addTenant(t, "acme")
	_, url := g1.expose(t, "--token", tok, "--name", "shop", textBackend(t, "kept in etcd\n"))
	if code, body := status(t, g1.caFile, url); code != "200" || body != "kept in etcd\n" {
		t.Fatalf("GET %s through the first gateway = %s %q", url, code, body)
	}

	// A second gateway, another data dir, the same etcd: it knows the
	// tenant (its token works) and the name is owned (another tenant is refused).
	g2 := startGateway(t, "--store", "etcd://"+etcd)
	if g2.caFile == g1.caFile {
		t.Fatal("the gateways share a data dir")
	}
	out := mustRun(t, append([]string{"service", "list"}, g2.admin()...)...)
	if !containsAll(out, "shop", "acme") {
		t.Errorf("the second gateway does not list acme's service from etcd:\n%s", out)
	}
	evil := g2.addTenant(t, "evil")
	_, errOut, code := run(t, 20*time.Second, "expose", "--gateway", g2.httpsAddr, "--ca", g2.caFile,
		"--token", evil, "--name", "shop", textBackend(t, "evil\n"))
	if code == 0 || !containsAll(errOut, "belongs to another tenant") {
		t.Errorf("another tenant took shop on the second gateway: exit %d\n%s", code, errOut)
	}
	// acme's token, made on the first gateway, works on the second.
	_, url2 := g2.expose(t, "--token", tok, "--name", "shop", textBackend(t, "kept in etcd\n"))
	if code, body := status(t, g2.caFile, url2); code != "200" || body != "kept in etcd\n" {
		t.Errorf("GET %s through the second gateway = %s %q", url2, code, body)
	}
}

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
