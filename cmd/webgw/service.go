package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
)

// serviceFlags are the routing flags of `service add` and `service set`.
type serviceFlags struct {
	protocol                          string
	upstreams, addUps, removeUps      []string
	lb                                string
	healthType, healthPath            string
	healthStatus                      int
	healthInterval, healthTimeout     time.Duration
	healthyThreshold, unhealthyThresh int
	maxFailures                       int
	cooldown                          time.Duration
	ignore5xx                         bool
	proxyProtocol                     int
	ygg                               bool
	port                              int // add only
}

const upstreamHelp = "direct upstream URL[,weight=N][,insecure][,server-name=HOST], e.g. http://[2001:db8::10]:8080,weight=2 (repeatable)"

// add registers the flags. For `service set` (set true) they have no
// defaults: only the flags given change anything.
func (f *serviceFlags) add(c *cobra.Command, set bool) {
	fs := c.Flags()
	def := func(s string) string {
		if set {
			return ""
		}
		return s
	}
	defInt := func(n int) int {
		if set {
			return 0
		}
		return n
	}
	defDur := func(d time.Duration) time.Duration {
		if set {
			return 0
		}
		return d
	}
	fs.StringVar(&f.protocol, "protocol", def("http"), "how the service is served: http, h2c (cleartext HTTP/2 to the backend), tls (passthrough), tcp or udp (a public port of its own)")
	if set {
		fs.StringArrayVar(&f.upstreams, "upstream", nil, "replace the whole upstream list: "+upstreamHelp)
		fs.StringArrayVar(&f.addUps, "add-upstream", nil, "add an upstream, or change the options of one listed: URL[,weight=N][,insecure][,server-name=HOST] (repeatable)")
		fs.StringArrayVar(&f.removeUps, "remove-upstream", nil, "remove the upstream with this URL (repeatable)")
	} else {
		fs.StringArrayVar(&f.upstreams, "upstream", nil, upstreamHelp)
	}
	fs.StringVar(&f.lb, "lb", def("round_robin"), "load-balancing policy: round_robin, least_request or ip_hash")
	fs.StringVar(&f.healthType, "health-type", def("http"), "active health check: http (GET --health-path), tcp (connect) or none")
	fs.StringVar(&f.healthPath, "health-path", def("/"), "path of http health checks")
	fs.IntVar(&f.healthStatus, "health-status", 0, "status http health checks expect (0: any of 200-399)")
	fs.DurationVar(&f.healthInterval, "health-interval", defDur(model.DefaultHealthInterval), "time between health checks of one upstream (100ms-1h)")
	fs.DurationVar(&f.healthTimeout, "health-timeout", defDur(model.DefaultHealthTimeout), "timeout of one health check (10ms-1m)")
	fs.IntVar(&f.healthyThreshold, "healthy-threshold", defInt(model.DefaultHealthyThreshold), "passing checks that bring an upstream back (1-100)")
	fs.IntVar(&f.unhealthyThresh, "unhealthy-threshold", defInt(model.DefaultUnhealthyThreshold), "failing checks that take an upstream out (1-100)")
	fs.IntVar(&f.maxFailures, "max-failures", defInt(model.DefaultMaxFailures), "consecutive failed requests that eject an upstream (1-1000; -1: no passive ejection)")
	fs.DurationVar(&f.cooldown, "cooldown", defDur(model.DefaultCooldown), "how long an ejected upstream gets no traffic (100ms-1h)")
	fs.BoolVar(&f.ignore5xx, "ignore-5xx", false, "count only connect errors as failures, not 5xx answers")
	fs.IntVar(&f.proxyProtocol, "proxy-protocol", 0, "send a PROXY protocol header of this version (1 or 2) to the backend before each connection's bytes; 0: none (not for udp)")
	fs.BoolVar(&f.ygg, "ygg", false, "publish the service on the gateway's Yggdrasil overlay address too (https on 443 and redirects on 80; a tcp or udp service on its public port number), when it runs a node; --ygg=false stops")
	if !set {
		fs.IntVar(&f.port, "port", 0, "public port a tcp or udp service asks for, in the gateway's --port-range (0: any free one)")
	}
}

