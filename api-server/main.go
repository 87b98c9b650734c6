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
	logJSON := flag.Bool("log-json", true, "log as JSON (false: text)")
	flag.Parse()
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, nil)
	if !*logJSON {
		h = slog.NewTextHandler(os.Stderr, nil)
	}
	cfg.Logger = slog.New(h)
	slog.SetDefault(cfg.Logger)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := apiserver.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("api-server failed", "err", err)
		os.Exit(1)
	}
}
