package clustertest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Env is where a component's cluster suite starts: the cluster's config and
// client, the CRD installed, and a namespace of the test's own. Suites build
// the spawner.dev clientset from Config themselves (versioned.NewForConfigOrDie):
// common does not import the generated code.
type Env struct {
	Config    *rest.Config
	Kube      kubernetes.Interface
	Namespace string
}

// Setup gives a test the cluster, the CRD and a namespace of its own.
func Setup(t testing.TB) Env {
	t.Helper()
	cfg := Config(t)
	EnsureCRD(t, cfg)
	return Env{Config: cfg, Kube: kubernetes.NewForConfigOrDie(cfg), Namespace: Namespace(t, cfg)}
}

// Node is a Ready node that lists images. A node lists a freshly loaded image
// only with its next status update (about every 10 s), so Node waits up to
// 20 s for one; then it warns, with the fix, and returns any Ready node (a
// missing image fails the test later with ImagePullFailed anyway).
func Node(t testing.TB, kube kubernetes.Interface, images ...string) string {
	t.Helper()
	fallback := ""
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Second) {
		nodes, err := kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes.Items {
			if !NodeReady(&n) {
				continue
			}
			if hasImages(&n, images) {
				return n.Name
			}
			if fallback == "" {
				fallback = n.Name
			}
		}
		if time.Now().After(deadline) {
			break
		}
	}
	if fallback == "" {
		t.Fatal("no Ready node")
	}
	t.Logf("WARNING: node %s does not list %v (yet?); if pods fail to start, run scripts/build-images.sh", fallback, images)
	return fallback
}

// NodeReady reports whether a node's Ready condition is True.
func NodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func hasImages(n *corev1.Node, images []string) bool {
	have := map[string]bool{}
	for _, img := range n.Status.Images {
		for _, name := range img.Names {
			have[name] = true
			have[strings.TrimPrefix(name, "docker.io/")] = true
		}
	}
	for _, img := range images {
		if !have[img] {
			return false
		}
	}
	return true
}

// StartController runs the controller binary for namespace ns, the way every
// suite does (no leader election, the test sidecar image, startup timeout
// 2m, no health address); later args override these.
func StartController(t testing.TB, ns string, args ...string) *Process {
	t.Helper()
	base := []string{
		"--kubeconfig=" + os.Getenv("KUBECONFIG"),
		"--namespace=" + ns,
		"--leader-elect=false",
		"--sidecar-image=" + SidecarImage,
		"--sidecar-image-pull-policy=IfNotPresent",
		"--http-address=",
		"--startup-timeout=2m",
	}
	return Start(t, Binary(t, "controller"), append(base, args...)...)
}

// StartSweeper runs the sweeper binary on the host (which reaches pod IPs)
// for namespace ns and node, serving /healthz and /metrics on listen; later
// args override these.
func StartSweeper(t testing.TB, ns, node, listen string, args ...string) *Process {
	t.Helper()
	base := []string{
		"--kubeconfig=" + os.Getenv("KUBECONFIG"),
		"--node-name=" + node,
		"--namespace=" + ns,
		"--listen=" + listen,
	}
	return Start(t, Binary(t, "sweeper"), append(base, args...)...)
}
