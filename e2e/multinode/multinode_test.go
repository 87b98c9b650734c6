//go:build cluster

// Package multinode holds the end-to-end tests that need more than one worker
// node: backends spread over the workers, each followed and swept by its own
// node's sweeper, and the router reaching backends on other nodes. They skip
// themselves on a cluster with fewer than two schedulable workers (the local
// cluster, a one-node kind cluster); `SPAWNER_KIND_NODES=3 make kind-up` (or
// `make test-kind`) gives them one control-plane node and two workers.
package multinode

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/common/clustertest"
	"spawner.dev/e2e/framework"
)

// schedulableWorkers lists the Ready nodes a backend can land on (no
// NoSchedule or NoExecute taint), skipping the test when there are fewer than
// two.
func schedulableWorkers(t *testing.T, e *framework.Env) []string {
	t.Helper()
	nodes, err := e.Kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes.Items {
		if n.Spec.Unschedulable || !clustertest.NodeReady(&n) {
			continue
		}
		tainted := false
		for _, taint := range n.Spec.Taints {
			tainted = tainted || taint.Effect == corev1.TaintEffectNoSchedule || taint.Effect == corev1.TaintEffectNoExecute
		}
		if !tainted {
			names = append(names, n.Name)
		}
	}
	if len(names) < 2 {
		t.Skipf("needs at least two schedulable worker nodes, the cluster has %d (%v): run it on SPAWNER_KIND_NODES=3 make kind-up", len(names), names)
	}
	return names
}

// placed is a Ready backend and the node it runs on.
type placed struct {
	framework.SpawnResponse
	Node string
}

// spawnOnEvery spawns Ready backends until each of the nodes runs at least
// one. The scheduler places the first ones (nothing pins them), 2 per node;
// a node still without a backend then gets one with every other node
// cordoned for that spawn. The scheduler's own spread is not a promise: a
// worker with less requested already (the other runs the api-server, the
// demo pool's warm pods) scores higher for each small backend pod, and in one
// 3-node kind run all 8 unpinned spawns landed on one worker.
func spawnOnEvery(t *testing.T, e *framework.Env, nodes []string, grace int64) []placed {
	t.Helper()
	var all []placed
	count := map[string]int{}
	spawn := func() placed {
		b := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(grace)})
		e.WaitForState(t, b.Name, "Ready", 120*time.Second)
		slab, err := e.Spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).Get(context.Background(), b.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if slab.Status.NodeName == "" {
			t.Fatalf("Ready backend %s has no status.nodeName", b.Name)
		}
		count[slab.Status.NodeName]++
		p := placed{b, slab.Status.NodeName}
		all = append(all, p)
		return p
	}
	for range 2 * len(nodes) {
		if spread(count, nodes) {
			return all
		}
		spawn()
	}
	for _, n := range nodes {
		if count[n] > 0 {
			continue
		}
		t.Logf("the scheduler put %d backends on %v and none on %s: cordoning the others for one spawn", len(all), count, n)
		var others []string
		for _, o := range nodes {
			if o != n {
				others = append(others, o)
			}
		}
		cordon(t, e, others, true)
		p := spawn()
		cordon(t, e, others, false)
		if p.Node != n {
			t.Fatalf("backend %s landed on %s with every node but %s cordoned", p.Name, p.Node, n)
		}
	}
	return all
}

// spread reports whether every node runs one of the backends counted.
func spread(count map[string]int, nodes []string) bool {
	for _, n := range nodes {
		if count[n] == 0 {
			return false
		}
	}
	return true
}

// cordon marks nodes unschedulable (or schedulable again), as kubectl
// cordon/uncordon do; a cordon is undone when the test ends, whatever happens.
func cordon(t *testing.T, e *framework.Env, nodes []string, on bool) {
	t.Helper()
	patch := []byte(fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, on))
	for _, n := range nodes {
		if _, err := e.Kube.CoreV1().Nodes().Patch(context.Background(), n, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("cordon %s (%t): %v", n, on, err)
		}
		if on {
			t.Cleanup(func() {
				_, _ = e.Kube.CoreV1().Nodes().Patch(context.Background(), n, types.MergePatchType, []byte(`{"spec":{"unschedulable":false}}`), metav1.PatchOptions{})
			})
		}
	}
}

// podLogs returns the logs of the pods matching selector in the system
// namespace, by node name.
func podLogs(t *testing.T, e *framework.Env, selector string) map[string]string {
	t.Helper()
	ctx := context.Background()
	pods, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	logs := map[string]string{}
	for _, p := range pods.Items {
		b, err := e.Kube.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			t.Fatalf("logs of %s: %v", p.Name, err)
		}
		logs[p.Spec.NodeName] += string(b)
	}
	return logs
}