// routingFlags are the flags serviceFlags.apply reads.
var routingFlags = []string{"protocol", "upstream", "add-upstream", "remove-upstream", "lb",
	"health-type", "health-path", "health-status", "health-interval", "health-timeout", "healthy-threshold", "unhealthy-threshold",
	"max-failures", "cooldown", "ignore-5xx", "proxy-protocol", "ygg"}

var healthFlags = []string{"health-type", "health-path", "health-status", "health-interval", "health-timeout", "healthy-threshold", "unhealthy-threshold"}

func anyChanged(fs *pflag.FlagSet, names ...string) bool {
	for _, n := range names {
		if fs.Changed(n) {
			return true
		}
	}
	return false
}

// check validates the flag values that do not depend on the stored
// service, before any API call.
func (f *serviceFlags) check(fs *pflag.FlagSet) error {
	if fs.Changed("protocol") && !model.Protocol(f.protocol).Valid() {
		return usagef("--protocol: %q not accepted; use http, h2c, tls, tcp or udp", f.protocol)
	}
	if fs.Changed("proxy-protocol") && (f.proxyProtocol < 0 || f.proxyProtocol > 2) {
		return usagef("--proxy-protocol: %d not accepted; use 1 or 2 (0: none)", f.proxyProtocol)
	}
	if fs.Changed("port") {
		if p := model.Protocol(f.protocol); !p.Forwarded() {
			return usagef("--port: only tcp and udp services have a public port; give --protocol tcp or udp (not %s)", p)
		}
		if f.port < 0 || f.port > model.MaxPort {
			return usagef("--port: %d not accepted; use a port of the gateway's --port-range, or 0 for any", f.port)
		}
	}
	if fs.Changed("lb") && (f.lb == "" || !model.LBPolicy(f.lb).Valid()) {
		return usagef("--lb: %q not accepted; use round_robin, least_request or ip_hash", f.lb)
	}
	if fs.Changed("health-type") {
		switch f.healthType {
		case "http", "tcp":
		case "none":
			for _, n := range healthFlags[1:] {
				if fs.Changed(n) {
					return usagef("--health-type none turns active health checks off; do not combine it with --%s", n)
				}
			}
		default:
			return usagef("--health-type: %q not accepted; use http, tcp or none", f.healthType)
		}
	}
	if fs.Changed("upstream") && anyChanged(fs, "add-upstream", "remove-upstream") {
		return usagef("--upstream replaces the whole upstream list; do not combine it with --add-upstream or --remove-upstream")
	}
	for flag, vals := range map[string][]string{"upstream": f.upstreams, "add-upstream": f.addUps} {
		for _, v := range vals {
			if _, err := parseUpstreamFlag(v); err != nil {
				return usagef("--%s: %v", flag, err)
			}
		}
	}
	return nil
}

// parseUpstreamFlag parses URL[,weight=N][,insecure][,server-name=HOST].
// The URL itself is checked later, against the service's protocol.
func parseUpstreamFlag(v string) (model.Upstream, error) {
	parts := strings.Split(v, ",")
	u := model.Upstream{URL: strings.TrimSpace(parts[0])}
	if u.URL == "" {
		return u, fmt.Errorf("%q: no URL; use URL[,weight=N][,insecure][,server-name=HOST]", v)
	}
	for _, p := range parts[1:] {
		key, val, hasVal := strings.Cut(strings.TrimSpace(p), "=")
		switch {
		case key == "weight" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > model.MaxWeight {
				return u, fmt.Errorf("weight %q in %q; use 1-%d", val, v, model.MaxWeight)
			}
			u.Weight = n
		case key == "insecure" && !hasVal:
			u.TLSInsecure = true
		case key == "server-name" && hasVal && val != "":
			u.TLSServerName = val
		default:
			return u, fmt.Errorf("option %q in %q not accepted; use weight=N, insecure or server-name=HOST", p, v)
		}
	}
	return u, nil
}

