package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/agent"
	"github.com/webgw/webgw/internal/gateway"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

func exposeCmd() *cobra.Command {
	var (
		gateways                                                   []string
		ca, token, name, fingerprint, dataDir, logLevel, transport string
		connections, weight, port, maxGateways                     int
		proxyProtocol, acmeHTTP                                    string
		drain                                                      time.Duration
	)
	c := &cobra.Command{
		Use:   "expose [flags] TARGET",
		Short: "Expose one local target through a gateway and print its public URL",
		Long: `Expose one local target and keep running. TARGET is http://HOST:PORT,
https://HOST:PORT (TLS passthrough: the backend keeps its own certificate),
h2c://HOST:PORT (cleartext HTTP/2, e.g. gRPC), tcp://HOST:PORT (a public TCP
port forwarded to the target) or udp://HOST:PORT (a public UDP port). The
public address is printed as one line on stdout once traffic can flow: a URL,
or HOST:PORT for tcp:// and udp://; logs go to stderr.

--port asks for a public port for tcp:// and udp:// targets; without it the
gateway picks a free one (or keeps the one the service already holds).

Without --ca or --fingerprint the agent trusts <data-dir>/ca.pem when it exists
(a local zero-config gateway), else the system roots.

--gateway may be repeated: the agent serves through every gateway given, over
--connections tunnel connections to each (the gateway spreads requests over
all of them; one that drops is replaced while the others serve).

A gateway that is part of a cluster tells the agent the cluster's live
gateways: the agent connects to each of them too, with the same --ca,
--fingerprint and --token, up to --max-gateways in all (the ones given count
first; 0, the default, means all), and follows gateways joining and leaving.`,
		Example: "  webgw expose --gateway 127.0.0.1:8443 --ca webgw-data/ca.pem http://127.0.0.1:3000\n" +
			"  webgw expose --gateway gw1.example.org:443 --gateway gw2.example.org:443 --token wgw_... --name shop http://127.0.0.1:3000\n" +
			"  webgw expose --token wgw_... --name ssh --port 2222 tcp://127.0.0.1:22\n" +
			"  webgw expose --token wgw_... --name dns udp://127.0.0.1:53",
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			for flag, env := range map[string]string{"gateway": "WEBGW_GATEWAY", "ca": "WEBGW_CA", "token": "WEBGW_TOKEN", "data-dir": "WEBGW_DATA_DIR", "fingerprint": "WEBGW_FINGERPRINT"} {
				if err := envDefault(c, flag, env); err != nil {
					return err
				}
			}
			proto, _, err := agent.ParseTarget(args[0])
			if err != nil {
				return usagef("TARGET: %v", err)
			}
			if c.Flags().Changed("port") {
				if !proto.Forwarded() {
					return usagef("--port: only for tcp:// and udp:// targets, not %s (the public port wanted, 1-65535)", args[0])
				}
				if port < 1 || port > 65535 {
					return usagef("--port: %d not accepted; use 1-65535 (leave it out to let the gateway pick)", port)
				}
			}
			pp := 0
			switch proxyProtocol {
			case "", "0", "none":
			case "1", "v1":
				pp = 1
			case "2", "v2":
				pp = 2
			default:
				return usagef("--proxy-protocol: %q not accepted; use 1 or 2 (v1, v2), or none", proxyProtocol)
			}
			if acmeHTTP != "" {
				if p, _, err := agent.ParseTarget(acmeHTTP); proto != model.ProtoTLS || err != nil || p != model.ProtoHTTP {
					return usagef("--acme-http: %q; want http://HOST:PORT, for an https:// TARGET only", acmeHTTP)
				}
			}
			if pp != 0 && proto == model.ProtoUDP {
				return usagef("--proxy-protocol: not available for udp:// targets")
			}
			if connections < 1 || connections > agent.MaxConnections {
				return usagef("--connections: %d not accepted; use 1-%d", connections, agent.MaxConnections)
			}
			if err := checkMaxGateways(maxGateways); err != nil {
				return err
			}
			if weight < 1 || weight > agent.MaxWeight {
				return usagef("--weight: %d not accepted; use 1-%d", weight, agent.MaxWeight)
			}
			if err := agent.ValidateTransport(transport); err != nil {
				return usagef("--transport: %v", err)
			}
			if len(gateways) == 0 {
				return usagef("--gateway: at least one HOST:PORT is needed")
			}
			for _, gw := range gateways {
				if _, err := agent.ResolveGatewayAddr(gw); err != nil {
					return usagef("--gateway: %v", err)
				}
			}
			if ca == "" && fingerprint == "" {
				if p := filepath.Join(dataDir, "ca.pem"); fileExists(p) {
					ca = p
				}
			}
			cfg := &agent.Config{
				Token:        token,
				Services:     []agent.ServiceConfig{{Name: name, Target: args[0], Weight: weight, Port: port, ProxyProtocol: pp, ACMEHTTP: acmeHTTP}},
				DrainTimeout: drain,
				Connections:  connections,
				Transport:    transport,
				MaxGateways:  maxGateways,
			}
			for _, gw := range gateways {
				cfg.Gateways = append(cfg.Gateways, agent.GatewayConfig{Addr: gw, CA: ca, Fingerprint: fingerprint})
			}
			var once sync.Once
			return runAgent(c, cfg, logLevel, func(_ string, grants []tunnel.ServiceGrant) {
				if len(grants) == 0 {
					return
				}
				once.Do(func() { fmt.Fprintln(c.OutOrStdout(), grants[0].URL) })
			})
		},
	}
	f := c.Flags()
	f.StringSliceVar(&gateways, "gateway", []string{"127.0.0.1:8443"}, "gateway HTTPS address HOST:PORT, or on the Yggdrasil overlay ygg://[200:...]:PORT or ygg://PUBLICKEY[:PORT] (through the host's own Yggdrasil node); repeat (or separate with commas) to serve through several gateways [$WEBGW_GATEWAY]")
	f.StringVar(&ca, "ca", "", "CA certificate file to verify the gateway [$WEBGW_CA]")
	f.StringVar(&fingerprint, "fingerprint", "", "pin the gateway key instead of a CA: sha256:<hex> as the gateway prints [$WEBGW_FINGERPRINT]")
	f.StringVar(&token, "token", "", "tenant token (none: an anonymous quick tunnel, if the gateway allows it) [$WEBGW_TOKEN]")
	f.StringVar(&name, "name", "", "service name: NAME.<gateway domain> (none: a random name)")
	f.StringVar(&dataDir, "data-dir", "webgw-data", "local gateway data dir, where ca.pem is looked for [$WEBGW_DATA_DIR]")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.DurationVar(&drain, "drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, wait this long for in-flight streams")
	f.IntVar(&connections, "connections", 2, fmt.Sprintf("tunnel connections to each gateway, 1-%d", agent.MaxConnections))
	f.IntVar(&maxGateways, "max-gateways", 0, maxGatewaysUsage)
	f.IntVar(&weight, "weight", 1, fmt.Sprintf("this agent's share of the service's traffic against other agents serving it, 1-%d", agent.MaxWeight))
	f.StringVar(&transport, "transport", "auto", "how to reach the gateway: auto, tcp (TLS over TCP) or quic")
	f.IntVar(&port, "port", 0, "public port wanted for a tcp:// or udp:// TARGET, 1-65535 (none: the gateway picks one)")
	f.StringVar(&acmeHTTP, "acme-http", "", "for an https:// TARGET: http://HOST:PORT where the backend answers ACME HTTP-01 challenges forwarded from the gateway's HTTP port (default: TARGET's host, port 80)")
	f.StringVar(&proxyProtocol, "proxy-protocol", "", "send TARGET a PROXY protocol header (1 or 2) with the client's address first on each connection (not for udp://)")
	return c
}

