//go:build cluster

package multinode

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	"spawner.dev/common/clustertest"
	"spawner.dev/e2e/framework"
)

// docker runs the docker CLI (kind's nodes are containers named after the node).
func docker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func waitNodeReady(t *testing.T, e *framework.Env, node string, timeout time.Duration) {
	t.Helper()
	clustertest.Eventually(t, timeout, "node "+node+" Ready", func() (bool, error) {
		n, err := e.Kube.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return clustertest.NodeReady(n), nil
	})
}

// TestWorkerLossFailsItsBackendsAndSparesTheOthers stops a worker's node
// container mid-session (kind only: `docker stop`). The backends on it end as
// Failed with a reason and their pods go; a session on the other worker's
// backend carries on untouched. Spawner does not move a session to another
// node: the process and its in-memory state died with the node, so a new
// spawn is the client's call (docs/kind.md). Once the node is started again
// the cluster recovers, the lost pods are cleaned up, and new backends land
// on it again.
//
// How long the failure takes is Kubernetes' timing, not spawner's: the node
// controller marks the node NotReady after its grace period (50 s), and the
// taint manager evicts the pods once their default not-ready/unreachable
// toleration (300 s) runs out; the controller fails a backend whose pod is
// being deleted. Hence the long deadline.
func TestWorkerLossFailsItsBackendsAndSparesTheOthers(t *testing.T) {
	e := framework.Deployed(t)
	workers := schedulableWorkers(t, e)
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("needs the docker CLI (kind nodes are Docker containers)")
	}
	for _, w := range workers {
		if out, err := docker("inspect", "-f", "{{.State.Running}}", w); err != nil || out != "true" {
			t.Skipf("node %s is not a running Docker container (%q, %v): not a kind cluster", w, out, err)
		}
	}
	ctx := context.Background()

	// The victim: a worker without the leading controller replica, so that
	// the controller keeps working (a lost leader is the controller's chaos
	// test). The Lease's holder identity starts with the leader's pod name
	// (its hostname); a standby replica on the victim may die with it.
	lease, err := e.Kube.CoordinationV1().Leases(framework.SystemNamespace).Get(ctx, framework.Controller, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		t.Fatalf("the controller's Lease %s/spawner-controller has no holder: %v", framework.SystemNamespace, err)
	}
	ctrl, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: framework.PodsOf(framework.Controller)})
	if err != nil {
		t.Fatal(err)
	}
	leaderNode := ""
	for _, p := range ctrl.Items {
		if strings.HasPrefix(*lease.Spec.HolderIdentity, p.Name+"_") {
			leaderNode = p.Spec.NodeName
		}
	}
	if leaderNode == "" {
		t.Fatalf("no controller pod holds the Lease (holder %q)", *lease.Spec.HolderIdentity)
	}
	victim, survivor := "", ""
	for _, w := range workers {
		if victim == "" && w != leaderNode {
			victim = w
		} else if survivor == "" {
			survivor = w
		}
	}
	if victim == "" || survivor == "" {
		t.Fatalf("workers %v, leading controller on %s: no victim and survivor", workers, leaderNode)
	}
	t.Logf("stopping %s; the leading controller and the session stay on %s", victim, survivor)
	// Everything the test says to spawner goes through the replica on the
	// survivor: its router for the session, its control API for spawns and
	// status streams. The framework's port-forward to the Service may have
	// picked the victim's replica, and a forward through a lost node hangs or
	// ends.
	apis, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: framework.PodsOf(framework.APIServer)})
	if err != nil {
		t.Fatal(err)
	}
	router := ""
	for _, p := range apis.Items {
		if p.Spec.NodeName == survivor && p.DeletionTimestamp == nil {
			router = p.Name
		}
	}
	if router == "" {
		t.Fatalf("no router replica on %s (the api Deployment's anti-affinity spreads them)", survivor)
	}
	ctl := *e
	ctl.Control = "http://" + forwardToPod(t, framework.SystemNamespace, router, 8080)
	e = &ctl
	backends := spawnOnEvery(t, e, []string{victim, survivor}, 600)

	// A live session on the survivor's backend.
	addr := forwardToPod(t, framework.SystemNamespace, router, 8081)
	var kept placed
	var lost []placed
	for _, b := range backends {
		if b.Node == survivor && kept.Name == "" {
			kept = b
		} else if b.Node == victim {
			lost = append(lost, b)
		}
	}
	conn, _, err := (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).Dial(via(t, kept.URL, addr, "/ws", "ws"), nil)
	if err != nil {
		t.Fatalf("WebSocket to %s on %s: %v", kept.Name, survivor, err)
	}
	defer conn.Close()
	roundTrip := func(msg string) {
		t.Helper()
		if err := conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatalf("session on %s: %v", survivor, err)
		}
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, got, err := conn.ReadMessage(); err != nil || string(got) != msg {
			t.Fatalf("session on %s: read %q, %v; want %q", survivor, got, err, msg)
		}
	}
	time.Sleep(time.Second) // the room registers its member just after the handshake
	roundTrip("before")

	start := time.Now()
	if out, err := docker("stop", victim); err != nil {
		t.Fatalf("docker stop %s: %v: %s", victim, err, out)
	}
	restarted := false
	restart := func() {
		if restarted {
			return
		}
		restarted = true
		if out, err := docker("start", victim); err != nil {
			t.Errorf("docker start %s: %v: %s", victim, err, out)
		}
	}
	t.Cleanup(restart)

	for _, b := range lost {
		seen := e.WaitForState(t, b.Name, "Failed", 10*time.Minute)
		last := seen[len(seen)-1]
		if last.Reason == "" || last.Message == "" {
			t.Errorf("backend %s on the lost node failed without a reason: %+v", b.Name, last)
		}
		t.Logf("backend %s on %s: Failed %v after docker stop (%s: %s)", b.Name, victim, time.Since(start).Round(time.Second), last.Reason, last.Message)
	}
	// Nothing is left running for them: their pods are being deleted (the
	// kubelet that would finish it is down; it does once the node is back).
	for _, b := range lost {
		pod, err := e.Kube.CoreV1().Pods(framework.BackendNamespace).Get(ctx, b.Name, metav1.GetOptions{})
		if err == nil && pod.DeletionTimestamp == nil {
			t.Errorf("backend %s is Failed but its pod is not being deleted", b.Name)
		}
	}
	// The other worker's backend did not notice.
	roundTrip("after")
	slab, err := e.Spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).Get(ctx, kept.Name, metav1.GetOptions{})
	if err != nil || lifecycle.Phase(slab) != lifecycle.Ready {
		t.Fatalf("the survivor's backend %s: phase %v, %v; want Ready", kept.Name, slab.Status.Phase, err)
	}

	// Recovery: the node comes back, its lost pods are cleaned up, and it takes new backends.
	restart()
	restartedAt := time.Now()
	waitNodeReady(t, e, victim, 3*time.Minute)
	t.Logf("node %s Ready again %v after docker start (%v after docker stop)", victim, time.Since(restartedAt).Round(time.Second), time.Since(start).Round(time.Second))
	// The lost pods are gone; the slabs stay Failed, with their reason, for
	// the client to read until the controller's failed-retention (10m in
	// deploy/) deletes them. Nothing came back to life.
	for _, b := range lost {
		clustertest.Eventually(t, 3*time.Minute, "pod "+b.Name+" deleted", func() (bool, error) {
			_, err := e.Kube.CoreV1().Pods(framework.BackendNamespace).Get(ctx, b.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		slab, err := e.Spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).Get(ctx, b.Name, metav1.GetOptions{})
		if err == nil && slab.Status.Phase != "Failed" {
			t.Errorf("backend %s on the lost node is %s after the node came back; want Failed (or deleted)", b.Name, slab.Status.Phase)
		}
	}
	spawnOnEvery(t, e, []string{victim}, 5)
}
