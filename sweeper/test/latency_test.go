//go:build cluster

package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/routerproof"
	"spawner.dev/common/wire"
)

var listenAt = regexp.MustCompile(`listening .*\bat=(\S+)`)

// TestReadyLatency measures, over 30 spawns of each kind, two times to the
// slab being seen Ready through a watch:
//
//   - from the app listening (the demo logs the moment, RFC 3339 with
//     nanoseconds): end to end, including the sidecar's socket-table poll;
//   - from the sidecar's ready event, as heard on the test's own /_events
//     stream (the sidecar tells every subscriber at once, so the sweeper hears
//     it then too): what the sweeper adds (event handling, GET +
//     UpdateStatus) plus watch delivery. Asserted: p50 ≤ 100 ms.
//
// Kinds: listen-delayed (the app listens 6 s after it starts, so the streams
// are open before it listens: the fast path) and cold (the app listens at
// once, usually before the kubelet has reported the pod running, so the
// first figure includes pod start and status propagation).
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
		fromListen, fromFlip := e.spawnMany(mode.name, mode.delay, n, mode.parallel)
		line := mode.name + ": " + summary("app listen → Ready", fromListen) + "; " +
			summary("sidecar ready event → Ready", fromFlip) + fmt.Sprintf(" (flip seen in %d of %d)", len(fromFlip), n)
		t.Log(line)
		report.WriteString(line + "\n")
		if mode.limit > 0 {
			if len(fromFlip) < n/2 {
				t.Errorf("%s: the ready flip was seen in only %d of %d spawns", mode.name, len(fromFlip), n)
			} else {
				slices.Sort(fromFlip)
				if p99 := pct(fromFlip, 99); p99 > mode.limit {
					t.Errorf("%s: p99 sidecar ready → Ready %v, want ≤ %v", mode.name, p99, mode.limit)
				}
				if p50 := pct(fromFlip, 50); p50 > 100*time.Millisecond {
					t.Errorf("%s: p50 sidecar ready → Ready %v, want ≤ 100ms", mode.name, p50)
				}
			}
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

func summary(what string, lat []time.Duration) string {
	if len(lat) == 0 {
		return what + ": no samples"
	}
	slices.Sort(lat)
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("%s n=%d p50=%v p99=%v min=%v max=%v", what, len(lat), r(pct(lat, 50)), r(pct(lat, 99)), r(lat[0]), r(lat[len(lat)-1]))
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(min(i, len(sorted))-1, 0)]
}

// spawnMany creates n backends, parallel at a time, and returns for each the
// time from the app's listen to Ready seen on a watch.
func (e *env) spawnMany(prefix, delay string, n, parallel int) (fromListen, fromFlip []time.Duration) {
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
	for start := 0; start < n; start += parallel {
		var names []string
		flips := map[string]chan time.Time{}
		for i := start; i < min(start+parallel, n); i++ {
			name := fmt.Sprintf("%s-%d", prefix, i)
			names = append(names, name)
			e.newSlab(name, 600, corev1.EnvVar{Name: "DEMO_LISTEN_DELAY_MS", Value: delay})
			flips[name] = make(chan time.Time, 1)
			go e.watchFlip(ctx, name, flips[name])
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
			var flip time.Time
			select {
			case flip = <-flips[name]:
			case <-time.After(5 * time.Second):
			}
			mu.Lock()
			fromListen = append(fromListen, seen[name].Sub(listened))
			if !flip.IsZero() {
				fromFlip = append(fromFlip, seen[name].Sub(flip))
			}
			mu.Unlock()
			e.sp.SpawnerV1().SessionLivedBackends(e.ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	}
	return fromListen, fromFlip
}

// watchFlip holds the test's own /_events stream to the backend's sidecar and
// sends the moment it reports ready: true — the same moment the sweeper's
// stream hears it, since the sidecar tells every subscriber at once. It sends
// the zero time when its stream opened too late to see the flip.
func (e *env) watchFlip(ctx context.Context, name string, out chan<- time.Time) {
	var flip time.Time
	defer func() { out <- flip }()
	ip, proof := "", ""
	for ip == "" {
		if ctx.Err() != nil {
			return
		}
		if pod, err := e.kube.CoreV1().Pods(e.ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			ip, proof = pod.Status.PodIP, routerproof.FromPod(pod, spawnerv1.SidecarContainerName)
		}
		if ip == "" {
			time.Sleep(20 * time.Millisecond)
		}
	}
	var resp *http.Response
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+net.JoinHostPort(ip, strconv.Itoa(spawnerv1.SidecarStatusPort))+"/_events", nil)
		req.Header.Set(wire.HeaderRouterProof, proof)
		var err error
		if resp, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	first := true
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data:") {
			continue
		}
		now := time.Now()
		ready := strings.Contains(line, `"ready":true`)
		if ready && !first {
			flip = now
			return
		}
		if ready {
			return // already ready when the stream opened: no flip seen
		}
		first = false
	}
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
