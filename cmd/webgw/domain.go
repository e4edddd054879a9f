package main

import (
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
)

func domainCmd() *cobra.Command {
	c := &cobra.Command{Use: "domain", Short: "Serve a service under a custom domain, once DNS proves you control it"}
	c.AddCommand(domainAddCmd(), domainVerifyCmd(), domainListCmd(), domainShowCmd(), domainRemoveCmd())
	return c
}

// domainArg checks a NAME argument.
func domainArg(name string) error {
	if err := model.ValidateDomainName(name); err != nil {
		return usagef("NAME: %v", err)
	}
	return nil
}

// printDomainRecords prints the records to create for d, then its state.
func printDomainRecords(w io.Writer, d api.DomainDetail) error {
	fmt.Fprintf(w, "Create these DNS records for %s (service %s):\n\n", d.Name, d.Service)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tNAME\tVALUE")
	for _, r := range d.Records {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Type, r.Name, r.Value)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.Alternatives) > 0 {
		fmt.Fprintf(w, "\nor, instead of the CNAME (at a zone apex), all of:\n\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, r := range d.Alternatives {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Type, r.Name, r.Value)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nThen run: webgw domain verify %s\n", d.Name)
	return nil
}

// printDomainState prints one line: the state, and the reason when not verified.
func printDomainState(w io.Writer, d api.DomainDetail) {
	switch {
	case d.State == model.DomainVerified && d.Reason != "":
		fmt.Fprintf(w, "%s: verified (proof gone since %s, served during the grace period: %s)\n", d.Name, d.FailingSince.Format("2006-01-02 15:04:05Z07:00"), d.Reason)
	case d.Reason != "":
		fmt.Fprintf(w, "%s: %s (%s)\n", d.Name, d.State, d.Reason)
	default:
		fmt.Fprintf(w, "%s: %s\n", d.Name, d.State)
	}
}

func domainAddCmd() *cobra.Command {
	var (
		cf      clientFlags
		service string
		tenant  string
	)
	c := &cobra.Command{
		Use:   "add NAME --service SERVICE",
		Short: "Attach a custom domain to a service and print the DNS records that prove control of it",
		Long: `Attach a custom domain to one of your services. It is served (HTTPS with a
certificate for NAME, and HTTP redirected) once verified: create the records
printed, a TXT record _webgw-challenge.NAME holding the domain's token and a
CNAME from NAME to the service's gateway name (or A/AAAA records of the
gateway's public addresses), then run 'webgw domain verify NAME'. The gateway
also checks every --domain-recheck, and stops serving a domain whose proof
has been gone for --domain-grace.

A domain belongs to one tenant. With the admin token, --tenant names the owner.`,
		Example: `  webgw domain add www.example.com --service shop
  webgw domain verify www.example.com`,
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := domainArg(args[0]); err != nil {
				return err
			}
			if service == "" {
				return usagef("--service: name the service the domain is served by")
			}
			if err := model.ValidateName(service); err != nil {
				return usagef("--service: %v", err)
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out api.DomainDetail
			if err := cl.Do(c.Context(), "POST", "/v1/domains", api.DomainRequest{Name: args[0], Service: service, Tenant: tenant}, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			return printDomainRecords(c.OutOrStdout(), out)
		},
	}
	cf.add(c, true)
	c.Flags().StringVar(&service, "service", "", "service the domain is served by")
	c.Flags().StringVar(&tenant, "tenant", "", "tenant that owns the domain (needed with the admin token)")
	return c
}

func domainVerifyCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "verify NAME",
		Short: "Check a domain's DNS proof now and print its state (exit 1 when not verified)",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := domainArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out api.DomainDetail
			if err := cl.Do(c.Context(), "POST", "/v1/domains/"+url.PathEscape(args[0])+"/verify", nil, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				if err := printJSON(c.OutOrStdout(), out); err != nil {
					return err
				}
			} else {
				printDomainState(c.OutOrStdout(), out)
			}
			if out.State != model.DomainVerified {
				return fmt.Errorf("domain %s is not verified (%s)", out.Name, out.State)
			}
			return nil
		},
	}
	cf.add(c, true)
	return c
}

func domainShowCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "Print a domain's state and the DNS records that prove control of it",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := domainArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out api.DomainDetail
			if err := cl.Do(c.Context(), "GET", "/v1/domains/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			printDomainState(c.OutOrStdout(), out)
			fmt.Fprintln(c.OutOrStdout())
			return printDomainRecords(c.OutOrStdout(), out)
		},
	}
	cf.add(c, true)
	return c
}

func domainListCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List custom domains (all with the admin token, a tenant's own with its token)",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out []api.DomainDetail
			if err := cl.Do(c.Context(), "GET", "/v1/domains", nil, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOMAIN\tSERVICE\tTENANT\tSTATE\tREASON")
			for _, d := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Name, d.Service, d.Tenant, d.State, orDash(d.Reason))
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	return c
}

func domainRemoveCmd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "remove NAME",
		Short: "Detach a custom domain; it stops being served at once",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := domainArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", "/v1/domains/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return apiErr(err)
			}
			fmt.Fprintf(c.ErrOrStderr(), "domain %s removed\n", args[0])
			return nil
		},
	}
	cf.add(c, false)
	return c
}
