// Command demo is spawner's demo backend: a chat room where every WebSocket
// message is sent to everybody in the room. It is what `make up` spawns and
// what the end-to-end tests talk to.
//
// Environment: PORT (set by spawner), DEMO_LISTEN_DELAY_MS (wait before
// listening, to stand for a slow start), DEMO_EXIT_AFTER_SECONDS and
// DEMO_EXIT_CODE (exit on purpose, to stand for a crash), DEMO_CLAIM_HOOK
// (fail: the claim hook answers 500; hang: it never answers; to stand for a
// broken app in a BackendPool).
//
// `spawner-demo probe URL...` is a second mode for tests: it GETs each URL,
// prints the outcomes and exits (see package probe).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"spawner.dev/e2e/demo/chat"
	"spawner.dev/e2e/demo/probe"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		if err := probe.Run(os.Stdout, os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	port := envInt("PORT", 8080)
	listenDelay := time.Duration(envInt("DEMO_LISTEN_DELAY_MS", 0)) * time.Millisecond
	exitAfter := envInt("DEMO_EXIT_AFTER_SECONDS", -1)
	exitCode := envInt("DEMO_EXIT_CODE", 1)

	if exitAfter >= 0 {
		time.AfterFunc(time.Duration(exitAfter)*time.Second, func() {
			slog.Info("exiting on purpose", "code", exitCode)
			os.Exit(exitCode)
		})
	}
	time.Sleep(listenDelay)
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	slog.Info("listening", "port", port, "at", time.Now().UTC().Format(time.RFC3339Nano))

	room := chat.NewRoom()
	room.SetClaimHook(os.Getenv("DEMO_CLAIM_HOOK"))
	server := &http.Server{Handler: room.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		slog.Info("SIGTERM: closing the room")
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		server.Shutdown(shutdown)
	}()
	if err := server.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

func envInt(name string, fallback int) int {
	v, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return fallback
	}
	return v
}