// sameUpstream reports whether two upstream URLs name the same place.
func sameUpstream(a, b string, proto model.Protocol) bool {
	if a == b {
		return true
	}
	pa, err1 := model.ParseUpstreamURL(a, proto)
	pb, err2 := model.ParseUpstreamURL(b, proto)
	return err1 == nil && err2 == nil && pa.Scheme == pb.Scheme && pa.HostPort() == pb.HostPort()
}

// apply changes req by the flags given (and only those), then checks the
// result as the API will, naming the flag of any bad setting.
func (f *serviceFlags) apply(fs *pflag.FlagSet, req *api.ServiceRequest) error {
	if fs.Changed("protocol") {
		req.Protocol = model.Protocol(f.protocol)
	}
	if fs.Changed("proxy-protocol") {
		req.ProxyProtocol = f.proxyProtocol
	}
	if fs.Changed("ygg") {
		req.Ygg = f.ygg
	}
	if fs.Changed("port") {
		req.Port = f.port
	}
	proto := req.Protocol
	upFlag := "--upstream"
	if fs.Changed("upstream") {
		req.Upstreams = nil
		for _, v := range f.upstreams {
			u, _ := parseUpstreamFlag(v) // checked by check
			req.Upstreams = append(req.Upstreams, u)
		}
	}
	if len(f.removeUps) > 0 {
		upFlag = "--remove-upstream"
		for _, rm := range f.removeUps {
			kept := req.Upstreams[:0:0]
			for _, u := range req.Upstreams {
				if !sameUpstream(u.URL, strings.TrimSpace(rm), proto) {
					kept = append(kept, u)
				}
			}
			if len(kept) == len(req.Upstreams) {
				var have []string
				for _, u := range req.Upstreams {
					have = append(have, u.URL)
				}
				if len(have) == 0 {
					return usagef("--remove-upstream: %q is not an upstream of %s (it has none)", rm, req.Name)
				}
				return usagef("--remove-upstream: %q is not an upstream of %s (its upstreams: %s)", rm, req.Name, strings.Join(have, ", "))
			}
			req.Upstreams = kept
		}
	}
	if len(f.addUps) > 0 {
		upFlag = "--add-upstream"
		for _, v := range f.addUps {
			nu, _ := parseUpstreamFlag(v) // checked by check
			replaced := false
			for i, u := range req.Upstreams {
				if sameUpstream(u.URL, nu.URL, proto) {
					req.Upstreams[i], replaced = nu, true
				}
			}
			if !replaced {
				req.Upstreams = append(req.Upstreams, nu)
			}
		}
	}
	if fs.Changed("lb") {
		req.LB = model.LBPolicy(f.lb)
	}
	if anyChanged(fs, healthFlags...) {
		if fs.Changed("health-type") && f.healthType == "none" {
			req.Health = nil
		} else {
			h := model.HealthCheck{}
			if req.Health != nil {
				h = *req.Health
			}
			if fs.Changed("health-type") {
				h.Type = f.healthType
				if h.Type == "tcp" {
					// A tcp check has no path or status: drop the old http ones.
					h.Path, h.Status = "", 0
				}
			}
			if fs.Changed("health-path") {
				h.Path = f.healthPath
			}
			if fs.Changed("health-status") {
				h.Status = f.healthStatus
			}
			if fs.Changed("health-interval") {
				h.Interval = model.Duration(f.healthInterval)
			}
			if fs.Changed("health-timeout") {
				h.Timeout = model.Duration(f.healthTimeout)
			}
			if fs.Changed("healthy-threshold") {
				h.HealthyThreshold = f.healthyThreshold
			}
			if fs.Changed("unhealthy-threshold") {
				h.UnhealthyThreshold = f.unhealthyThresh
			}
			req.Health = &h
		}
	}
	if anyChanged(fs, "max-failures", "cooldown", "ignore-5xx") {
		p := model.PassiveHealth{}
		if req.Passive != nil {
			p = *req.Passive
		}
		if fs.Changed("max-failures") {
			p.MaxFailures = f.maxFailures
		}
		if fs.Changed("cooldown") {
			p.Cooldown = model.Duration(f.cooldown)
		}
		if fs.Changed("ignore-5xx") {
			p.Ignore5xx = f.ignore5xx
		}
		req.Passive = &p
	}
	sv := model.Service{Name: req.Name, Protocol: req.Protocol, Upstreams: req.Upstreams, LB: req.LB, Health: req.Health, Passive: req.Passive,
		ProxyProtocol: req.ProxyProtocol}
	if err := sv.ValidateRouting(); err != nil {
		return flagError(err, upFlag)
	}
	return nil
}

