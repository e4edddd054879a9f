package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
)

func portCmd() *cobra.Command {
	c := &cobra.Command{Use: "port", Short: "Manage public TCP and UDP ports (of tcp, udp and tls services)"}
	c.AddCommand(portAddCmd(), portListCmd(), portRemoveCmd())
	return c
}

// protoArg checks a PROTO argument.
func protoArg(s string) (model.PortProto, error) {
	p := model.PortProto(s)
	if !p.Valid() {
		return "", usagef("PROTO: %q not accepted; use tcp or udp", s)
	}
	return p, nil
}

func portAddCmd() *cobra.Command {
	var (
		cf      clientFlags
		service string
		tenant  string
		number  int
		sni     bool
	)
	c := &cobra.Command{
		Use:   "add tcp|udp (--service NAME | --sni) [--port N]",
		Short: "Allocate a public port and print its HOST:PORT",
		Long: `Allocate a public port of the gateway's --port-range and open it.

With --service the port forwards to that service: a udp port to a udp
service, a tcp port to a tcp or tls (passthrough) service. With --sni (tcp
only) the port is shared by all of the tenant's tls services: each connection
goes to the service its TLS ClientHello names (NAME.<domain>).

--port asks for one port; without it any free one is taken. With the admin
token, --tenant names the owner.`,
		Example: `  webgw port add tcp --service db --port 20005
  webgw port add udp --service resolver
  webgw port add tcp --sni --port 20443 --tenant acme`,
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			proto, err := protoArg(args[0])
			if err != nil {
				return err
			}
			switch {
			case sni && proto != model.PortTCP:
				return usagef("--sni: only a tcp port can be an SNI port, not %s", proto)
			case sni && service != "":
				return usagef("--sni and --service: an SNI port serves all of the tenant's tls services; give one of them")
			case !sni && service == "":
				return usagef("--service: name the service the port forwards to, or give --sni (tcp only)")
			case !sni:
				if err := model.ValidateName(service); err != nil {
					return usagef("--service: %v", err)
				}
			}
			if number < 0 || number > model.MaxPort {
				return usagef("--port: %d not accepted; use a port of the gateway's --port-range, or 0 for any", number)
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			req := api.PortRequest{Proto: proto, Port: number, Service: service, SNI: sni, Tenant: tenant}
			var out api.PortDetail
			if err := cl.Do(c.Context(), "POST", "/v1/ports", req, &out); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			fmt.Fprintln(c.OutOrStdout(), out.Address)
			return nil
		},
	}
	cf.add(c, true)
	fs := c.Flags()
	fs.StringVar(&service, "service", "", "service the port forwards to")
	fs.BoolVar(&sni, "sni", false, "a tcp port shared by the tenant's tls services, routed by TLS server name")
	fs.IntVar(&number, "port", 0, "port number wanted, in the gateway's --port-range (0: any free one)")
	fs.StringVar(&tenant, "tenant", "", "tenant that owns the port (needed with the admin token)")
	return c
}

func portListCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List public ports (all with the admin token, a tenant's own with its token)",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out []api.PortDetail
			if err := cl.Do(c.Context(), "GET", "/v1/ports", nil, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PORT\tSERVICE\tTENANT\tADDRESS")
			for _, p := range out {
				svc := p.Service
				if p.SNI {
					svc = "(sni: tls services)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Port, orDash(svc), orDash(p.Tenant), p.Address)
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	return c
}

// parsePortArgs reads a port given as "tcp/20000" or as "tcp 20000".
func parsePortArgs(args []string) (model.PortProto, int, error) {
	var protoS, numS string
	switch len(args) {
	case 1:
		var ok bool
		if protoS, numS, ok = strings.Cut(args[0], "/"); !ok {
			return "", 0, usagef("PORT: %q; use PROTO/NUMBER such as tcp/20000, or PROTO NUMBER", args[0])
		}
	case 2:
		protoS, numS = args[0], args[1]
	default:
		return "", 0, usagef("PORT: give PROTO/NUMBER such as tcp/20000, or PROTO NUMBER")
	}
	proto, err := protoArg(protoS)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(numS)
	if err != nil || model.ValidatePort(n) != nil {
		return "", 0, usagef("NUMBER: %q not accepted; use 1-%d", numS, model.MaxPort)
	}
	return proto, n, nil
}

func portRemoveCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:     "remove PROTO/NUMBER | PROTO NUMBER",
		Short:   "Release a public port; its listener closes and its connections end",
		Example: "  webgw port remove tcp/20005\n  webgw port remove udp 20007",
		Args:    argsUsage(cobra.RangeArgs(1, 2)),
		RunE: func(c *cobra.Command, args []string) error {
			proto, n, err := parsePortArgs(args)
			if err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", fmt.Sprintf("/v1/ports/%s/%d", proto, n), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "port %s/%d removed\n", proto, n)
			return nil
		},
	}
	cf.add(c, false)
	return c
}
