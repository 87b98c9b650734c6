//go:build cluster

package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/common/routerproof"
)

// probeResult is one line of `spawner-demo probe` (e2e/demo/probe).
type probeResult struct {
	URL     string
	Upgrade bool
	Forged  bool
	Status  int
	Error   string
}

// The fence: a pod in another namespace and a second backend each try the
// first backend's pod IP directly, on the sidecar's public port 9090 (plain,
// WebSocket handshake, a forged proof) and its status port 9091 (/_events,
// /metrics). Every attempt is refused — 403 from the sidecar, which checks
// the router proof, or no connection at all where a NetworkPolicy is
// enforced (the local cluster's ptp CNI enforces none, so there the proof is
// what holds) — and the app never sees one. Meanwhile the router (HTTP and
// a WebSocket) and the sweeper (Ready, then Swept once idle) keep working.
func TestFenceRefusesOtherPods(t *testing.T) {
	e := setup(t)
	_, sr := e.spawn(e.a.control, `{"image":"`+clustertest.DemoImage+`","gracePeriodSeconds":5}`)
	e.waitReady(e.a.control, sr.Name) // the sweeper read the fenced status port
	ctx := context.Background()
	pod, err := e.kube.CoreV1().Pods(e.ns).Get(ctx, sr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if routerproof.FromPod(pod, spawnerv1.SidecarContainerName) == "" || pod.Status.PodIP == "" {
		t.Fatalf("pod %s: no router proof in the sidecar's env, or no IP", pod.Name)
	}

	// A WebSocket through the router holds the backend in use while it is probed.
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(strings.Replace(sr.URL, "/?", "/ws?", 1), "http"), nil)
	if err != nil {
		t.Fatalf("WebSocket through the router: %v", err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatalf("WebSocket echo through the router: %v", err)
	}
	statsURL := strings.Replace(sr.URL, "/?", "/stats?", 1)
	before := e.stats(statsURL) // through the router: it works, and /stats does not count itself

	ip := pod.Status.PodIP
	urls := []string{}
	public, status := strconv.Itoa(spawnerv1.SidecarServePort), strconv.Itoa(spawnerv1.SidecarStatusPort)
	for _, port := range []string{public, status} {
		base := "http://" + net.JoinHostPort(ip, port)
		urls = append(urls, base+"/", "forged:"+base+"/_events", base+"/_events", base+"/metrics")
	}
	urls = append(urls, "upgrade:http://"+net.JoinHostPort(ip, public)+"/ws", "forged:upgrade:http://"+net.JoinHostPort(ip, public)+"/ws")
	probeArgs := append([]string{"probe"}, urls...)
	restricted := &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false), RunAsNonRoot: ptr.To(true),
		Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	probeContainer := corev1.Container{Name: "probe", Image: clustertest.DemoImage, ImagePullPolicy: corev1.PullIfNotPresent,
		Args: probeArgs, SecurityContext: restricted}

	// 1. A pod in another namespace.
	other := clustertest.Namespace(t, e.cfg)
	outsider := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "outsider", Namespace: other},
		Spec: corev1.PodSpec{NodeName: e.node, RestartPolicy: corev1.RestartPolicyNever,
			AutomountServiceAccountToken: ptr.To(false), Containers: []corev1.Container{probeContainer}},
	}
	if _, err := e.kube.CoreV1().Pods(other).Create(ctx, outsider, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// 2. A second backend, probing from its init container (same namespace,
	// same labels as any backend: what another user's app could do).
	second := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: "second", Namespace: e.ns},
		Spec: spawnerv1.SessionLivedBackendSpec{GracePeriodSeconds: ptr.To[int64](60), Template: spawnerv1.BackendPodTemplate{
			InitContainers: []corev1.Container{probeContainer},
			Containers:     []corev1.Container{{Name: "app", Image: clustertest.DemoImage, ImagePullPolicy: corev1.PullIfNotPresent}},
			NodeSelector:   map[string]string{"kubernetes.io/hostname": e.node},
		}},
	}
	if _, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Create(ctx, second, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	check := func(who string, results []probeResult) {
		t.Helper()
		if len(results) != len(urls) {
			t.Fatalf("%s: %d results for %d URLs: %+v", who, len(results), len(urls), results)
		}
		for _, r := range results {
			switch {
			case r.Status == 403:
			case r.Status == 0 && r.Error != "": // dropped or refused by a NetworkPolicy
			default:
				t.Errorf("%s: %s (upgrade %v, forged proof %v) answered %d %s, want 403 or no connection",
					who, r.URL, r.Upgrade, r.Forged, r.Status, r.Error)
			}
		}
	}
	check("a pod in another namespace", e.probeLogs(other, "outsider", "probe", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}))
	check("a second backend", e.probeLogs(e.ns, "second", "probe", func(p *corev1.Pod) bool {
		for _, s := range p.Status.InitContainerStatuses {
			if s.Name == "probe" && s.State.Terminated != nil {
				return true
			}
		}
		return false
	}))

	// The app saw none of it, and the router still reaches it.
	if after := e.stats(statsURL); after != before {
		t.Errorf("the app saw %d requests while only other pods knocked", after-before)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatalf("WebSocket through the router after the probes: %v", err)
	}

	// The sweeper still reads the fenced status port: idle for its 5 s
	// grace once the WebSocket closes, the backend is swept. Watched, not
	// polled: the controller deletes a swept backend at once.
	slabs := e.sp.SpawnerV1().SessionLivedBackends(e.ns)
	cur, err := slabs.Get(ctx, sr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	w, err := slabs.Watch(wctx, metav1.ListOptions{FieldSelector: "metadata.name=" + sr.Name, ResourceVersion: cur.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	ws.Close()
	for ev := range w.ResultChan() {
		s, ok := ev.Object.(*spawnerv1.SessionLivedBackend)
		if !ok {
			continue
		}
		cur = s
		if c := meta.FindStatusCondition(s.Status.Conditions, lifecycle.ConditionSwept); c != nil && c.Status == metav1.ConditionTrue {
			if c.Reason != lifecycle.ReasonIdle {
				t.Fatalf("swept for %s, want %s", c.Reason, lifecycle.ReasonIdle)
			}
			return
		}
	}
	t.Fatalf("%s not swept within 60 s of going idle (grace 5 s): phase %s", sr.Name, cur.Status.Phase)
}

// probeLogs waits until done(pod) and returns the probe container's results.
func (e *env) probeLogs(ns, name, container string, done func(*corev1.Pod) bool) []probeResult {
	e.t.Helper()
	ctx := context.Background()
	clustertest.Eventually(e.t, 120*time.Second, ns+"/"+name+" probed", func() (bool, error) {
		p, err := e.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return done(p), fmt.Errorf("pod phase %s", p.Status.Phase)
	})
	raw, err := e.kube.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
	if err != nil {
		e.t.Fatalf("logs of %s/%s: %v", ns, name, err)
	}
	var out []probeResult
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var r probeResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			e.t.Fatalf("%s/%s: %q is not a probe result: %v\n%s", ns, name, sc.Text(), err, raw)
		}
		out = append(out, r)
	}
	return out
}
