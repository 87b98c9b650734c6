// Command spawner-sweeper runs on every node (a DaemonSet): it follows the
// sidecar of each backend pod on its node, records a backend Ready as soon as
// its app listens and sweeps it once idle for its grace period. See
// docs/sweeper.md. All behaviour lives in spawner.dev/sweeper/internal/sweeper;
// this file only parses flags and handles signals.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"spawner.dev/sweeper/internal/sweeper"
)

func main() {
	var cfg sweeper.Config
	fs := flag.NewFlagSet("spawner-sweeper", flag.ExitOnError)
	cfg.AddFlags(fs)
	fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := sweeper.Run(ctx, cfg); err != nil {
		slog.Error("spawner-sweeper stopped", "err", err)
		os.Exit(1)
	}
}
