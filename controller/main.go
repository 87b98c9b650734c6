// Command spawner-controller turns SessionLivedBackends into backend pods and
// keeps their status true. All behaviour lives in spawner.dev/controller/reconciler;
// this file only parses flags and handles signals.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"spawner.dev/controller/reconciler"
)

func main() {
	var cfg reconciler.Config
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(fs)
	cfg.AddFlags(fs)
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := reconciler.Run(ctx, cfg); err != nil {
		klog.ErrorS(err, "spawner-controller stopped")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
