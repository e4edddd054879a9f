package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
)

func dnsCmd() *cobra.Command {
	c := &cobra.Command{Use: "dns", Short: "Manage DNS zones delegated to the gateway, and their records"}
	zone := &cobra.Command{Use: "zone", Short: "Add, verify, list, show and remove DNS zones"}
	zone.AddCommand(zoneAddCmd(), zoneListCmd(), zoneShowCmd(), zoneVerifyCmd(), zoneRemoveCmd())
	record := &cobra.Command{Use: "record", Short: "Add, list and remove records of a DNS zone"}
	record.AddCommand(recordAddCmd(), recordListCmd(), recordRemoveCmd())
	c.AddCommand(zone, record, dsCmd())
	return c
}

func dsCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "ds [ZONE]",
		Short: "Print the DS record to put at the parent of a signed zone (default: the gateway domain)",
		Args:  argsUsage(cobra.MaximumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			path := "/v1/dns/ds"
			if len(args) == 1 {
				zone, err := zoneArg(args[0])
				if err != nil {
					return err
				}
				path += "?zone=" + url.QueryEscape(zone)
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.DSAnswer
			if err := cl.Do(c.Context(), "GET", path, nil, &d); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), d)
			}
			for _, ds := range d.DS {
				fmt.Fprintln(c.OutOrStdout(), ds)
			}
			return nil
		},
	}
	cf.add(c, true)
	return c
}

// zoneArg checks a ZONE argument and returns it in canonical form.
func zoneArg(s string) (string, error) {
	z, err := model.ValidateZoneName(s)
	if err != nil {
		return "", usagef("ZONE: %v", err)
	}
	return z, nil
}

// printZoneSteps prints what the tenant must publish for zone d.
func printZoneSteps(w io.Writer, d api.ZoneDetail) {
	fmt.Fprintf(w, "zone %s (%s)\n", d.Name, d.State)
	if d.State != model.ZoneVerified {
		fmt.Fprintf(w, "1. prove control: create this record at the zone's current DNS provider:\n")
		fmt.Fprintf(w, "     %s. TXT %q\n", d.Challenge.Name, d.Challenge.Value)
		fmt.Fprintf(w, "2. verify: webgw dns zone verify %s\n", d.Name)
		fmt.Fprintf(w, "3. delegate: set the zone's NS records at its registrar to:\n")
	} else {
		fmt.Fprintf(w, "served by the gateway; the zone's NS records at its registrar:\n")
	}
	for _, ns := range d.NameServers {
		fmt.Fprintf(w, "     %s. NS %s.\n", d.Name, ns)
	}
}

func zoneAddCmd() *cobra.Command {
	var (
		cf     clientFlags
		tenant string
	)
	c := &cobra.Command{
		Use:   "add ZONE",
		Short: "Add a zone and print the records that prove control of it and delegate it",
		Long: `Add a DNS zone (a domain you control) for the gateway to serve.

It is served only once verified: create the TXT record printed (at the
zone's current DNS provider) and run 'webgw dns zone verify ZONE'. Then set
the zone's NS records at its registrar to the gateway's name servers.`,
		Example: `  webgw dns zone add example.org`,
		Args:    argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.ZoneDetail
			if err := cl.Do(c.Context(), "POST", "/v1/dns/zones", api.ZoneRequest{Name: zone, Tenant: tenant}, &d); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), d)
			}
			printZoneSteps(c.OutOrStdout(), d)
			return nil
		},
	}
	cf.add(c, true)
	c.Flags().StringVar(&tenant, "tenant", "", "tenant that owns the zone (needed with the admin token)")
	return c
}

func zoneVerifyCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "verify ZONE",
		Short: "Check the zone's TXT proof of control; once verified the gateway serves the zone",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.ZoneDetail
			if err := cl.Do(c.Context(), "POST", "/v1/dns/zones/"+zone+"/verify", nil, &d); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), d)
			}
			fmt.Fprintf(c.OutOrStdout(), "zone %s verified\n", d.Name)
			return nil
		},
	}
	cf.add(c, true)
	return c
}

func zoneShowCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "show ZONE",
		Short: "Show a zone, its state and the records to publish",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.ZoneDetail
			if err := cl.Do(c.Context(), "GET", "/v1/dns/zones/"+zone, nil, &d); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), d)
			}
			printZoneSteps(c.OutOrStdout(), d)
			fmt.Fprintf(c.OutOrStdout(), "tenant %s, %d records\n", d.Tenant, d.Records)
			return nil
		},
	}
	cf.add(c, true)
	return c
}

func zoneListCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List zones (all with the admin token, a tenant's own with its token)",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out []api.ZoneDetail
			if err := cl.Do(c.Context(), "GET", "/v1/dns/zones", nil, &out); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ZONE\tTENANT\tSTATE\tRECORDS")
			for _, z := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", z.Name, z.Tenant, z.State, z.Records)
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	return c
}

func zoneRemoveCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "remove ZONE",
		Short: "Remove a zone and its records; the gateway stops answering it",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/v1/dns/zones/"+zone, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "zone %s removed\n", zone)
			return nil
		},
	}
	cf.add(c, false)
	return c
}

// recordData joins DATA arguments; TXT text not already quoted becomes
// one quoted string (split in 255-byte pieces).
func recordData(typ string, args []string) string {
	d := strings.Join(args, " ")
	if !strings.EqualFold(typ, "TXT") || strings.HasPrefix(d, `"`) {
		return d
	}
	var parts []string
	for len(d) > 0 {
		n := min(len(d), 255)
		piece := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(d[:n])
		parts = append(parts, `"`+piece+`"`)
		d = d[n:]
	}
	return strings.Join(parts, " ")
}

func recordAddCmd() *cobra.Command {
	var (
		cf      clientFlags
		ttl     int
		service string
	)
	c := &cobra.Command{
		Use:   "add ZONE NAME (TYPE DATA... | --service SERVICE) [--ttl SECONDS]",
		Short: "Add a record to a zone and print its id",
		Long: `Add a record to a zone. NAME is relative to the zone (@ for the apex).
TYPE is A, AAAA, CNAME, TXT, MX, SRV or CAA; DATA is the record data as in a
zone file (names without a final dot are relative to the zone; TXT text that
is not quoted is taken as one string). --service SERVICE instead of TYPE and
DATA points the name at one of your services (A and AAAA of the gateway).`,
		Example: `  webgw dns record add example.org www A 192.0.2.1
  webgw dns record add example.org @ MX 10 mail.example.org.
  webgw dns record add example.org @ TXT "v=spf1 -all"
  webgw dns record add example.org _sip._tcp SRV 10 5 5060 sip.example.org.
  webgw dns record add example.org @ CAA 0 issue '"letsencrypt.org"'
  webgw dns record add example.org shop --service shop --ttl 300`,
		Args: argsUsage(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			if _, err := model.ValidateRecordName(zone, args[1]); err != nil {
				return usagef("NAME: %v", strings.TrimPrefix(err.Error(), "name: "))
			}
			req := api.RecordRequest{Name: args[1], TTL: ttl, Service: service}
			switch {
			case service != "" && len(args) > 2:
				return usagef("TYPE and DATA: not with --service, which points the name at a service (A and AAAA); give one or the other")
			case service != "":
			case len(args) == 2:
				return usagef("TYPE: missing; give TYPE DATA (A, AAAA, CNAME, TXT, MX, SRV or CAA), or --service")
			case len(args) == 3:
				return usagef("DATA: missing; give the %s record's data", strings.ToUpper(args[2]))
			default:
				req.Type = strings.ToUpper(args[2])
				req.Data = recordData(req.Type, args[3:])
			}
			if ttl != 0 && (ttl < model.MinTTL || ttl > model.MaxTTL) {
				return usagef("--ttl: %d not accepted; use %d to %d seconds (0: %d)", ttl, model.MinTTL, model.MaxTTL, model.DefaultTTL)
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var r model.Record
			if err := cl.Do(c.Context(), "POST", "/v1/dns/zones/"+zone+"/records", req, &r); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), r)
			}
			fmt.Fprintln(c.OutOrStdout(), r.ID)
			return nil
		},
	}
	cf.add(c, true)
	c.Flags().IntVar(&ttl, "ttl", 0, fmt.Sprintf("TTL in seconds, %d to %d (0: %d)", model.MinTTL, model.MaxTTL, model.DefaultTTL))
	c.Flags().StringVar(&service, "service", "", "point the name at this service of yours instead of giving TYPE and DATA")
	return c
}

func recordListCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "list ZONE",
		Short: "List a zone's records",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out []model.Record
			if err := cl.Do(c.Context(), "GET", "/v1/dns/zones/"+zone+"/records", nil, &out); err != nil {
				return err
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tTTL\tTYPE\tDATA")
			for _, r := range out {
				typ, data := r.Type, r.Data
				if r.Service != "" {
					typ, data = "service", r.Service
				}
				ttl := r.TTL
				if ttl == 0 {
					ttl = model.DefaultTTL
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.ID, r.Name, ttl, typ, data)
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	return c
}

func recordRemoveCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "remove ZONE ID",
		Short: "Remove a record of a zone by its id (see 'webgw dns record list')",
		Args:  argsUsage(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, args []string) error {
			zone, err := zoneArg(args[0])
			if err != nil {
				return err
			}
			if args[1] == "" || strings.ContainsAny(args[1], "/?# ") {
				return usagef("ID: %q is not a record id (see 'webgw dns record list %s')", args[1], zone)
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/v1/dns/zones/"+zone+"/records/"+args[1], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "record %s removed from %s\n", args[1], zone)
			return nil
		},
	}
	cf.add(c, false)
	return c
}
