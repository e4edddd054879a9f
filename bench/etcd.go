package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdMain is `bench etcd -dir DIR`: a one-member etcd on free loopback
// ports, its data in DIR (no fsync), the store that the relay part's
// gateways share. It prints "client ADDR" once etcd serves, and serves
// until its stdin closes.
func etcdMain(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dir := fs.String("dir", "", "data directory (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "etcd: -dir is required")
		return 2
	}
	addrs, err := freeLoopback(2)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	client, peer := addrs[0], addrs[1]
	cfg := embed.NewConfig()
	cfg.Name = "webgw-bench"
	cfg.Dir = *dir
	cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: client}}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: peer}}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	defer srv.Close()
	select {
	case <-srv.Server.ReadyNotify():
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not ready within 30 s")
		return 1
	}
	fmt.Printf("client %s\n", client)
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
		return 0
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
}

// freeLoopback returns n distinct 127.0.0.1 addresses whose ports were
// free a moment ago (held open together, so they differ).
func freeLoopback(n int) ([]string, error) {
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}
