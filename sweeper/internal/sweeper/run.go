package sweeper

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/env"
	"spawner.dev/common/kubeclient"
	"spawner.dev/common/metrics"
	"spawner.dev/generated/clientset/versioned"
)

// AddFlags registers the sweeper process's flags (docs/sweeper.md).
func (c *Config) AddFlags(fs *flag.FlagSet) {
	c.Kube.AddFlags(fs)
	c.Log.AddFlags(fs)
	fs.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "the node whose backends to follow (env NODE_NAME, from the downward API)")
	fs.StringVar(&c.Namespace, "namespace", "", "follow backends in this namespace only (default: all)")
	fs.IntVar(&c.StatusPort, "status-port", spawnerv1.SidecarStatusPort, "the sidecars' status port")
	fs.StringVar(&c.Listen, "listen", env.Or("SWEEPER_LISTEN", ":9092"), "address for /healthz and /metrics (env SWEEPER_LISTEN)")
	fs.DurationVar(&c.BackoffMin, "reconnect-min", 100*time.Millisecond, "first delay before reopening a lost status stream")
	fs.DurationVar(&c.BackoffMax, "reconnect-max", 5*time.Second, "longest delay between attempts to reopen a status stream")
	fs.DurationVar(&c.StartupRetry, "startup-retry", 50*time.Millisecond, "delay between attempts to open a new backend's first status stream (its sidecar is starting)")
	fs.DurationVar(&c.StartupWindow, "startup-window", time.Minute, "how long a new backend's first stream is retried at --startup-retry before backing off")
	fs.DurationVar(&c.ReadIdle, "stream-idle-timeout", 150*time.Second, "drop and reopen a status stream silent this long (the sidecar sends keep-alives every 60s; a path dropping packets is found by TCP keep-alive within 30s)")
}

// Run is the sweeper process: it builds the clients from cfg.Kube, serves
// /healthz and /metrics on cfg.Listen, and follows the node's backends until
// ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.NodeName == "" {
		return errors.New("--node-name (or NODE_NAME) is required")
	}
	log := cfg.Log.Setup()
	kubeclient.RouteKlog(log, int(cfg.Log.Verbosity))
	clients, err := kubeclient.NewClients(&cfg.Kube, "spawner-sweeper/"+cfg.NodeName, versioned.NewForConfig)
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	sw := New(cfg, clients.Spawner, RealClock, log, reg)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
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
	return sw.Run(ctx, clients.Kube, func() { close(synced) })
}
