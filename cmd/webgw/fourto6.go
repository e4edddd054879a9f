package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
)

func fourTo6Cmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "4to6",
		Short: "IPv4-to-IPv6 access: WireGuard devices that get a public IPv6 address of their own",
		Long: `IPv4-to-IPv6 access: a laptop or phone on an IPv4-only network connects to the
gateway with WireGuard (over IPv4) and gets its own public IPv6 address (or a /64)
from the gateway's --wg-prefix. Inbound connections from the internet reach it
only on the ports opened with 'webgw 4to6 open'.`,
	}
	c.AddCommand(fourTo6AddCmd(), fourTo6ListCmd(), fourTo6ShowCmd(), fourTo6RemoveCmd(), fourTo6PortsCmd(true), fourTo6PortsCmd(false))
	return c
}

// devicePath is the API path of a device, with ?tenant= when given.
func devicePath(name, tenant string) string {
	p := "/v1/4to6/devices/" + name
	if tenant != "" {
		p += "?tenant=" + url.QueryEscape(tenant)
	}
	return p
}

// deviceNameArg checks a NAME argument.
func deviceNameArg(name string) error {
	if err := model.ValidateDeviceName(name); err != nil {
		return usagef("NAME: %v", err)
	}
	return nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// openText is a device's open list for people.
func openText(open []string) string {
	if len(open) == 0 {
		return "none"
	}
	return strings.Join(open, " ")
}

func fourTo6AddCmd() *cobra.Command {
	var (
		cf        clientFlags
		publicKey string
		tenant    string
		open      []string
		qr, noQR  bool
	)
	c := &cobra.Command{
		Use:   "add NAME [--public-key KEY] [--open tcp/22 ...]",
		Short: "Add a device and print its WireGuard config (wg-quick)",
		Long: `Add a device and print its WireGuard config (wg-quick format) on stdout, and
nothing else there, so 'webgw 4to6 add laptop > laptop.conf' makes a file for
'wg-quick up ./laptop.conf' or for a WireGuard app.

Without --public-key the key pair is made here, on this machine: only the public
key goes to the gateway, and the private key is in the printed config only (it is
kept nowhere else: save the config). When stdout is a terminal a QR code of the
config is also printed on stderr, for the WireGuard phone apps (--qr forces it,
--no-qr leaves it out).

With --public-key (from 'wg genkey | tee private.key | wg pubkey' on the device)
the config has the line 'PrivateKey = <your private key>' to fill in.

--open opens an inbound port to the device from the internet (tcp/PORT, udp/PORT,
or all; repeatable); by default only established and related traffic comes in.
With the admin token, --tenant names the owner. --json prints the API's answer
instead, its config holding the private key made here.`,
		Example: `  webgw 4to6 add laptop > laptop.conf
  webgw 4to6 add phone --open udp/60000
  webgw 4to6 add server --public-key hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo= --open tcp/22 --tenant acme`,
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := deviceNameArg(name); err != nil {
				return err
			}
			if qr && noQR {
				return usagef("--qr and --no-qr: give one of them")
			}
			openList, err := model.ParseOpen(open)
			if err != nil {
				return usagef("--open: %v", err)
			}
			var priv model.WGKey
			pub := publicKey
			if publicKey != "" {
				k, err := model.ParseWGKey(publicKey)
				if err != nil {
					return usagef("--public-key: %v", err)
				}
				if k.IsZero() {
					return usagef("--public-key: the all-zero key is no key")
				}
			} else {
				if priv, err = model.GenerateWGKey(); err != nil {
					return err
				}
				pub = priv.Public().String()
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var out api.DeviceDetail
			req := api.DeviceRequest{Name: name, PublicKey: pub, Open: openList, Tenant: tenant}
			if err := cl.Do(c.Context(), "POST", "/v1/4to6/devices", req, &out); err != nil {
				return apiErr(err)
			}
			if publicKey == "" {
				if out.Config, err = api.FillPrivateKey(out.Config, priv); err != nil {
					return fmt.Errorf("device %s was added, but its config cannot be completed (%v); remove it with 'webgw 4to6 remove %s'", name, err, name)
				}
			}
			stdout, stderr := c.OutOrStdout(), c.ErrOrStderr()
			if cf.json {
				if err := printJSON(stdout, out); err != nil {
					return err
				}
			} else {
				fmt.Fprint(stdout, out.Config)
			}
			if qr || (!noQR && publicKey == "" && isTerminal(stdout)) {
				if err := writeQR(stderr, out.Config); err != nil {
					return err
				}
			}
			fmt.Fprintf(stderr, "device %s added: address %s, open %s\n", name, out.Address, openText(out.Open))
			if publicKey == "" {
				fmt.Fprintln(stderr, "the config holds the device's private key, which is kept nowhere else: save it")
			} else {
				fmt.Fprintln(stderr, "put the device's private key in the config's PrivateKey line")
			}
			return nil
		},
	}
	cf.add(c, true)
	fs := c.Flags()
	fs.StringVar(&publicKey, "public-key", "", "the device's WireGuard public key (default: make a key pair here and print the private key in the config)")
	fs.StringSliceVar(&open, "open", nil, "inbound port to open: tcp/PORT, udp/PORT or all (repeatable; default none)")
	fs.StringVar(&tenant, "tenant", "", "tenant that owns the device (needed with the admin token)")
	fs.BoolVar(&qr, "qr", false, "print a QR code of the config on stderr even when stdout is not a terminal")
	fs.BoolVar(&noQR, "no-qr", false, "print no QR code")
	return c
}

func fourTo6ListCmd() *cobra.Command {
	var (
		cf     clientFlags
		tenant string
	)
	c := &cobra.Command{
		Use:   "list",
		Short: "List devices (all with the admin token, a tenant's own with its token)",
		Args:  argsUsage(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if tenant != "" {
				if err := model.ValidateTenantName(tenant); err != nil {
					return usagef("--tenant: %v", err)
				}
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			path := "/v1/4to6/devices"
			if tenant != "" {
				path += "?tenant=" + url.QueryEscape(tenant)
			}
			var out []api.DeviceDetail
			if err := cl.Do(c.Context(), "GET", path, nil, &out); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTENANT\tADDRESS\tOPEN\tRX\tTX\tHANDSHAKE")
			for _, d := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Name, d.Tenant, d.Address, openText(d.Open), human(d.RxBytes), human(d.TxBytes), handshakeText(d.LastHandshake))
			}
			return tw.Flush()
		},
	}
	cf.add(c, true)
	c.Flags().StringVar(&tenant, "tenant", "", "only this tenant's devices (admin token)")
	return c
}

