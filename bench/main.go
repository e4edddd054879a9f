// Command bench measures webgw against a direct connection to the same
// backend, on this machine, in one run: HTTP req/s and p50/p99 latency with
// 64 keep-alive clients, CPU per request of gateway+agent, bulk bytes/s of one
// large download, and RSS per held idle connection. It builds the webgw
// binary, starts a backend (this program re-executed as `bench backend`, so
// its CPU is its own), a gateway and an agent, all on 127.0.0.1, runs direct
// and webgw measurements interleaved for several rounds, and prints the
// medians, the ratios and the goals of issue 2. See README.md.
//
//	go run ./bench                  # the full run, about 2 minutes
//	go run ./bench -json            # machine-readable
//	go run ./bench -pprof /tmp/prof # also CPU and heap profiles of gateway and agent
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "backend" {
		os.Exit(backendMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "fwdbackend" {
		os.Exit(fwdBackendMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "dnsref" {
		os.Exit(dnsRefMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "link" {
		os.Exit(linkMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "yggbackend" {
		os.Exit(yggBackendMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "etcd" {
		os.Exit(etcdMain(os.Args[2:]))
	}
	os.Exit(benchMain(os.Args[1:]))
}

func benchMain(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./bench [flags]\n\nMeasures webgw against a direct connection; see bench/README.md.\n\n")
		fs.PrintDefaults()
	}
	var cfg Config
	bulk := sizeFlag(defaultBulkSize)
	lossyBulk := sizeFlag(defaultLossyBulkSize)
	fwdBulk := sizeFlag(defaultFwdBulkSize)
	var parts, transports string
	var asJSON bool
	var save string
	fs.IntVar(&cfg.Rounds, "rounds", defaultRounds, "interleaved rounds (direct, webgw, direct, webgw, ...); the median is reported")
	fs.DurationVar(&cfg.Duration, "duration", defaultDuration, "measured time of each req/s run")
	fs.DurationVar(&cfg.Warmup, "warmup", defaultWarmup, "unmeasured time before each req/s run")
	fs.IntVar(&cfg.Conns, "conns", defaultConns, "concurrent keep-alive clients of the req/s runs")
	fs.IntVar(&cfg.IdleConns, "idle-conns", defaultIdleConns, "idle keep-alive connections held for the RSS measurement")
	fs.Var(&bulk, "bulk-size", "size of the bulk download (bytes, or with KiB, MiB, GiB)")
	fs.BoolVar(&cfg.H2, "h2", false, "load with HTTP/2 (h2 over TLS, h2c to the plain backend) instead of HTTP/1.1")
	fs.StringVar(&cfg.Webgw, "webgw", "", "use this webgw binary instead of building ./cmd/webgw")
	fs.StringVar(&cfg.PprofDir, "pprof", "", "build webgw with a pprof listener (harness-side overlay) and write gateway/agent CPU and heap profiles of the last round here")
	fs.StringVar(&parts, "parts", strings.Join(defaultParts, ","), "what to run, comma-separated: "+partMain+" (req/s, latency, CPU, bulk, idle RSS), "+partFailover+" (an agent killed under load), "+partUpstream+" (a direct upstream added under load), "+partLossy+" (direct and webgw across a lossy link between network namespaces; root), "+partForward+" (TCP bulk, connections/s and UDP through public ports forwarded over agent tunnels), "+partDNS+" (the gateway's DNS answers/s and latency against a minimal miekg/dns server; not in the default set), "+partRelay+" (req/s through a gateway that relays to the gateway holding the tunnel, against through that one; not in the default set), "+partCluster+" (three gateways on one etcd: how fast a new service reaches all, how fast a killed gateway leaves DNS; not in the default set), "+part4to6+" (an IPv4-only laptop through the 4to6 WireGuard endpoint against the plain veth path: throughput, round trips, CPU per GiB; root; not in the default set), "+partYgg+" (req/s and bulk through the gateway to a backend on its embedded Yggdrasil node against the same backend on loopback; not in the default set)")
	fs.StringVar(&cfg.WGClient, "wg-client", "", "the laptop's wireguard-go in the 4to6 part: a program path (Debian's is /usr/bin/wireguard-go); default: build the version webgw's engine uses")
	fs.StringVar(&transports, "transports", "", "agent transports to measure, comma-separated: tcp, quic (default: tcp, and quic when the agent can use it)")
	fs.StringVar(&cfg.Netem, "netem", defaultNetem, "the lossy link of the lossy part, in netem's words (loss P%, delay D), applied in each direction")
	fs.Var(&lossyBulk, "lossy-bulk-size", "size of the bulk download across the lossy link")
	fs.Var(&fwdBulk, "fwd-bulk-size", "bytes moved by each bulk run of the forward part (8 streams: an eighth each)")
	fs.IntVar(&cfg.FwdDialers, "fwd-dialers", defaultFwdDialers, "concurrent dialers of the forward part's connections/s run")
	fs.IntVar(&cfg.UDPRate, "udp-rate", defaultUDPRate, "datagrams per second offered by the forward part's UDP run")
	fs.IntVar(&cfg.UDPSize, "udp-size", defaultUDPSize, "bytes per datagram of the UDP run")
	fs.IntVar(&cfg.UDPFlows, "udp-flows", defaultUDPFlows, "client sockets of the UDP run (one gateway session each), sending in turn")
	fwdRedo := fs.Int("fwd-redo", defaultFwdRedo, "redo a forward or dns run up to this often while other processes take more than 5% of the CPUs during it (the quietest is kept); 0: never")
	fs.IntVar(&cfg.DNSClients, "dns-clients", defaultDNSClients, "DNS queries in flight in the dns part (Go client: one UDP socket each; dnsperf -c and -q)")
	fs.IntVar(&cfg.ScenarioConns, "scenario-conns", defaultScenarioConns, "workers of the steady load in the failover and upstream parts")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON instead of a table")
	fs.StringVar(&save, "save", "", "also write the JSON report to this file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q (flags only; see -h)\n", fs.Arg(0))
		return 2
	}
	cfg.BulkSize = int64(bulk)
	cfg.LossyBulkSize = int64(lossyBulk)
	cfg.FwdBulkSize = int64(fwdBulk)
	cfg.FwdRedo = *fwdRedo
	if cfg.FwdRedo == 0 {
		cfg.FwdRedo = -1 // the flag's 0 is never; Config's 0 is the default
	}
	cfg.Parts = splitList(parts)
	if transports != "" {
		cfg.Transports = splitList(transports)
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	cfg.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	js = append(js, '\n')
	if save != "" {
		if err := os.WriteFile(save, js, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -save:", err)
			return 1
		}
	}
	if asJSON {
		os.Stdout.Write(js)
		return 0
	}
	rep.WriteTable(os.Stdout)
	return 0
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	out := []string{}
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// sizeFlag is a byte count written as 268435456, 256MiB, 4MiB, 1GiB or 64KiB.
type sizeFlag int64

func (s *sizeFlag) String() string { return formatSize(int64(*s)) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

func parseSize(v string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSpace(v)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size; use bytes or a number with KiB, MiB or GiB (e.g. 256MiB)", v)
	}
	return n * mult, nil
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.FormatInt(n, 10)
}

// logf writes one progress line.
func (h *harness) logf(format string, args ...any) {
	if h.cfg.Progress != nil {
		fmt.Fprintf(h.cfg.Progress, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}
