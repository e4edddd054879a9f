package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/api"
)

// gatewayListCmd is `webgw gateway list`: the cluster's live gateways.
func gatewayListCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List the live gateways of the cluster (admin token)",
		Long: "List the live gateways of the cluster: each registers under a store lease it renews, and\n" +
			"leaves the list when it stops or its lease expires (--cluster-ttl, 10 s by default).",
		Args: argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out []api.MemberInfo
			if err := cl.Do(c.Context(), "GET", "/v1/gateways", nil, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESSES\tTUNNEL\tREGION\tVERSION\tUP")
			for _, m := range out {
				id := m.ID
				if m.Self {
					id += " (this)"
				}
				up := "-"
				if !m.Started.IsZero() {
					up = time.Since(m.Started).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", id, orDash(strings.Join(m.Addrs, ",")), orDash(m.Tunnel),
					orDash(m.Region), orDash(m.Version), up)
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	return c
}
