//go:build cluster

package test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

var listenAt = regexp.MustCompile(`listening .*\bat=(\S+)`)

// TestReadyLatency measures the time from the app listening (the demo logs
// the moment, RFC 3339 with nanoseconds) to the slab being seen Ready through
// a watch, over 30 spawns of each kind:
//
//   - listen-delayed: the app listens 6 s after it starts, so the sweeper's
//     stream is already open and the figure is the fast path itself (sidecar
//     socket-table poll, event, GET + UpdateStatus, watch delivery); spawns
//     whose pod was not yet reported running when the app listened (a very
//     loaded node) are counted but reported;
//   - cold: the app listens at once, usually before the kubelet has even
//     reported the pod running, so the figure includes pod status propagation.
//
// Figures go to the log and, with SWEEPER_FIGURES=<file>, to that file.
func TestReadyLatency(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startSweeper()
	const n = 30
	// The fast path's p50 must be under 100 ms. Its p99 is bounded by the API
	// server's worst round trips on a shared, loaded machine (hundreds of ms
	// seen at load average 30), so its bound is looser and settable with
	// SWEEPER_READY_P99_MAX (a Go duration).
	limit := time.Second
	if v := os.Getenv("SWEEPER_READY_P99_MAX"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SWEEPER_READY_P99_MAX: %v", err)
		}
		limit = d
	}
	var report strings.Builder
	for _, mode := range []struct {
		name     string
		delay    string
		parallel int
		limit    time.Duration // p99 bound asserted
	}{
		{"listen-delayed", "6000", 5, limit},
		{"cold", "0", 10, 0},
	} {
		lat := e.spawnMany(mode.name, mode.delay, n, mode.parallel)
		slices.Sort(lat)
		p50, p99 := pct(lat, 50), pct(lat, 99)
		line := fmt.Sprintf("%-15s n=%d  p50=%v  p99=%v  min=%v  max=%v", mode.name, len(lat),
			p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond),
			lat[0].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
		t.Log(line)
		report.WriteString(line + "\n")
		if mode.limit > 0 && p99 > mode.limit {
			t.Errorf("%s: p99 listen→Ready %v, want ≤ %v", mode.name, p99, mode.limit)
		}
		if mode.limit > 0 && p50 > 100*time.Millisecond {
			t.Errorf("%s: p50 listen→Ready %v, want ≤ 100ms", mode.name, p50)
		}
	}
	count, sum := e.metric("spawner_sweeper_ready_latency_seconds_count"), e.metric("spawner_sweeper_ready_latency_seconds_sum")
	line := fmt.Sprintf("sweeper's own share (ready event received → status written): mean %v over %v writes",
		time.Duration(sum/count*float64(time.Second)).Round(10*time.Microsecond), count)
	t.Log(line)
	report.WriteString(line + "\n")
	if path := os.Getenv("SWEEPER_FIGURES"); path != "" {
		os.WriteFile(path, []byte(report.String()), 0o644)
	}
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(min(i, len(sorted))-1, 0)]
}

// spawnMany creates n backends, parallel at a time, and returns for each the
// time from the app's listen to Ready seen on a watch.
func (e *env) spawnMany(prefix, delay string, n, parallel int) []time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	seen := map[string]time.Time{}
	wake := make(chan struct{}, 1)
	w, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer w.Stop()
	go func() {
		for ev := range w.ResultChan() {
			now := time.Now()
			s, ok := ev.Object.(*spawnerv1.SessionLivedBackend)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			mu.Lock()
			if _, done := seen[s.Name]; !done && s.Status.Phase == lifecycle.Ready {
				seen[s.Name] = now
				select {
				case wake <- struct{}{}:
				default:
				}
			}
			mu.Unlock()
		}
	}()
	var lat []time.Duration
	for start := 0; start < n; start += parallel {
		var names []string
		for i := start; i < min(start+parallel, n); i++ {
			name := fmt.Sprintf("%s-%d", prefix, i)
			names = append(names, name)
			e.newSlab(name, 600, corev1.EnvVar{Name: "DEMO_LISTEN_DELAY_MS", Value: delay})
		}
		deadline := time.After(2 * time.Minute)
		for {
			mu.Lock()
			done := 0
			for _, name := range names {
				if _, ok := seen[name]; ok {
					done++
				}
			}
			mu.Unlock()
			if done == len(names) {
				break
			}
			select {
			case <-wake:
			case <-deadline:
				e.t.Fatalf("%d of %d backends not Ready within 2 min", len(names)-done, len(names))
			}
		}
		for _, name := range names {
			listened := e.listenTime(name)
			mu.Lock()
			lat = append(lat, seen[name].Sub(listened))
			mu.Unlock()
			e.sp.SpawnerV1().SessionLivedBackends(e.ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	}
	return lat
}

// listenTime reads when the demo app listened from its log.
func (e *env) listenTime(name string) time.Time {
	e.t.Helper()
	var when time.Time
	deadline := time.Now().Add(10 * time.Second)
	for {
		raw, err := e.kube.CoreV1().Pods(e.ns).GetLogs(name, &corev1.PodLogOptions{Container: "app"}).DoRaw(context.Background())
		if err == nil {
			if m := listenAt.FindSubmatch(raw); m != nil {
				when, err = time.Parse(time.RFC3339Nano, string(m[1]))
				if err == nil {
					return when
				}
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no listen time in the log of %s: %v\n%s", name, err, raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
