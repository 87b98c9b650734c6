// Command api-server is spawner's control API and public router. It only
// wires flags into spawner.dev/api-server/apiserver.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"spawner.dev/api-server/apiserver"
)

func main() {
	var cfg apiserver.Config
	cfg.AddFlags(flag.CommandLine)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := apiserver.Run(ctx, cfg); err != nil {
		slog.Error("api-server failed", "err", err)
		os.Exit(1)
	}
}
