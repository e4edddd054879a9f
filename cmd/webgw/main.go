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
	if errors.As(err, &ue) {
		return 2
	}
	return 1
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
	root.AddCommand(gatewayCmd(), exposeCmd(), agentCmd(), tenantCmd(), serviceCmd(), statusCmd(), versionCmd())
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