// maxGatewaysUsage is the help of --max-gateways.
const maxGatewaysUsage = "hold connections to at most `N` gateways: those given first, then the other live gateways of their clusters (0: all)"

// checkMaxGateways checks the value of --max-gateways.
func checkMaxGateways(n int) error {
	if n < 0 {
		return usagef("--max-gateways: %d not accepted; use 1 or more (0 means all the cluster's gateways)", n)
	}
	return nil
}

func agentCmd() *cobra.Command {
	var (
		configFile, logLevel string
		maxGateways          int
	)
	c := &cobra.Command{
		Use:   "agent --config FILE",
		Short: "Serve several services through several gateways, from a YAML file",
		Long: `Serve the services listed in a YAML file through every gateway listed there:

  token: wgw_...                 # tenant token (default for every gateway)
  ca: webgw-data/ca.pem          # CA file (default for every gateway)
  gateways:
    - addr: 127.0.0.1:8443
      # ca, fingerprint, token, server_name may be set per gateway
  services:
    - name: shop
      target: http://127.0.0.1:3000
    - name: grpc
      target: h2c://127.0.0.1:50051
      weight: 2                  # share against other agents serving grpc (1-1000)
    - name: ssh
      target: tcp://127.0.0.1:22 # a public TCP port forwarded to the target
      port: 2222                 # public port wanted (tcp and udp only; none: the gateway picks)
    - name: resolver
      target: udp://127.0.0.1:53 # a public UDP port
  drain_timeout: 30s
  connections: 2                 # tunnel connections to each gateway (1-16)
  max_gateways: 0                # gateways held at most, counting the cluster
                                 # members learned from the ones listed (0: all)
  transport: auto                # auto, tcp or quic
  udp_idle_timeout: 60s          # end a UDP client session idle this long

A gateway that is part of a cluster tells the agent the cluster's live
gateways: the agent connects to each of them too, with the settings of the
gateway entry that listed them (token, ca or fingerprint, server_name), up to
max_gateways in all (--max-gateways wins over the file), and follows gateways
joining and leaving.

Each service's public address is printed on stdout as "NAME URL" once it is
served (for tcp and udp services, "NAME HOST:PORT").`,
		Args: argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if err := envDefault(c, "config", "WEBGW_AGENT_CONFIG"); err != nil {
				return err
			}
			if configFile == "" {
				return usagef("agent: --config FILE is required")
			}
			if err := checkMaxGateways(maxGateways); err != nil {
				return err
			}
			cfg, err := agent.LoadConfig(configFile)
			if err != nil {
				return &usageError{err: err}
			}
			if c.Flags().Changed("max-gateways") {
				cfg.MaxGateways = maxGateways
			}
			var mu sync.Mutex
			printed := map[string]bool{}
			return runAgent(c, cfg, logLevel, func(_ string, grants []tunnel.ServiceGrant) {
				mu.Lock()
				defer mu.Unlock()
				for _, g := range grants {
					if !printed[g.Name] {
						printed[g.Name] = true
						fmt.Fprintf(c.OutOrStdout(), "%s %s\n", g.Name, g.URL)
					}
				}
			})
		},
	}
	c.Flags().StringVar(&configFile, "config", "", "agent YAML file [$WEBGW_AGENT_CONFIG]")
	c.Flags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	c.Flags().IntVar(&maxGateways, "max-gateways", 0, maxGatewaysUsage+"; overrides max_gateways of the file")
	return c
}

func runAgent(c *cobra.Command, cfg *agent.Config, logLevel string, onReady func(string, []tunnel.ServiceGrant)) error {
	if err := checkLogLevel(logLevel); err != nil {
		return err
	}
	log := newLogger(logLevel)
	a, err := agent.New(cfg, agent.Options{Log: log, Version: gateway.Version, OnReady: onReady})
	if err != nil {
		if agent.IsConfigError(err) {
			return &usageError{err: err}
		}
		return err
	}
	err = a.Run(c.Context())
	var pe *agent.PermanentError
	if errors.As(err, &pe) {
		return fmt.Errorf("gateway refused: %s", pe.Msg)
	}
	if err != nil {
		return err
	}
	log.Info("agent stopped")
	return nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
