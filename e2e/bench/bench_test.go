//go:build cluster

// Package bench measures spawner's spawn latency against its floor — a raw
// Pod of the same image on the same cluster, measured side by side in the
// same run — and how long past its grace period an idle backend is swept.
//
// It talks to a deployed spawner (scripts/deploy.sh) through the control API
// and prints a Markdown report. `make bench-e2e` runs it and writes
// docs/benchmarks.md; it is not part of `make test` (it takes minutes).
package bench

import (
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"spawner.dev/common/clustertest"
	"spawner.dev/common/env"
	"spawner.dev/e2e/framework"
)

type sample []time.Duration

func (s sample) pct(p float64) time.Duration {
	sorted := append(sample(nil), s...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return sorted[int(float64(len(sorted)-1)*p+0.5)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

// medianOf is "–" for a milestone that never applies (a raw Pod has no slab).
func medianOf(s sample) string {
	if len(s) == 0 {
		return "–"
	}
	return ms(s.pct(0.5))
}

func ratio(a, b time.Duration) string { return fmt.Sprintf("%.2f×", float64(a)/float64(b)) }

// rawPodReady creates a bare Pod of the demo image — what a user would run
// without spawner — and returns how long until a watch sees it Ready, with
// its name and the moment it was created. withToken false gives it the
// setting spawner gives backend pods by default: no service account token.
func rawPodReady(t *testing.T, e *framework.Env, tl *timeline, ns string, withToken bool) (time.Duration, string, time.Time) {
	t.Helper()
	ctx := context.Background()
	name := "raw-" + rand.String(8)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: &withToken,
			RestartPolicy:                corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "app", Image: framework.DemoImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Env: []corev1.EnvVar{{Name: "PORT", Value: "8080"}},
			}},
		},
	}
	start := time.Now()
	if _, err := e.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	elapsed := tl.waitFor(t, name, podReady, 5*time.Minute).Sub(start)
	zero := int64(0)
	e.Kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	return elapsed, name, start
}

// spawnReady spawns a demo backend and returns how long from POST /spawn
// until the status stream reports it Ready, with its name and the moment the
// POST was sent.
func spawnReady(t *testing.T, e *framework.Env) (time.Duration, string, time.Time) {
	t.Helper()
	start := time.Now()
	backend := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(1)})
	e.WaitForState(t, backend.Name, "Ready", 5*time.Minute)
	elapsed := time.Since(start)
	e.Do(t, "POST", "/backend/"+backend.Name+"/terminate", map[string]bool{"hard": true}, nil)
	return elapsed, backend.Name, start
}

