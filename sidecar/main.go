// Command spawner-sidecar runs next to a backend's app: it proxies the public
// port to the app and reports on a separate status port whether the backend
// is in use. See docs/sidecar.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"spawner.dev/common/wire"
	"spawner.dev/sidecar/proxy"
	"spawner.dev/sidecar/server"
)

func main() {
	var c server.Config
	var wsIdle, drain, bodyIdle int
	fs := flag.NewFlagSet("spawner-sidecar", flag.ExitOnError)
	fs.IntVar(&c.ServePort, "serve-port", envInt("SIDECAR_SERVE_PORT", 9090), "public port, proxied to the app (env SIDECAR_SERVE_PORT)")
	fs.IntVar(&c.UpstreamPort, "upstream-port", envInt("SIDECAR_UPSTREAM_PORT", 8080), "the app's port on 127.0.0.1 (env SIDECAR_UPSTREAM_PORT)")
	fs.IntVar(&c.StatusPort, "status-port", envInt("SIDECAR_STATUS_PORT", 9091), "status port: /_events, /healthz, /metrics (env SIDECAR_STATUS_PORT)")
	fs.IntVar(&wsIdle, "ws-idle-seconds", envInt("SIDECAR_WS_IDLE_SECONDS", 0), "a WebSocket without data frames for this long stops counting as active; 0 = never (env SIDECAR_WS_IDLE_SECONDS)")
	countRequests := fs.Bool("count-requests", envString("SIDECAR_COUNT_REQUESTS", "true") == "true",
		"in-flight HTTP requests (SSE, long-poll) keep the backend alive for as long as they are open; false = only WebSockets do (env SIDECAR_COUNT_REQUESTS)")
	fs.IntVar(&drain, "drain-seconds", envInt("SIDECAR_DRAIN_SECONDS", 10), "after SIGTERM, keep proxying at most this long while the app finishes (env SIDECAR_DRAIN_SECONDS)")
	fs.StringVar(&c.StatusBlockFile, "status-block-file", os.Getenv("SIDECAR_STATUS_BLOCK_FILE"), "testing: while this file exists the status port is closed (env SIDECAR_STATUS_BLOCK_FILE)")
	fs.StringVar(&c.ProcNet, "proc-net", envString("SIDECAR_PROC_NET", "/proc/net"), "directory with the tcp and tcp6 socket tables (env SIDECAR_PROC_NET)")
	fs.StringVar(&c.Host, "listen-host", os.Getenv("SIDECAR_LISTEN_HOST"), "address to bind the public and status ports on; empty = all (env SIDECAR_LISTEN_HOST)")
	fs.IntVar(&bodyIdle, "body-idle-timeout-seconds", envInt("SIDECAR_BODY_IDLE_TIMEOUT_SECONDS", int(proxy.DefaultBodyIdleTimeout/time.Second)),
		"a request body that pauses this long is answered 408 (env SIDECAR_BODY_IDLE_TIMEOUT_SECONDS)")
	fs.Parse(os.Args[1:])
	if bodyIdle <= 0 {
		fmt.Fprintf(os.Stderr, "--body-idle-timeout-seconds must be at least 1, not %d\n", bodyIdle)
		os.Exit(2)
	}
	c.BodyIdleTimeout = time.Duration(bodyIdle) * time.Second
	// The router proof comes from the environment only, never a flag: the
	// controller sets it in the pod spec, and a flag would also show it in
	// the process list of every container sharing the pod's PID namespace.
	c.RouterProof = os.Getenv(wire.SidecarRouterProofEnv)
	if wsIdle < 0 {
		fmt.Fprintf(os.Stderr, "--ws-idle-seconds must not be negative, not %d\n", wsIdle)
		os.Exit(2)
	}
	c.WSIdle = time.Duration(wsIdle) * time.Second
	c.IgnoreRequests = !*countRequests
	c.Drain = time.Duration(drain) * time.Second

	// One P unless GOMAXPROCS says otherwise: the sidecar's work is system
	// calls on a few sockets, and with more Ps the runtime spends more CPU
	// handing goroutines between threads than it gains (about 10% more CPU
	// per proxied request with 2 Ps on 2 cores).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := server.Run(ctx, c); err != nil {
		log.Fatalf("sidecar: %v", err)
	}
}

func envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q is not a number\n", name, v)
		os.Exit(2)
	}
	return n
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