// handshakeText is the time since a handshake for people.
func handshakeText(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func fourTo6ShowCmd() *cobra.Command {
	var (
		cf         clientFlags
		tenant     string
		configOnly bool
	)
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a device and its WireGuard config (with a placeholder for the private key)",
		Example: `  webgw 4to6 show laptop
  webgw 4to6 show laptop --config > laptop.conf   # then put the private key in`,
		Args: argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := deviceNameArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.DeviceDetail
			if err := cl.Do(c.Context(), "GET", devicePath(args[0], tenant), nil, &d); err != nil {
				return apiErr(err)
			}
			w := c.OutOrStdout()
			switch {
			case cf.json:
				return printJSON(w, d)
			case configOnly:
				_, err := fmt.Fprint(w, d.Config)
				return err
			}
			fmt.Fprintf(w, "device %s of tenant %s\n", d.Name, d.Tenant)
			fmt.Fprintf(w, "  address     %s\n", d.Address)
			fmt.Fprintf(w, "  public key  %s\n", d.PublicKey)
			if len(d.Open) == 0 {
				fmt.Fprintf(w, "  open        none (established and related traffic only)\n")
			} else {
				fmt.Fprintf(w, "  open        %s\n", openText(d.Open))
			}
			fmt.Fprintf(w, "  created     %s\n", d.Created.Format(time.RFC3339))
			fmt.Fprintf(w, "  traffic     %s from it, %s to it; last handshake %s\n\n", human(d.RxBytes), human(d.TxBytes), handshakeText(d.LastHandshake))
			_, err = fmt.Fprint(w, d.Config)
			return err
		},
	}
	cf.add(c, true)
	c.Flags().StringVar(&tenant, "tenant", "", "the device's tenant (needed with the admin token)")
	c.Flags().BoolVar(&configOnly, "config", false, "print the config only")
	return c
}

func fourTo6RemoveCmd() *cobra.Command {
	var (
		cf     clientFlags
		tenant string
	)
	c := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a device: it is cut off at once, its address and key are released",
		Args:  argsUsage(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := deviceNameArg(args[0]); err != nil {
				return err
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), "DELETE", devicePath(args[0], tenant), nil, nil); err != nil {
				return apiErr(err)
			}
			fmt.Fprintf(c.ErrOrStderr(), "device %s removed\n", args[0])
			return nil
		},
	}
	cf.add(c, false)
	c.Flags().StringVar(&tenant, "tenant", "", "the device's tenant (needed with the admin token)")
	return c
}

// fourTo6PortsCmd is "open" (open true) or "close".
func fourTo6PortsCmd(open bool) *cobra.Command {
	var (
		cf     clientFlags
		tenant string
	)
	verb, what := "close", "Close inbound ports of a device ('all' closes every one)"
	if open {
		verb, what = "open", "Open inbound ports of a device to the internet ('all' opens every one)"
	}
	c := &cobra.Command{
		Use:     verb + " NAME PORT...",
		Short:   what,
		Long:    what + ".\nA PORT is tcp/NUMBER or udp/NUMBER, or all. It prints the ports open afterwards.",
		Example: fmt.Sprintf("  webgw 4to6 %s laptop tcp/22 udp/60000\n  webgw 4to6 %s laptop all", verb, verb),
		Args:    argsUsage(cobra.MinimumNArgs(2)),
		RunE: func(c *cobra.Command, args []string) error {
			if err := deviceNameArg(args[0]); err != nil {
				return err
			}
			ports, err := model.ParseOpen(args[1:])
			if err != nil {
				return usagef("PORT: %v", err)
			}
			var patch api.DevicePatch
			switch {
			case open:
				patch.Add = ports
			case slices.Contains(ports, model.OpenAll):
				none := []string{}
				patch.Open = &none
			default:
				patch.Remove = ports
			}
			cl, err := cf.client(c)
			if err != nil {
				return err
			}
			var d api.DeviceDetail
			if err := cl.Do(c.Context(), "PATCH", devicePath(args[0], tenant), patch, &d); err != nil {
				return apiErr(err)
			}
			if cf.json {
				return printJSON(c.OutOrStdout(), d)
			}
			fmt.Fprintln(c.OutOrStdout(), openText(d.Open))
			return nil
		},
	}
	cf.add(c, true)
	c.Flags().StringVar(&tenant, "tenant", "", "the device's tenant (needed with the admin token)")
	return c
}