func TestSpawnLatencyAgainstRawPods(t *testing.T) {
	e := framework.Deployed(t)
	ns := clustertest.Namespace(t, clustertest.Config(t))
	n := env.Int("SPAWNER_BENCH_SEQUENTIAL", 50)
	burst := env.Int("SPAWNER_BENCH_BURST", 100)
	var report strings.Builder
	fmt.Fprintf(&report, "# Spawn benchmarks\n\nWritten by `make bench-e2e` (e2e/bench) on %s against the spawner deployed by scripts/deploy.sh. "+
		"Every spawner figure is measured side by side with raw Pods of the same image (localhost/spawner-demo:dev) on the same cluster in the same run; "+
		"the ratio is what spawner adds on top of Kubernetes. Component figures: docs/sidecar.md, docs/sweeper.md, docs/controller.md, docs/local-cluster.md; backends per node and their cost at rest: docs/density.md (`make bench-density`).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"))

	tl := watchTimeline(t, e, ns, framework.BackendNamespace)

	// Sequential: interleave raw and spawned so all see the same machine.
	var raw, rawNoToken, spawned sample
	rawHops, spawnHops := map[string]sample{}, map[string]sample{}
	for i := range n {
		unlockFromRelist()
		r, rawName, rawStart := rawPodReady(t, e, tl, ns, true)
		raw = append(raw, r)
		unlockFromRelist()
		r2, _, _ := rawPodReady(t, e, tl, ns, false)
		rawNoToken = append(rawNoToken, r2)
		unlockFromRelist()
		d, name, start := spawnReady(t, e)
		spawned = append(spawned, d)
		for m, at := range tl.since(rawName, rawStart) {
			rawHops[m] = append(rawHops[m], at)
		}
		for m, at := range tl.since(name, start) {
			spawnHops[m] = append(spawnHops[m], at)
		}
		t.Logf("%d/%d raw %v, raw without token %v, spawn %v: %v", i+1, n, r, r2, d, tl.since(name, start))
	}
	fmt.Fprintf(&report, "### Cold spawn latency, %d sequential (POST /spawn → Ready vs raw Pod create → Ready)\n\n", n)
	fmt.Fprintf(&report, "Each create waits a random 0–1 s first, so that pods start at every phase of the kubelet's 1 s relist "+
		"(right after a Ready they would all start at the same phase of it). ")
	fmt.Fprintf(&report, "The raw Pod is a default Pod of the demo image. Spawner's backend pods carry no service account token "+
		"unless the template asks for one, so the second floor is a raw Pod with `automountServiceAccountToken: false`: "+
		"the same pod minus spawner's sidecar.\n\n")
	fmt.Fprintf(&report, "| | raw Pod | raw Pod, no token | spawner | ratio to raw Pod | ratio to raw Pod, no token |\n|---|---|---|---|---|---|\n")
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 0.50}, {"p95", 0.95}, {"p99", 0.99}} {
		fmt.Fprintf(&report, "| %s | %s | %s | %s | %s | %s |\n", p.name, ms(raw.pct(p.q)), ms(rawNoToken.pct(p.q)), ms(spawned.pct(p.q)),
			ratio(spawned.pct(p.q), raw.pct(p.q)), ratio(spawned.pct(p.q), rawNoToken.pct(p.q)))
	}

	fmt.Fprintf(&report, "\nWhere the time goes: the median moment a watch on this machine first saw each milestone, "+
		"counted from the raw Pod's create call and from the POST /spawn.\n\n| milestone | raw Pod | spawner |\n|---|---|---|\n")
	for _, m := range []string{slabSeen, podSeen, podScheduled, podHasIP, podRunning, podReady, slabReady} {
		fmt.Fprintf(&report, "| %s | %s | %s |\n", m, medianOf(rawHops[m]), medianOf(spawnHops[m]))
	}
	fmt.Fprintf(&report, "| client sees Ready | %s | %s |\n", ms(raw.pct(0.5)), ms(spawned.pct(0.5)))
	fmt.Fprintf(&report, "\nReading it: the api-server creating the slab and the controller creating its pod cost the difference in "+
		"\"pod scheduled\". Everything from there to \"containers running\" is the kubelet's: it starts the containers one after "+
		"the other (spawner's pod has a second one, the sidecar, about 0.2 s of containerd and runc on this machine when idle, more "+
		"when busy) and notices them running on a 1 s relist, which is most of the spread in both columns. From \"pod Ready\" to "+
		"\"slab Ready\" is the sweeper: it connects to the sidecar's status port once the pod status says the sidecar runs and "+
		"records Ready on the first event that says the app listens. A default Pod also waits for its service account token "+
		"volume to be mounted; spawner's backend pods have none unless the template asks.\n")

	// Burst: everything at once, time until the last one is Ready.
	// Each burst starts on an empty node: pods still terminating from the
	// previous phase would take the kubelet's time from the next one.
	waitNoPods(t, e, ns, framework.BackendNamespace)
	rawAll := timeAll(t, burst, func() { rawPodReady(t, e, tl, ns, true) })
	waitNoPods(t, e, ns, framework.BackendNamespace)
	spawnAll := timeAll(t, burst, func() { spawnReady(t, e) })
	waitNoPods(t, e, ns, framework.BackendNamespace)
	fmt.Fprintf(&report, "\n### Burst: %d at once, until all are Ready\n\n| raw Pods | spawner | ratio |\n|---|---|---|\n| %s | %s | %s |\n",
		burst, ms(rawAll), ms(spawnAll), ratio(spawnAll, rawAll))
	fmt.Fprintf(&report, "\nReading it: a burst keeps the node's CPUs busy starting containers, so it compares the work per pod "+
		"rather than waits. A raw Pod is two runc containers (the sandbox and the app); a backend is three (the sidecar too), "+
		"and each backend also costs several API writes (the slab, its status at each phase, the pod) and a status stream. "+
		"Each Ready pod is deleted at once in both phases, so the teardown of early pods overlaps the start of later ones.\n")

	// Idle → swept: the delay past the grace period, seen from the outside.
	var delays sample
	const grace = 3
	for range env.Int("SPAWNER_BENCH_SWEEPS", 5) {
		backend := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(grace)})
		e.WaitForState(t, backend.Name, "Ready", 120*time.Second)
		resp, err := http.Get(backend.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		lastActive := time.Now()
		e.WaitForState(t, backend.Name, "Swept", 60*time.Second)
		delays = append(delays, time.Since(lastActive)-grace*time.Second)
	}
	fmt.Fprintf(&report, "\n### Idle → swept, beyond a %d s grace period (%d backends)\n\n| p50 | max |\n|---|---|\n| %s | %s |\n",
		grace, len(delays), ms(delays.pct(0.5)), ms(delays.pct(1)))

	fmt.Println(report.String())
	if out := os.Getenv("SPAWNER_BENCH_REPORT"); out != "" {
		if err := writeReport(out, report.String()); err != nil {
			t.Fatal(err)
		}
	}
}

