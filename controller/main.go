// Command spawner-controller turns SessionLivedBackends into backend pods and
// keeps their status true. All behaviour lives in spawner.dev/controller/reconciler;
// this file only parses flags and handles signals.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"spawner.dev/controller/reconciler"
)

func main() {
	var cfg reconciler.Config
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	cfg.AddFlags(fs)
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := reconciler.Run(ctx, cfg); err != nil {
		slog.Error("spawner-controller stopped", "err", err)
		os.Exit(1)
	}
}
