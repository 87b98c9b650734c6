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
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"

	"spawner.dev/common/clustertest"
	"spawner.dev/e2e/framework"
)

func envInt(name string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return fallback
}

type sample []time.Duration

func (s sample) pct(p float64) time.Duration {
	sorted := append(sample(nil), s...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return sorted[int(float64(len(sorted)-1)*p+0.5)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func ratio(a, b time.Duration) string { return fmt.Sprintf("%.2f×", float64(a)/float64(b)) }

// rawPodReady creates a bare Pod of the demo image — what a user would run
// without spawner — and returns how long until the API reports it Ready.
func rawPodReady(t *testing.T, e *framework.Env, ns string) time.Duration {
	t.Helper()
	ctx := context.Background()
	name := "raw-" + rand.String(8)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
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
	clustertest.Eventually(t, 5*time.Minute, "raw pod "+name+" Ready", func() (bool, error) {
		p, err := e.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	elapsed := time.Since(start)
	zero := int64(0)
	e.Kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	return elapsed
}

// spawnReady spawns a demo backend and returns how long from POST /spawn
// until the status stream reports it Ready.
func spawnReady(t *testing.T, e *framework.Env) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	backend := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(1)})
	e.WaitForState(t, backend.Name, "Ready", 5*time.Minute)
	elapsed := time.Since(start)
	e.Do(t, "POST", "/backend/"+backend.Name+"/terminate", map[string]bool{"hard": true}, nil)
	return elapsed, backend.Name
}

func TestSpawnLatencyAgainstRawPods(t *testing.T) {
	e := framework.Deployed(t)
	ns := clustertest.Namespace(t, clustertest.Config(t))
	n := envInt("SPAWNER_BENCH_SEQUENTIAL", 50)
	// A single node runs at most 110 pods (the kubelet's maxPods), spawner's
	// own and the previous burst's terminating pods included: 50 at once fits.
	burst := envInt("SPAWNER_BENCH_BURST", 50)
	var report strings.Builder
	fmt.Fprintf(&report, "# Spawn benchmarks\n\nWritten by `make bench-e2e` (e2e/bench) on %s against the spawner deployed by scripts/deploy.sh. "+
		"Every spawner figure is measured side by side with raw Pods of the same image (localhost/spawner-demo:dev) on the same cluster in the same run; "+
		"the ratio is what spawner adds on top of Kubernetes. Component figures: docs/sidecar.md, docs/sweeper.md, docs/controller.md, docs/local-cluster.md.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"))

	// Sequential: interleave raw and spawned so both see the same machine.
	var raw, spawned sample
	for i := range n {
		raw = append(raw, rawPodReady(t, e, ns))
		d, _ := spawnReady(t, e)
		spawned = append(spawned, d)
		t.Logf("%d/%d raw %v spawn %v", i+1, n, raw[i], d)
	}
	fmt.Fprintf(&report, "### Cold spawn latency, %d sequential (POST /spawn → Ready vs raw Pod create → Ready)\n\n", n)
	fmt.Fprintf(&report, "| | raw Pod | spawner | ratio |\n|---|---|---|---|\n")
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", 0.50}, {"p95", 0.95}, {"p99", 0.99}} {
		fmt.Fprintf(&report, "| %s | %s | %s | %s |\n", p.name, ms(raw.pct(p.q)), ms(spawned.pct(p.q)), ratio(spawned.pct(p.q), raw.pct(p.q)))
	}

	// Burst: everything at once, time until the last one is Ready.
	rawAll := timeAll(burst, func() { rawPodReady(t, e, ns) })
	spawnAll := timeAll(burst, func() { spawnReady(t, e) })
	fmt.Fprintf(&report, "\n### Burst: %d at once, until all are Ready\n\n| raw Pods | spawner | ratio |\n|---|---|---|\n| %s | %s | %s |\n",
		burst, ms(rawAll), ms(spawnAll), ratio(spawnAll, rawAll))

	// Idle → swept: the delay past the grace period, seen from the outside.
	var delays sample
	const grace = 3
	for range envInt("SPAWNER_BENCH_SWEEPS", 5) {
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
		if err := os.WriteFile(out, []byte(report.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// timeAll runs n copies of f at once and returns how long until all ended.
func timeAll(n int, f func()) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	return time.Since(start)
}