// fieldFlags maps the fields in model.Service.ValidateRouting's errors to flags.
var fieldFlags = []struct{ field, flag string }{
	{"health.path and health.status", "--health-path and --health-status"},
	{"health.type", "--health-type"},
	{"health.path", "--health-path"},
	{"health.status", "--health-status"},
	{"health.interval", "--health-interval"},
	{"health.timeout", "--health-timeout"},
	{"health.healthy_threshold", "--healthy-threshold"},
	{"health.unhealthy_threshold", "--unhealthy-threshold"},
	{"passive.max_failures", "--max-failures"},
	{"passive.cooldown", "--cooldown"},
	{"lb", "--lb"},
	{"proxy_protocol", "--proxy-protocol"},
}

// flagError turns a routing validation error into a usage error naming the
// flag instead of the field; upFlag is the flag that set the upstreams.
func flagError(err error, upFlag string) error {
	msg := err.Error()
	if strings.HasPrefix(msg, "upstreams") {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			return usagef("%s: %s", upFlag, rest)
		}
	}
	for _, ff := range fieldFlags {
		if rest, ok := strings.CutPrefix(msg, ff.field); ok && (strings.HasPrefix(rest, ":") || strings.HasPrefix(rest, " ")) {
			msg = ff.flag + rest
			if ff.flag == "--health-path and --health-status" {
				msg = "--health-path and --health-status apply to --health-type http only"
			}
			return usagef("%s", msg)
		}
	}
	return usagef("%s", msg)
}

// nameArg checks a service name argument.
func nameArg(name string) error {
	if err := model.ValidateName(name); err != nil {
		return usagef("NAME: %v", err)
	}
	return nil
}

func serviceCmd() *cobra.Command {
	c := &cobra.Command{Use: "service", Short: "Manage services: names, direct upstreams, load balancing and health checks"}
	c.AddCommand(serviceAddCmd(), serviceSetCmd(), serviceShowCmd(), serviceRemoveCmd(), serviceListCmd())
	return c
}

const serviceLong = `A service is a name under the gateway domain, served by the agents that
register it with its tenant's token and by direct upstreams: URLs the gateway
dials itself, allowed by the operator's --upstream-allow networks.

--upstream takes URL[,weight=N][,insecure][,server-name=HOST]. The URL is
SCHEME://HOST[:PORT]: http:// or https:// for an http service (https: the
gateway speaks TLS to the upstream; insecure skips verifying its certificate,
server-name sets the name verified and sent as SNI), h2c:// for an h2c
service, tls:// for a tls (passthrough) service, tcp:// or udp:// for a tcp
or udp service. IPv6 addresses go in brackets: http://[2001:db8::10]:8080.

A tcp or udp service gets a public port of its own when it is added (--port,
or any free one of the gateway's --port-range); its URL is that HOST:PORT.
More ports: webgw port add. Its protocol cannot change to or from tcp or udp
later: remove the service and add it again.`

func serviceAddCmd() *cobra.Command {
	var (
		cf     clientFlags
		sf     serviceFlags
		tenant string
	)
	c := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a service and print its public URL",
		Long:  serviceLong + "\n\nWith the admin token, --tenant names the owner; with a tenant token the service is the tenant's own.",
		Example: `  webgw service add shop --tenant acme --upstream http://[2001:db8::10]:8080 --upstream http://[2001:db8::11]:8080,weight=2 --lb least_request --health-path /healthz
  webgw service add api --protocol h2c --upstream h2c://10.0.0.5:50051 --token "$TENANT_TOKEN"
  webgw service add db --protocol tcp --port 20005 --upstream tcp://[2001:db8::20]:5432 --proxy-protocol 2`,
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := nameArg(args[0]); err != nil {
				return err
			}
			fs := c.Flags()
			if err := sf.check(fs); err != nil {
				return err
			}
			req := api.ServiceRequest{Name: args[0], Tenant: tenant, Protocol: model.Protocol(sf.protocol)}
			if err := sf.apply(fs, &req); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out api.ServiceDetail
			if err := cl.Do(c.Context(), "POST", "/v1/services", req, &out); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			fmt.Fprintln(c.OutOrStdout(), orName(out.URL, out.Name))
			return nil
		},
	}
	cf.add(c, true)
	sf.add(c, false)
	c.Flags().StringVar(&tenant, "tenant", "", "tenant that owns the service (needed with the admin token)")
	return c
}

