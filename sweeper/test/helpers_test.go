//go:build cluster

// Package test runs the sweeper as a real process against a real cluster
// (KUBECONFIG) with real backend pods: the demo app next to the real sidecar,
// created by the real controller. Each test has a namespace of its own, and a
// controller and a sweeper process limited to it (--namespace), so tests run
// in parallel and never see other components' backends.
package test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/common/freeport"
	"spawner.dev/common/routerproof"
	"spawner.dev/generated/clientset/versioned"
)

type env struct {
	t           *testing.T
	cfg         *rest.Config
	kube        kubernetes.Interface
	sp          versioned.Interface
	ns          string
	node        string
	sweeperAddr string
	sweeper     *clustertest.Process
}

// setup gives a test the CRD, a namespace, and a controller for it.
func setup(t *testing.T) *env {
	t.Helper()
	ce := clustertest.Setup(t)
	e := &env{t: t, cfg: ce.Config, kube: ce.Kube, sp: versioned.NewForConfigOrDie(ce.Config), ns: ce.Namespace}
	e.node = clustertest.Node(t, e.kube, clustertest.DemoImage, clustertest.SidecarImage)
	// A deployed controller or sweeper (make up) watches every namespace and
	// acts on this test's backends too; the results then prove less.
	if pods, err := e.kube.CoreV1().Pods(spawnerv1.SystemNamespace).List(context.Background(), metav1.ListOptions{}); err == nil {
		for _, p := range pods.Items {
			if strings.HasPrefix(p.Name, "spawner-controller") || strings.HasPrefix(p.Name, "spawner-sweeper") {
				t.Logf("warning: %s/%s runs in the cluster and also acts on this test's backends", p.Namespace, p.Name)
			}
		}
	}
	clustertest.StartController(t, e.ns)
	return e
}

// startSweeper runs the sweeper for the test's namespace on the host (the
// host reaches pod IPs) and waits for its informer to sync.
func (e *env) startSweeper() *clustertest.Process {
	e.t.Helper()
	if e.sweeperAddr == "" {
		e.sweeperAddr = freeport.Addr(e.t)
	}
	p := clustertest.StartSweeper(e.t, e.ns, e.node, e.sweeperAddr)
	clustertest.Eventually(e.t, 20*time.Second, "sweeper /healthz", func() (bool, error) {
		resp, err := http.Get("http://" + e.sweeperAddr + "/healthz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, fmt.Errorf("status %d", resp.StatusCode)
	})
	e.sweeper = p
	return p
}

// metric reads one unlabelled sample from the sweeper's /metrics.
func (e *env) metric(name string) float64 {
	e.t.Helper()
	resp, err := http.Get("http://" + e.sweeperAddr + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	e.t.Fatalf("metric %s not found", name)
	return 0
}

// newSlab creates a demo backend with the given grace on the test's node.
func (e *env) newSlab(name string, grace int64, env ...corev1.EnvVar) {
	e.t.Helper()
	term := int64(2)
	s := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: spawnerv1.SessionLivedBackendSpec{
			HTTPPort:           8080,
			GracePeriodSeconds: &grace,
			Template: spawnerv1.BackendPodTemplate{
				Containers: []corev1.Container{{Name: "app", Image: clustertest.DemoImage,
					ImagePullPolicy: corev1.PullIfNotPresent, Env: env}},
				NodeSelector:                  map[string]string{"kubernetes.io/hostname": e.node},
				TerminationGracePeriodSeconds: &term,
			},
		},
	}
	if _, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("creating slab %s: %v", name, err)
	}
}

func (e *env) get(name string) (*spawnerv1.SessionLivedBackend, error) {
	return e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), name, metav1.GetOptions{})
}

func describe(s *spawnerv1.SessionLivedBackend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s reason=%s ip=%s", s.Status.Phase, s.Status.Reason, s.Status.PodIP)
	for _, c := range s.Status.Conditions {
		fmt.Fprintf(&b, "\n  %s=%s %s %s: %s", c.Type, c.Status, c.LastTransitionTime.Format(time.RFC3339), c.Reason, c.Message)
	}
	return b.String()
}

