//go:build cluster

package bench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/env"
	"spawner.dev/e2e/framework"
)

// slabWatch records, per slab in the backend namespace, when a watch first
// saw it Ready or Swept and why it failed.
type slabWatch struct {
	mu     sync.Mutex
	ready  map[string]time.Time
	swept  map[string]time.Time
	failed map[string]string
}

func watchSlabs(t *testing.T, e *framework.Env) *slabWatch {
	t.Helper()
	w := &slabWatch{ready: map[string]time.Time{}, swept: map[string]time.Time{}, failed: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			wi, err := e.Spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).Watch(ctx, metav1.ListOptions{})
			if err != nil {
				time.Sleep(time.Second)
				continue
			}
			for ev := range wi.ResultChan() {
				s, ok := ev.Object.(*spawnerv1.SessionLivedBackend)
				if !ok || ev.Type == watch.Deleted {
					continue
				}
				now := time.Now()
				w.mu.Lock()
				switch s.Status.Phase {
				case lifecycle.Ready:
					if _, seen := w.ready[s.Name]; !seen {
						w.ready[s.Name] = now
					}
				case lifecycle.Swept, lifecycle.Terminating:
					if _, seen := w.swept[s.Name]; !seen {
						w.swept[s.Name] = now
					}
				case lifecycle.Failed:
					for _, c := range s.Status.Conditions {
						if c.Type == lifecycle.ConditionFailed {
							w.failed[s.Name] = c.Reason + ": " + c.Message
						}
					}
				}
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// wait returns when name is Ready (ok) or Failed (the reason), or timeout.
func (w *slabWatch) wait(name string, timeout time.Duration) (readyAt time.Time, failure string) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		w.mu.Lock()
		r, ok := w.ready[name]
		f := w.failed[name]
		w.mu.Unlock()
		if ok {
			return r, ""
		}
		if f != "" {
			return time.Time{}, f
		}
	}
	return time.Time{}, "not Ready within " + timeout.String()
}

// cgroupCPU is a cgroup's CPU time so far (cgroup v1 cpuacct, nanoseconds).
func cgroupCPU(dir string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpuacct", dir, "cpuacct.usage"))
	if err != nil {
		return -1
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// cgroupRSS is a cgroup's resident anonymous memory (cgroup v1 memory.stat
// total_rss, bytes).
func cgroupRSS(dir string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", dir, "memory.stat"))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "total_rss "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// procCPU sums utime+stime (ticks) of the processes whose command's base
// name is one of names.
func procCPU(names ...string) (ticks int64, procs int) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmd, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(cmd) == 0 {
			continue
		}
		arg0 := filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0])
		match := false
		for _, n := range names {
			match = match || arg0 == n
		}
		if !match {
			continue
		}
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
		procs++
	}
	return ticks, procs
}