// setAttempts bounds the read-modify-write rounds of `service set` when the
// service keeps changing under it.
const setAttempts = 5

func serviceSetCmd() *cobra.Command {
	var (
		cf clientFlags
		sf serviceFlags
	)
	c := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a service's settings: only the flags given change",
		Long: serviceLong + `

Only the flags given change. --upstream replaces the whole list;
--add-upstream and --remove-upstream change it. --health-type none turns
active health checks off.`,
		Example: `  webgw service set shop --add-upstream http://[2001:db8::12]:8080 --remove-upstream http://[2001:db8::10]:8080
  webgw service set shop --lb ip_hash --health-interval 2s --max-failures 3`,
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := nameArg(name); err != nil {
				return err
			}
			fs := c.Flags()
			if !anyChanged(fs, routingFlags...) {
				return usagef("service set: nothing to change; give at least one of --%s", strings.Join(routingFlags, ", --"))
			}
			if err := sf.check(fs); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			for attempt := 1; ; attempt++ {
				var cur api.ServiceDetail
				hdr, err := cl.DoHeader(c.Context(), "GET", "/v1/services/"+name, nil, nil, &cur)
				if err != nil {
					return err
				}
				if !cur.Stored {
					return fmt.Errorf("service %s is a quick tunnel, not a stored service: it has no settings to change", name)
				}
				if old, proto := cmp.Or(cur.Protocol, model.ProtoHTTP), model.Protocol(sf.protocol); fs.Changed("protocol") && old != proto && (old.Forwarded() || proto.Forwarded()) {
					return usagef("--protocol: a %s service cannot become %s, as its public port goes with its protocol; remove the service and add it again", old, proto)
				}
				req := api.RequestOf(cur.Service)
				if err := sf.apply(fs, &req); err != nil {
					return err
				}
				var out api.ServiceDetail
				_, err = cl.DoHeader(c.Context(), "PUT", "/v1/services/"+name, http.Header{"If-Match": {hdr.Get("ETag")}}, req, &out)
				var ae *api.APIError
				if errors.As(err, &ae) && ae.Status == http.StatusPreconditionFailed && attempt < setAttempts {
					continue // changed since we read it: read again
				}
				if err != nil {
					return err
				}
				if cf.json {
					return printJSON(c.OutOrStdout(), out)
				}
				fmt.Fprintf(c.ErrOrStderr(), "service %s updated\n", name)
				return nil
			}
		},
	}
	cf.add(c, true)
	sf.add(c, true)
	return c
}

func serviceShowCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a service's settings and live state",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := nameArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.ServiceDetail
			if err := cl.Do(c.Context(), "GET", "/v1/services/"+args[0], nil, &d); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), d)
			}
			return printService(c.OutOrStdout(), d)
		},
	}
	cf.add(c, true)
	return c
}