// historyMarker starts the hand-kept part of docs/benchmarks.md (earlier runs
// of the component benchmarks); writeReport keeps it.
const historyMarker = "<!-- history: everything below is kept by make bench-e2e -->"

// writeReport writes report to out in place of the part before historyMarker.
func writeReport(out, report string) error {
	old, err := os.ReadFile(out)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	if i := strings.Index(string(old), historyMarker); i >= 0 {
		report += "\n" + string(old[i:])
	}
	return os.WriteFile(out, []byte(report), 0o644)
}

// unlockFromRelist waits a random 0–1 s. The kubelet notices started
// containers on a 1 s relist, so a pod's Ready lands on one of its ticks;
// creating the next pod right after a Ready would start every pod at the same
// phase of that tick, and a pod a little slower to start (spawner's has a
// second container) would then always wait for the next tick, a whole second,
// instead of half of one on average. A random start samples all phases, as
// spawns arriving from users do.
func unlockFromRelist() {
	time.Sleep(time.Duration(mathrand.Int64N(int64(time.Second))))
}

// started is when this benchmark process started: a pod created before it
// is not the benchmark's (make up's demo room, claimed from the demo pool
// with a 600 s grace, is still live for ten minutes after make up).
var started = time.Now().Truncate(time.Second)

// notOurs reports whether pod p is no concern of a benchmark waiting for
// a quiet node: a warm pod of a pool other than the benchmark's (such as the
// demo pool make up creates: a few pods at rest, which cost next to
// nothing, docs/pools.md), or a pod that was there before the benchmark
// began. Both cost what they cost at every measurement alike.
func notOurs(p *corev1.Pod) bool {
	if p.CreationTimestamp.Time.Before(started) {
		return true
	}
	ref := metav1.GetControllerOf(p)
	return ref != nil && ref.Kind == "BackendPool" && !strings.HasPrefix(ref.Name, benchPoolPrefix)
}

// waitNoPods waits until the namespaces hold no pods but those notOurs.
func waitNoPods(t *testing.T, e *framework.Env, namespaces ...string) {
	t.Helper()
	for _, ns := range namespaces {
		clustertest.Eventually(t, 5*time.Minute, "no pods left in "+ns, func() (bool, error) {
			pods, err := e.Kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			left := 0
			for i := range pods.Items {
				if !notOurs(&pods.Items[i]) {
					left++
				}
			}
			return left == 0, fmt.Errorf("%d pods left", left)
		})
	}
}

// timeAll runs n copies of f at once and returns how long until all ended.
// A copy that fails the test (t.Fatal ends only its own goroutine) stops the
// test once all have ended.
func timeAll(t *testing.T, n int, f func()) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return time.Since(start)
}
