package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/api"
)

// clientFlags are the flags every API client command shares.
type clientFlags struct {
	apiAddr, dataDir, token string
	json                    bool
}

func (f *clientFlags) add(c *cobra.Command, withJSON bool) {
	c.Flags().StringVar(&f.apiAddr, "api-addr", "127.0.0.1:8081", "gateway admin API address [$WEBGW_API_ADDR]")
	c.Flags().StringVar(&f.dataDir, "data-dir", "webgw-data", "gateway data dir holding admin.token [$WEBGW_DATA_DIR]")
	c.Flags().StringVar(&f.token, "token", "", "API token (default: the admin token in <data-dir>/admin.token) [$WEBGW_API_TOKEN]")
	if withJSON {
		c.Flags().BoolVar(&f.json, "json", false, "print the API's JSON answer")
	}
}

func (f *clientFlags) client(c *cobra.Command) (*api.Client, error) {
	for flag, env := range map[string]string{"api-addr": "WEBGW_API_ADDR", "data-dir": "WEBGW_DATA_DIR", "token": "WEBGW_API_TOKEN"} {
		if err := envDefault(c, flag, env); err != nil {
			return nil, err
		}
	}
	tok := f.token
	if tok == "" {
		p := filepath.Join(f.dataDir, "admin.token")
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, usagef("no API token: read %s: %v (use --data-dir of the gateway, or --token)", p, err)
		}
		tok = strings.TrimSpace(string(b))
	}
	return &api.Client{Addr: f.apiAddr, Token: tok}, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// apiErr turns a 400 from the API into a usage error (exit 2).
func apiErr(err error) error {
	var ae *api.APIError
	if errors.As(err, &ae) && ae.Status == 400 {
		return &usageError{err: err}
	}
	return err
}

func tenantCmd() *cobra.Command {
	c := &cobra.Command{Use: "tenant", Short: "Manage tenants (who may own services)"}
	var addF, listF, rmF clientFlags
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a tenant and print its token (shown only once)",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := addF.client(c)
			if err != nil {
				return err
			}
			var out api.TenantCreated
			if err := cl.Do(c.Context(), "POST", "/v1/tenants", api.TenantRequest{Name: args[0]}, &out); err != nil {
				return apiErr(err)
			}
			fmt.Fprintln(os.Stdout, out.Token)
			return nil
		},
	}
	addF.add(add, false)
	list := &cobra.Command{
		Use:   "list",
		Short: "List tenants",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := listF.client(c)
			if err != nil {
				return err
			}
			var out []api.TenantInfo
			if err := cl.Do(c.Context(), "GET", "/v1/tenants", nil, &out); err != nil {
				return apiErr(err)
			}
			if listF.json {
				return printJSON(os.Stdout, out)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSERVICES\tCREATED")
			for _, t := range out {
				fmt.Fprintf(tw, "%s\t%d\t%s\n", t.Name, t.Services, t.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	listF.add(list, true)
	rm := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a tenant, its services and its token; its agents are disconnected",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := rmF.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/v1/tenants/"+args[0], nil, nil); err != nil {
				return apiErr(err)
			}
			fmt.Fprintf(os.Stderr, "tenant %s removed\n", args[0])
			return nil
		},
	}
	rmF.add(rm, false)
	c.AddCommand(add, list, rm)
	return c
}

func statusCmd() *cobra.Command {
	var f clientFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the gateway, its services and connected agents",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := f.client(c)
			if err != nil {
				return err
			}
			var st api.Status
			if err := cl.Do(c.Context(), "GET", "/v1/status", nil, &st); err != nil {
				return apiErr(err)
			}
			if f.json {
				return printJSON(os.Stdout, st)
			}
			g := st.Gateway
			fmt.Printf("gateway %s  version %s  domain %s  up %s\n", g.ID, g.Version, g.Domain, time.Since(g.Started).Round(time.Second))
			fmt.Printf("https %s  http %s  api %s  open mode %v\n\n", g.HTTPSAddr, g.HTTPAddr, g.APIAddr, g.Open)
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tTENANT\tPROTOCOL\tAGENTS\tSTREAMS\tREQUESTS\tBYTES IN\tBYTES OUT")
			for _, s := range st.Services {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", s.Name, orDash(s.Tenant), s.Protocol, s.Agents, s.Streams, s.Requests, human(s.BytesIn), human(s.BytesOut))
			}
			tw.Flush()
			fmt.Println()
			tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AGENT\tTENANT\tREMOTE\tSERVICES\tSTREAMS\tBYTES IN\tBYTES OUT\tCONNECTED\tTUNNEL")
			for _, a := range st.Agents {
				id := a.ID
				if len(id) > 12 {
					id = id[:12]
				}
				state := time.Since(a.Connected).Round(time.Second).String()
				if a.Draining {
					state += " (draining)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s #%d\n", id, orDash(a.Tenant), a.Remote, strings.Join(a.Services, ","), a.Streams, human(a.BytesIn), human(a.BytesOut), state, orDash(a.Transport), a.Conn)
			}
			return tw.Flush()
		},
	}
	f.add(c, true)
	return c
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  argsUsage(cobra.NoArgs),
		Run:   func(c *cobra.Command, _ []string) { fmt.Println(gatewayVersion()) },
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
