// Command webgw is the web gateway: `webgw gateway` runs a public gateway,
// `webgw expose` and `webgw agent` run beside private backends, and the other
// subcommands are thin clients of the gateway's admin API.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// usageError is bad usage: the process exits 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "webgw:", err)
	var ue *usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command ") {
		return 2
	}
	return 1
}

// requireSubcommand makes a parent command (one that only groups others)
// refuse to run on its own or with an unknown subcommand: bad usage, exit 2.
func requireSubcommand(c *cobra.Command) {
	for _, sub := range c.Commands() {
		if sub.HasSubCommands() {
			requireSubcommand(sub)
		}
	}
	if c.Run != nil || c.RunE != nil {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("unknown command %q for %q (see '%s --help')", args[0], c.CommandPath(), c.CommandPath())
		}
		c.Help()
		return usagef("%s: a subcommand is needed (see above)", c.CommandPath())
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "webgw",
		Short:         "webgw is a web gateway: public HTTPS for services behind NAT, over reverse tunnels",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usagef("%v (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(gatewayCmd(), exposeCmd(), agentCmd(), tenantCmd(), serviceCmd(), portCmd(), domainCmd(), statusCmd(), versionCmd())
	root.AddCommand(dnsCmd(), fourTo6Cmd(), yggCmd())
	requireSubcommand(root)
	return root
}

// argsUsage wraps a positional-argument check so its error exits 2.
func argsUsage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usagef("%s: %v (see '%s --help')", c.CommandPath(), err, c.CommandPath())
		}
		return nil
	}
}

// envDefault applies an environment variable to a flag the user did not set.
func envDefault(c *cobra.Command, flag, env string) error {
	f := c.Flags().Lookup(flag)
	if f == nil || f.Changed {
		return nil
	}
	if v, ok := os.LookupEnv(env); ok && v != "" {
		if err := f.Value.Set(v); err != nil {
			return usagef("environment %s: %v", env, err)
		}
	}
	return nil
}

// checkLogLevel validates a --log-level value.
func checkLogLevel(level string) error {
	switch level {
	case "debug", "info", "warn", "error":
		return nil
	}
	return usagef("--log-level: %q not accepted; use debug, info, warn or error", level)
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	switch level {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