// TestBackendsSpreadOverWorkersEachSweptByItsOwnNodesSweeper spawns backends
// until both workers run one, lets them go idle, and checks that each was
// swept by the sweeper on its own node and by no other.
func TestBackendsSpreadOverWorkersEachSweptByItsOwnNodesSweeper(t *testing.T) {
	e := framework.Deployed(t)
	workers := schedulableWorkers(t, e)
	const grace = 5
	backends := spawnOnEvery(t, e, workers, grace)
	for _, b := range backends {
		e.WaitGone(t, b.Name, time.Duration(grace+60)*time.Second)
	}
	logs := podLogs(t, e, framework.PodsOf(framework.Sweeper))
	for _, b := range backends {
		// slog's text handler writes backend=ns/name, its JSON handler "backend":"ns/name".
		swept := regexp.MustCompile(`swept idle backend.*(backend=|"backend":")` + regexp.QuoteMeta(framework.BackendNamespace+"/"+b.Name) + `([ "]|$)`)
		sweptBy := []string{}
		for node, l := range logs {
			for _, line := range strings.Split(l, "\n") {
				if swept.MatchString(line) {
					sweptBy = append(sweptBy, node)
				}
			}
		}
		if len(sweptBy) != 1 || sweptBy[0] != b.Node {
			t.Errorf("backend %s ran on %s but was swept by the sweepers on %v", b.Name, b.Node, sweptBy)
		}
	}
}

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`)

// forwardToPod port-forwards a local port to one pod's port for the rest of
// the test and returns the local address.
func forwardToPod(t *testing.T, namespace, pod string, port int) string {
	t.Helper()
	cmd := exec.Command("kubectl", "-n", namespace, "port-forward", "pod/"+pod, fmt.Sprintf("0:%d", port))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("kubectl port-forward: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if m := forwarding.FindStringSubmatch(lines.Text()); m != nil {
			go func() {
				for lines.Scan() {
				}
			}()
			return "127.0.0.1:" + m[1]
		}
	}
	t.Fatalf("kubectl port-forward to pod %s ended without forwarding", pod)
	return ""
}

// via rewrites a backend URL to go through the router at addr.
func via(t *testing.T, backendURL, addr, path, scheme string) string {
	t.Helper()
	u, err := url.Parse(backendURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host, u.Scheme = addr, scheme
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	return u.String()
}

// TestRouterReachesBackendsOnOtherNodes talks to every router replica
// directly (a port-forward to its pod, so kube-proxy cannot pick a closer
// one) and, through it, to a backend on each other node: a page over HTTP
// and a message round trip over a WebSocket.
func TestRouterReachesBackendsOnOtherNodes(t *testing.T) {
	e := framework.Deployed(t)
	workers := schedulableWorkers(t, e)
	backends := spawnOnEvery(t, e, workers, 60)
	pods, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: framework.PodsOf(framework.APIServer)})
	if err != nil {
		t.Fatal(err)
	}
	crossed := 0
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		addr := forwardToPod(t, p.Namespace, p.Name, 8081)
		for _, b := range backends {
			if b.Node == p.Spec.NodeName {
				continue
			}
			crossed++
			resp, err := http.Get(via(t, b.URL, addr, "/", "http"))
			if err != nil {
				t.Fatalf("router %s (node %s) → backend %s (node %s): %v", p.Name, p.Spec.NodeName, b.Name, b.Node, err)
			}
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(body.String(), "spawner demo room") {
				t.Fatalf("router %s (node %s) → backend %s (node %s): HTTP %d %.200s", p.Name, p.Spec.NodeName, b.Name, b.Node, resp.StatusCode, body.String())
			}
			conn, wsResp, err := (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).Dial(via(t, b.URL, addr, "/ws", "ws"), nil)
			if err != nil {
				code := 0
				if wsResp != nil {
					code = wsResp.StatusCode
				}
				t.Fatalf("WebSocket via router %s (node %s) → backend %s (node %s): %v (HTTP %d)", p.Name, p.Spec.NodeName, b.Name, b.Node, err, code)
			}
			// the room registers a member just after its handshake: wait for it, then round-trip
			clustertest.Eventually(t, 10*time.Second, "the member in the room on "+b.Node, func() (bool, error) {
				members, err := framework.DemoMembers(via(t, b.URL, addr, "/stats", "http"))
				return err == nil && members >= 1, err
			})
			msg := []byte("across nodes from " + p.Spec.NodeName)
			if err := conn.WriteMessage(websocket.TextMessage, msg); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, got, err := conn.ReadMessage(); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("WebSocket via router %s → backend %s (node %s): read %q, %v; want %q", p.Name, b.Name, b.Node, got, err, msg)
			}
			conn.Close()
		}
	}
	if crossed == 0 {
		t.Fatalf("no router replica had a backend on another node (routers %d, backends %+v)", len(pods.Items), backends)
	}
	t.Logf("%d router→backend pairs across nodes answered over HTTP and WebSocket", crossed)
}