// waitPhase polls every 20 ms until the slab reaches phase (or one after it,
// when later is true) and returns it with the time it was first seen.
func (e *env) waitPhase(name string, phase spawnerv1.BackendPhase, timeout time.Duration) (*spawnerv1.SessionLivedBackend, time.Time) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *spawnerv1.SessionLivedBackend
	for {
		s, err := e.get(name)
		now := time.Now()
		if err == nil {
			last = s
			if lifecycle.Phase(s) == phase {
				return s, now
			}
			if lifecycle.Phase(s) == lifecycle.Failed {
				e.t.Fatalf("slab %s failed while waiting for %s: %s", name, phase, describe(s))
			}
		}
		if now.After(deadline) {
			if last != nil {
				e.t.Fatalf("slab %s not %s within %v: %s", name, phase, timeout, describe(last))
			}
			e.t.Fatalf("slab %s not %s within %v: %v", name, phase, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ready waits for the backend to be Ready and returns its pod IP.
func (e *env) ready(name string) string {
	e.t.Helper()
	s, _ := e.waitPhase(name, lifecycle.Ready, 90*time.Second)
	ip := s.Status.PodIP
	if ip == "" {
		pod, err := e.kube.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		ip = pod.Status.PodIP
	}
	return ip
}

// proof is the router proof of the backend's pod (the sidecar's env), which
// a test talking to the sidecar directly must send, as the router does.
func (e *env) proof(name string) string {
	e.t.Helper()
	pod, err := e.kube.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return routerproof.FromPod(pod, spawnerv1.SidecarContainerName)
}

// assertStaysReady fails the test if the slab leaves Ready during d.
func (e *env) assertStaysReady(name string, d time.Duration) {
	e.t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		s, err := e.get(name)
		if err != nil {
			e.t.Fatal(err)
		}
		if lifecycle.Phase(s) != lifecycle.Ready {
			e.t.Fatalf("slab %s left Ready while in use: %s", name, describe(s))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sweptAfter waits for Swept and checks it came grace after idleSince: not
// earlier (minus the test's own timing slack), not more than 1 s later.
func (e *env) sweptAfter(name string, idleSince time.Time, grace time.Duration) {
	e.t.Helper()
	s, seen := e.waitSwept(name, grace+30*time.Second)
	late := seen.Sub(idleSince.Add(grace))
	e.t.Logf("%s swept %v after going idle (grace %v): %+v off the deadline", name, seen.Sub(idleSince).Round(time.Millisecond), grace, late.Round(time.Millisecond))
	if late < -150*time.Millisecond || late > time.Second {
		e.t.Errorf("swept %v off the deadline, want within [0, 1s]: %s", late, describe(s))
	}
	c := s.Status.Conditions
	var swept metav1.Condition
	for _, x := range c {
		if x.Type == lifecycle.ConditionSwept {
			swept = x
		}
	}
	if swept.Reason != lifecycle.ReasonIdle {
		e.t.Errorf("Swept reason %q, want Idle", swept.Reason)
	}
}

// waitSwept watches the slab until its Swept condition is true and returns
// it with the time the watch delivered that. A watch sees every write, so
// the controller moving it on to Terminating right after cannot hide it.
func (e *env) waitSwept(name string, timeout time.Duration) (*spawnerv1.SessionLivedBackend, time.Time) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := e.sp.SpawnerV1().SessionLivedBackends(e.ns)
	cur, err := client.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if meta.IsStatusConditionTrue(cur.Status.Conditions, lifecycle.ConditionSwept) {
		return cur, time.Now()
	}
	w, err := client.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: cur.ResourceVersion})
	if err != nil {
		e.t.Fatal(err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		now := time.Now()
		s, ok := ev.Object.(*spawnerv1.SessionLivedBackend)
		if !ok {
			continue
		}
		cur = s
		if meta.IsStatusConditionTrue(s.Status.Conditions, lifecycle.ConditionSwept) {
			return s, now
		}
		if lifecycle.Phase(s) == lifecycle.Failed {
			e.t.Fatalf("slab %s failed while waiting for Swept: %s", name, describe(s))
		}
	}
	e.t.Fatalf("slab %s not Swept within %v: %s", name, timeout, describe(cur))
	return nil, time.Time{}
}

// gone waits for the controller to delete the swept backend.
func (e *env) gone(name string) {
	e.t.Helper()
	clustertest.Eventually(e.t, 60*time.Second, "slab "+name+" deleted", func() (bool, error) {
		_, err := e.get(name)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// netnsOf finds a process in the pod's network namespace (by its IP) so a
// test can change that namespace's firewall with nsenter.
func netnsOf(t *testing.T, podIP string) string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ent := range entries {
		pid := ent.Name()
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if !strings.Contains(string(cmdline), "--status-port=") {
			continue
		}
		ns, err := os.Readlink("/proc/" + pid + "/ns/net")
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		out, err := exec.Command("nsenter", "-t", pid, "-n", "ip", "-4", "-o", "addr", "show").CombinedOutput()
		if err == nil && strings.Contains(string(out), " "+podIP+"/") {
			return pid
		}
	}
	t.Fatalf("no sidecar process found in the network namespace of %s", podIP)
	return ""
}

// iptables runs iptables in the network namespace of process pid.
func iptables(t *testing.T, pid string, args ...string) {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-t", pid, "-n", "iptables"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables %v: %v\n%s", args, err, out)
	}
}