func printService(w io.Writer, d api.ServiceDetail) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	row("name", "%s", d.Name)
	row("url", "%s", orDash(d.URL))
	row("tenant", "%s", orDash(d.Tenant))
	row("protocol", "%s", d.Protocol)
	if d.ProxyProtocol != 0 {
		row("proxy protocol", "v%d", d.ProxyProtocol)
	}
	if d.Ygg {
		row("yggdrasil", "published on the gateway's overlay address")
	}
	if d.Protocol.Forwarded() || len(d.Ports) > 0 {
		if len(d.Ports) == 0 {
			row("ports", "none (webgw port add)")
		}
		for i, p := range d.Ports {
			k := ""
			if i == 0 {
				k = "ports"
			}
			row(k, "%s  %s", p.Port, p.Address)
		}
	}
	if !d.Stored {
		row("stored", "no (a quick tunnel)")
	} else {
		row("created", "%s", d.Created.Format(time.RFC3339))
	}
	lb := string(d.LB)
	if lb == "" {
		lb = string(model.LBRoundRobin)
	}
	row("lb", "%s", lb)
	if h := d.Health; h == nil {
		row("health", "none (passive ejection only)")
	} else {
		typ := h.Type
		if typ == "" {
			typ = "http"
		}
		desc := typ
		if typ == "http" {
			path := h.Path
			if path == "" {
				path = "/"
			}
			status := "200-399"
			if h.Status != 0 {
				status = strconv.Itoa(h.Status)
			}
			desc = fmt.Sprintf("http GET %s expecting %s", path, status)
		}
		row("health", "%s every %s, timeout %s, healthy after %d, unhealthy after %d", desc,
			orDefault(h.Interval.Std(), model.DefaultHealthInterval), orDefault(h.Timeout.Std(), model.DefaultHealthTimeout),
			orDefaultInt(h.HealthyThreshold, model.DefaultHealthyThreshold), orDefaultInt(h.UnhealthyThreshold, model.DefaultUnhealthyThreshold))
	}
	p := model.PassiveHealth{}
	if d.Passive != nil {
		p = *d.Passive
	}
	if p.MaxFailures == -1 {
		row("passive", "off")
	} else {
		what := "connect errors and 5xx"
		if p.Ignore5xx {
			what = "connect errors"
		}
		row("passive", "eject after %d %s, for %s", orDefaultInt(p.MaxFailures, model.DefaultMaxFailures), what, orDefault(p.Cooldown.Std(), model.DefaultCooldown))
	}
	row("agents", "%d (streams %d, requests %d, in %s, out %s)", d.Agents, d.Streams, d.Requests, human(d.BytesIn), human(d.BytesOut))
	if len(d.Upstreams) == 0 {
		row("upstreams", "none (served by agents only)")
	} else {
		row("upstreams", "%d", len(d.Upstreams))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.UpstreamHealth) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  LIVE UPSTREAM\tKIND\tWEIGHT\tSTATE\tIN FLIGHT")
		for _, u := range d.UpstreamHealth {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\n", u.Upstream, u.Kind, u.Weight, u.State, u.Outstanding)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(d.Upstreams) == 0 {
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  URL\tWEIGHT\tTLS")
	for _, u := range d.Upstreams {
		var tls []string
		if u.TLSInsecure {
			tls = append(tls, "insecure")
		}
		if u.TLSServerName != "" {
			tls = append(tls, "server-name="+u.TLSServerName)
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", u.URL, orDefaultInt(u.Weight, 1), orDash(strings.Join(tls, ",")))
	}
	return tw.Flush()
}

func serviceRemoveCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a stored service (agents connected for it keep their tunnel)",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := nameArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/v1/services/"+args[0], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "service %s removed\n", args[0])
			return nil
		},
	}
	cf.add(c, false)
	return c
}

func serviceListCmd() *cobra.Command {
	var f clientFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List services (all with the admin token, a tenant's own with its token)",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := f.client(c)
			if err != nil {
				return err
			}
			var out []api.ServiceInfo
			if err := cl.Do(c.Context(), "GET", "/v1/services", nil, &out); err != nil {
				return apiErr(err)
			}
			if f.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTENANT\tPROTOCOL\tUPSTREAMS\tAGENTS\tSTREAMS\tREQUESTS\tBYTES IN\tBYTES OUT")
			for _, s := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Name, orDash(s.Tenant), s.Protocol, s.Upstreams, s.Agents, s.Streams, s.Requests, human(s.BytesIn), human(s.BytesOut))
			}
			return tw.Flush()
		},
	}
	f.add(c, true)
	return c
}

func orName(url, name string) string {
	if url != "" {
		return url
	}
	return name
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func orDefaultInt(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}
