// Command spawner-sweeper runs on every node (a DaemonSet): it follows the
// sidecar of each backend pod on its node, records a backend Ready as soon as
// its app listens and sweeps it once idle for its grace period. See
// docs/sweeper.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"spawner.dev/common/kubeclient"
	"spawner.dev/common/metrics"
	"spawner.dev/generated/clientset/versioned"
	"spawner.dev/sweeper/internal/sweeper"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "spawner-sweeper:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kc      kubeclient.Options
		cfg     sweeper.Config
		addr    string
		verbose bool
	)
	fs := flag.NewFlagSet("spawner-sweeper", flag.ExitOnError)
	kc.AddFlags(fs)
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "the node whose backends to follow (env NODE_NAME, from the downward API)")
	fs.StringVar(&cfg.Namespace, "namespace", "", "follow backends in this namespace only (default: all)")
	fs.IntVar(&cfg.StatusPort, "status-port", 9091, "the sidecars' status port")
	fs.StringVar(&addr, "listen", envOr("SWEEPER_LISTEN", ":9092"), "address for /healthz and /metrics (env SWEEPER_LISTEN)")
	fs.DurationVar(&cfg.BackoffMin, "reconnect-min", 100*time.Millisecond, "first delay before reopening a lost status stream")
	fs.DurationVar(&cfg.BackoffMax, "reconnect-max", 5*time.Second, "longest delay between attempts to reopen a status stream")
	fs.DurationVar(&cfg.StartupRetry, "startup-retry", 50*time.Millisecond, "delay between attempts to open a new backend's first status stream (its sidecar is starting)")
	fs.DurationVar(&cfg.StartupWindow, "startup-window", time.Minute, "how long a new backend's first stream is retried at --startup-retry before backing off")
	fs.DurationVar(&cfg.ReadIdle, "stream-idle-timeout", 150*time.Second, "drop and reopen a status stream silent this long (the sidecar sends keep-alives every 60s; a path dropping packets is found by TCP keep-alive within 30s)")
	fs.BoolVar(&verbose, "v", false, "debug logging")
	fs.Parse(os.Args[1:])
	if cfg.NodeName == "" {
		return errors.New("--node-name (or NODE_NAME) is required")
	}
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	rc, err := kc.Config("spawner-sweeper/" + cfg.NodeName)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	slabs, err := versioned.NewForConfig(rc)
	if err != nil {
		return err
	}

	reg := metrics.NewRegistry()
	sw := sweeper.New(cfg, slabs, sweeper.RealClock, log, reg)

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	synced := make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", reg)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-synced:
			w.Write([]byte("ok\n"))
		default:
			http.Error(w, "pod informer not synced yet", http.StatusServiceUnavailable)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return sw.Run(ctx, kube, func() { close(synced) })
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
