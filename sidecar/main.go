// Command spawner-sidecar runs next to a backend's app: it proxies the public
// port to the app and reports on a separate status port whether the backend
// is in use. See docs/sidecar.md. All behaviour lives in
// spawner.dev/sidecar/server; this file only parses flags, sets the process's
// GOMAXPROCS and handles signals.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"spawner.dev/sidecar/server"
)

func main() {
	var cfg server.Config
	fs := flag.NewFlagSet("spawner-sidecar", flag.ExitOnError)
	cfg.AddFlags(fs)
	fs.Parse(os.Args[1:])

	// One P unless GOMAXPROCS says otherwise: the sidecar's work is system
	// calls on a few sockets, and with more Ps the runtime spends more CPU
	// handing goroutines between threads than it gains (about 10% more CPU
	// per proxied request with 2 Ps on 2 cores). Set here, for the process,
	// not in server.Run, which tests run in theirs.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := server.Run(ctx, cfg); err != nil {
		slog.Error("spawner-sidecar stopped", "err", err)
		os.Exit(1)
	}
}