// nodeBusy is the CPU time all CPUs spent not idle (/proc/stat, ticks).
func nodeBusy() int64 {
	b, _ := os.ReadFile("/proc/stat")
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
	var busy int64
	for i, v := range f {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy
}

// podCgroups names the cgroups of one backend pod: the pod's, its app's, its
// sidecar's and the rest (the pause container).
type podCgroups struct{ pod, app, sidecar, pause string }

func cgroupsOf(t *testing.T, pod *corev1.Pod) (podCgroups, bool) {
	qos := map[corev1.PodQOSClass]string{corev1.PodQOSBurstable: "kubepods/burstable", corev1.PodQOSBestEffort: "kubepods/besteffort", corev1.PodQOSGuaranteed: "kubepods"}[pod.Status.QOSClass]
	c := podCgroups{pod: filepath.Join(qos, "pod"+string(pod.UID))}
	ids := map[string]bool{}
	for _, cs := range pod.Status.ContainerStatuses {
		_, id, _ := strings.Cut(cs.ContainerID, "://")
		ids[id] = true
		if cs.Name == spawnerv1.SidecarContainerName {
			c.sidecar = filepath.Join(c.pod, id)
		} else {
			c.app = filepath.Join(c.pod, id)
		}
	}
	entries, err := os.ReadDir(filepath.Join("/sys/fs/cgroup/cpuacct", c.pod))
	if err != nil {
		return c, false
	}
	for _, en := range entries {
		if en.IsDir() && !ids[en.Name()] {
			c.pause = filepath.Join(c.pod, en.Name())
		}
	}
	return c, c.app != "" && c.sidecar != "" && c.pause != ""
}

// TestDensity fills the node: backends of the demo app are spawned 20 at a
// time until one fails or the cap is reached, each kept in use by a
// WebSocket through the router opened once it is Ready (a session open in a
// background tab); then, with all of them live and idle, it measures what
// each costs at rest (app, sidecar, pause container and runc shim from
// cgroups and /proc; the kubelet's and containerd's CPU divided by the
// backends), closes every WebSocket at once and measures how late past its
// grace each backend is swept, counting missed and early sweeps. `make bench-density` runs it on the local cluster
// (it reads the node's cgroup v1 hierarchy, so it must run on the node).
func TestDensity(t *testing.T) {
	if os.Getenv("SPAWNER_BENCH_DENSITY") == "" {
		t.Skip("make bench-density runs this")
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpuacct/kubepods"); err != nil {
		t.Skip("no cgroup v1 kubepods hierarchy here: run it on the local cluster's node")
	}
	e := framework.Deployed(t)
	capN := env.Int("SPAWNER_BENCH_DENSITY_CAP", 200)
	width := env.Int("SPAWNER_BENCH_DENSITY_WIDTH", 20)
	window := time.Duration(env.Int("SPAWNER_BENCH_DENSITY_WINDOW", 60)) * time.Second
	settle := time.Duration(env.Int("SPAWNER_BENCH_DENSITY_SETTLE", 30)) * time.Second
	grace := time.Duration(env.Int("SPAWNER_BENCH_DENSITY_GRACE", 30)) * time.Second
	sw := watchSlabs(t, e)
	loadStart := loadAverage()
	conns := map[string]*websocket.Conn{}
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}

	// The ramp: width spawns in flight, each until Ready or Failed.
	var (
		mu       sync.Mutex
		ready    []string
		spawnDur sample
		failures []string
		stop     bool
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, width)
	rampStart := time.Now()
	for i := 0; i < capN; i++ {
		sem <- struct{}{}
		mu.Lock()
		done := stop
		mu.Unlock()
		if done {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			b := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(int64(grace / time.Second))})
			at, failure := sw.wait(b.Name, 6*time.Minute)
			var conn *websocket.Conn
			if failure == "" {
				u, _ := url.Parse(b.URL)
				u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
				u.Path = strings.TrimSuffix(u.Path, "/") + "/ws"
				var err error
				if conn, _, err = dialer.Dial(u.String(), nil); err != nil {
					failure = "WebSocket through the router: " + err.Error()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if failure != "" {
				failures = append(failures, b.Name+": "+failure)
				stop = true
				return
			}
			ready = append(ready, b.Name)
			conns[b.Name] = conn
			spawnDur = append(spawnDur, at.Sub(start))
		}()
	}
	wg.Wait()
	rampTime := time.Since(rampStart)
	n := len(ready)
	t.Logf("%d Ready in %v; failures: %v", n, rampTime, failures)
	if n == 0 {
		t.Fatal("no backend became Ready")
	}

	// At rest: per-container CPU from the pods' cgroups over the window.
	time.Sleep(settle)
	var pods []podCgroups
	for _, name := range ready {
		p, err := e.Kube.CoreV1().Pods(framework.BackendNamespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c, ok := cgroupsOf(t, p); ok {
			pods = append(pods, c)
		}
	}
	if len(pods) == 0 {
		t.Fatal("no backend pod's cgroups found under /sys/fs/cgroup/cpuacct")
	}
	// spawner's own pods, per component (the name up to its hash suffix).
	system := map[string][]string{}
	if sp, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(context.Background(), metav1.ListOptions{}); err == nil {
		for i := range sp.Items {
			p := &sp.Items[i]
			comp := p.Labels[framework.ComponentLabel]
			if comp == "" {
				comp = p.Name
			}
			if c, ok := cgroupsOf(t, p); ok || c.pod != "" {
				system[comp] = append(system[comp], c.pod)
			}
		}
	}
	readSystem := func() map[string]int64 {
		m := map[string]int64{}
		for comp, dirs := range system {
			for _, d := range dirs {
				m[comp] += cgroupCPU(d)
			}
		}
		return m
	}
	read := func() (app, side, pause, pod int64) {
		for _, c := range pods {
			app += cgroupCPU(c.app)
			side += cgroupCPU(c.sidecar)
			pause += cgroupCPU(c.pause)
			pod += cgroupCPU(c.pod)
		}
		return
	}
	sys0 := readSystem()
	a0, s0, p0, pod0 := read()
	k0, _ := procCPU("kubelet")
	c0, _ := procCPU("containerd")
	sh0, shims := procCPU("containerd-shim-runc-v2")
	b0 := nodeBusy()
	time.Sleep(window)
	a1, s1, p1, pod1 := read()
	sys1 := readSystem()
	k1, _ := procCPU("kubelet")
	c1, _ := procCPU("containerd")
	sh1, _ := procCPU("containerd-shim-runc-v2")
	b1 := nodeBusy()
	var appRSS, sideRSS, pauseRSS int64
	for _, c := range pods {
		appRSS += cgroupRSS(c.app)
		sideRSS += cgroupRSS(c.sidecar)
		pauseRSS += cgroupRSS(c.pause)
	}
	m := float64(len(pods))
	sec := window.Seconds()
	pctNs := func(d int64, per float64) string { return fmt.Sprintf("%.4f%%", float64(d)/1e9/sec/per*100) }
	pctTicks := func(d int64, per float64) string { return fmt.Sprintf("%.4f%%", float64(d)/100/sec/per*100) }
	mib := func(b int64) string { return fmt.Sprintf("%.2f MiB", float64(b)/m/(1<<20)) }

	// Every WebSocket closed at once (close handshake); each backend is due
	// grace later.
	early := 0
	sw.mu.Lock()
	for name := range conns {
		if _, ok := sw.swept[name]; ok {
			early++ // swept while its WebSocket was open: a false sweep
		}
	}
	sw.mu.Unlock()
	// As a browser closing a tab's socket does: a close frame, then wait
	// (at most 2 s) for the app's close reply before the TCP close; all
	// at once.
	closed := map[string]time.Time{}
	var closeWG sync.WaitGroup
	for name, c := range conns {
		closed[name] = time.Now()
		closeWG.Add(1)
		go func() {
			defer closeWG.Done()
			c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					break
				}
			}
			c.Close()
		}()
	}
	closeWG.Wait()
	var delays sample
	missed := 0
	deadline := time.Now().Add(grace + time.Minute)
	for name, at := range closed {
		var swept time.Time
		for swept.IsZero() && time.Now().Before(deadline) {
			sw.mu.Lock()
			swept = sw.swept[name]
			sw.mu.Unlock()
			if swept.IsZero() {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if swept.IsZero() {
			missed++
			continue
		}
		delays = append(delays, swept.Sub(at)-grace)
	}
	within := 0
	for _, d := range delays {
		if d >= -time.Second && d <= time.Second {
			within++
		}
	}

	var r strings.Builder
	fmt.Fprintf(&r, "# Density\n\nWritten by `make bench-density DENSITY_CAP=%d` (e2e/bench, TestDensity) on %s against the spawner deployed by scripts/deploy.sh, "+
		"on the local cluster's single node; load average %s at the start, %s at the end. How to use these figures: docs/sizing.md.\n\n",
		capN, time.Now().UTC().Format("2006-01-02 15:04 MST"), loadStart, loadAverage())
	fmt.Fprintf(&r, "Spawned %d wide until the first failure or the cap of %d: **%d Ready** in %s (%.1f spawns/s); first failure: %s. Spawn → Ready under the ramp: p50 %s, p99 %s, max %s.\n\n",
		width, capN, n, rampTime.Round(time.Second), float64(n)/rampTime.Seconds(), firstOr(failures, "none"), ms(spawnDur.pct(0.5)), ms(spawnDur.pct(0.99)), ms(spawnDur.pct(1)))
	fmt.Fprintf(&r, "At rest, all %d with one idle WebSocket open through the router (no message since), %s after the ramp, over %s; CPU as %% of one core per backend:\n\n", len(pods), settle, window)
	fmt.Fprintf(&r, "| per backend | CPU | memory (cgroup total_rss) |\n| --- | --- | --- |\n")
	fmt.Fprintf(&r, "| app (demo, the raw Pod's part) | %s | %s |\n", pctNs(a1-a0, m), mib(appRSS))
	fmt.Fprintf(&r, "| spawner-sidecar | %s | %s |\n", pctNs(s1-s0, m), mib(sideRSS))
	fmt.Fprintf(&r, "| pause container | %s | %s |\n", pctNs(p1-p0, m), mib(pauseRSS))
	fmt.Fprintf(&r, "| whole pod cgroup | %s | |\n", pctNs(pod1-pod0, m))
	fmt.Fprintf(&r, "| runc shims (%d processes on the node) | %s | |\n", shims, pctTicks(sh1-sh0, m))
	fmt.Fprintf(&r, "| kubelet, its CPU / %d | %s | |\n", len(pods), pctTicks(k1-k0, m))
	fmt.Fprintf(&r, "| containerd, its CPU / %d | %s | |\n", len(pods), pctTicks(c1-c0, m))
	for comp := range system {
		fmt.Fprintf(&r, "| %s (%d pods), its CPU / %d | %s | |\n", comp, len(system[comp]), len(pods), pctNs(sys1[comp]-sys0[comp], m))
	}
	fmt.Fprintf(&r, "| the node's busy CPU / %d (everything: control plane, spawner, other users) | %s | |\n\n", len(pods), pctTicks(b1-b0, m))
	fmt.Fprintf(&r, "All %d WebSockets then closed at once: swept past the %s grace p50 %s, p99 %s, max %s; %d of %d within 1 s of grace, %d missed (not swept within grace + 1 min), %d swept while still in use.\n",
		len(closed), grace, msOr(delays, 0.5), msOr(delays, 0.99), msOr(delays, 1), within, len(closed), missed, early)
	fmt.Println(r.String())
	if out := os.Getenv("SPAWNER_BENCH_DENSITY_REPORT"); out != "" {
		if err := os.WriteFile(out, []byte(r.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// loadAverage is the 1-minute load average (/proc/loadavg).
func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func msOr(s sample, p float64) string {
	if len(s) == 0 {
		return "–"
	}
	return ms(s.pct(p))
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}
