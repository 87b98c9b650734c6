package sweeper

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/generated/clientset/versioned/fake"
)

// Environment of TestIdleFollower.
const (
	followIPsEnv  = "SWEEPER_IDLE_FOLLOW_IPS"  // comma-separated sidecar addresses (pod IPs)
	followPortEnv = "SWEEPER_IDLE_FOLLOW_PORT" // their status port
)

// TestIdleFollower is not a test: it is the sweeper half of the idle-cost
// benchmark (sidecar/bench/idle). Given real sidecars' addresses it follows
// each with the sweeper's own per-backend machinery (stream reader, decoder,
// deadline timer, the Ready fast path against a fake API), prints
// "following N" once all are Ready, and keeps following until its stdin
// closes, so that the benchmark can read its CPU time per followed backend
// from the kernel. Plain `go test` skips it.
func TestIdleFollower(t *testing.T) {
	ips := os.Getenv(followIPsEnv)
	if ips == "" {
		t.Skip(followIPsEnv + " not set: only the idle benchmark runs this")
	}
	port, err := strconv.Atoi(os.Getenv(followPortEnv))
	if err != nil {
		t.Fatalf("%s: %v", followPortEnv, err)
	}
	addrs := strings.Split(ips, ",")
	client := fake.NewSimpleClientset()
	for i := range addrs {
		s := &spawnerv1.SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("b%d", i), Namespace: "ns", Generation: 1}}
		for _, c := range []string{lifecycle.ConditionPodCreated, lifecycle.ConditionScheduled, lifecycle.ConditionRunning} {
			lifecycle.Record(&s.Status, c, c, "", 1)
		}
		client.Tracker().Add(s)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := New(Config{NodeName: "n", StatusPort: port}, client, nil, log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx = ctx
	defer func() { cancel(); s.stopAll() }()
	for i, ip := range addrs {
		p := testPod(port)
		p.Name, p.UID = fmt.Sprintf("b%d", i), "u"
		p.Labels[spawnerv1.LabelBackend] = p.Name
		// An hour's grace: nothing is swept while the benchmark measures.
		p.Annotations[spawnerv1.AnnotationGracePeriodSeconds] = "3600"
		p.Status.PodIP = ip
		s.syncPod(p)
	}
	for deadline := time.Now().Add(time.Minute); s.m.readies.Value() < uint64(len(addrs)); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %v of %d backends Ready after a minute", s.m.readies.Value(), len(addrs))
		}
	}
	fmt.Printf("following %d\n", len(addrs))
	io.Copy(io.Discard, os.Stdin)
}
