package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/api"
)

// yggCmd is `webgw ygg`: the gateway's embedded Yggdrasil node.
func yggCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ygg",
		Short: "The gateway's embedded Yggdrasil node (planetary network access point)",
		Long: `The gateway's embedded Yggdrasil node, run with --ygg-listen, --ygg-peer or --ygg-tun:
an access point of the planetary network, the way to direct upstreams in 200::/7, and
the address services published with 'webgw service add|set --ygg' are served on.`,
	}
	c.AddCommand(yggStatusCmd())
	return c
}

// yggStatusCmd is `webgw ygg status`.
func yggStatusCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the node's address, subnet, public key and peers (admin token)",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var st api.YggStatus
			if err := cl.Do(c.Context(), "GET", "/v1/ygg", nil, &st); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), st)
			}
			w := c.OutOrStdout()
			fmt.Fprintf(w, "address     %s\nsubnet      %s\npublic key  %s\n\n", st.Addr, st.Subnet, st.PublicKey)
			if len(st.Peers) == 0 {
				fmt.Fprintln(w, "no peers")
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "URI\tDIRECTION\tUP\tKEY\tRX\tTX\tUPTIME")
			for _, p := range st.Peers {
				dir := "out"
				if p.Inbound {
					dir = "in"
				}
				up := "no"
				if p.Up {
					up = "yes"
				}
				if p.LastError != "" && !p.Up {
					up = "no (" + p.LastError + ")"
				}
				uptime := "-"
				if p.Up {
					uptime = (time.Duration(p.Uptime * float64(time.Second))).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.URI, dir, up, shortKey(p.PublicKey), human(int64(p.RxBytes)), human(int64(p.TxBytes)), uptime)
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	return c
}

// shortKey is the first 16 hex characters of a key, "-" for none.
func shortKey(k string) string {
	if len(k) > 16 {
		return k[:16] + "…"
	}
	return orDash(k)
}
