//go:build cluster

// Package test runs the controller as a real process against a real cluster
// (KUBECONFIG). Each test has a namespace of its own and a controller process
// watching only that namespace (--namespace), so tests of other components
// on the same cluster neither see nor disturb it.
package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/common/freeport"
	"spawner.dev/generated/clientset/versioned"
)

type env struct {
	t        *testing.T
	cfg      *rest.Config
	kube     kubernetes.Interface
	sp       versioned.Interface
	ns       string
	httpAddr string
}

// setup gives a test the cluster, the CRD and a namespace of its own, and
// warns when the images are not on the node.
func setup(t *testing.T) *env {
	t.Helper()
	ce := clustertest.Setup(t)
	e := &env{t: t, cfg: ce.Config, kube: ce.Kube, sp: versioned.NewForConfigOrDie(ce.Config), ns: ce.Namespace}
	clustertest.Node(t, e.kube, clustertest.DemoImage, clustertest.SidecarImage)
	return e
}

// startController runs the controller binary for the test's namespace;
// later args override the defaults.
func (e *env) startController(args ...string) *clustertest.Process {
	e.t.Helper()
	e.httpAddr = freeport.Addr(e.t)
	base := []string{"--http-address=" + e.httpAddr, "--failed-retention=10m", "-v=2"}
	return clustertest.StartController(e.t, e.ns, append(base, args...)...)
}

// newSlab is a backend running the demo app, after mutate.
func (e *env) newSlab(name string, mutate func(*spawnerv1.SessionLivedBackend)) *spawnerv1.SessionLivedBackend {
	e.t.Helper()
	grace := int64(5)
	s := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: spawnerv1.SessionLivedBackendSpec{
			HTTPPort: 8080,
			Template: spawnerv1.BackendPodTemplate{
				Containers:                    []corev1.Container{{Name: "app", Image: clustertest.DemoImage, ImagePullPolicy: corev1.PullIfNotPresent}},
				TerminationGracePeriodSeconds: &grace,
			},
		},
	}
	if mutate != nil {
		mutate(s)
	}
	created, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("creating slab %s: %v", name, err)
	}
	return created
}

func (e *env) get(name string) (*spawnerv1.SessionLivedBackend, error) {
	return e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), name, metav1.GetOptions{})
}

func describe(s *spawnerv1.SessionLivedBackend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s reason=%s message=%q node=%s ip=%s", s.Status.Phase, s.Status.Reason, s.Status.Message, s.Status.NodeName, s.Status.PodIP)
	for _, c := range s.Status.Conditions {
		fmt.Fprintf(&b, "\n  %s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message)
	}
	return b.String()
}

// waitPhase waits until the slab is in phase; a Failed slab (when Failed is
// not wanted) ends the wait at once with its status.
func (e *env) waitPhase(name string, phase spawnerv1.BackendPhase, timeout time.Duration) *spawnerv1.SessionLivedBackend {
	e.t.Helper()
	var last *spawnerv1.SessionLivedBackend
	deadline := time.Now().Add(timeout)
	for {
		s, err := e.get(name)
		if err == nil {
			last = s
			if lifecycle.Phase(s) == phase {
				return s
			}
			if lifecycle.Phase(s) == lifecycle.Failed {
				e.t.Fatalf("slab %s failed while waiting for %s: %s", name, phase, describe(s))
			}
		}
		if time.Now().After(deadline) {
			if last != nil {
				e.t.Fatalf("slab %s not %s within %v: %s", name, phase, timeout, describe(last))
			}
			e.t.Fatalf("slab %s not %s within %v: %v", name, phase, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// record writes a condition the way the sweeper or the api-server does:
// read-modify-write through the phase machine, retried on conflict.
func (e *env) record(name, conditionType, reason, message string) {
	e.t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := e.get(name)
		if err != nil {
			return err
		}
		if !lifecycle.CanRecord(lifecycle.Phase(s), conditionType) {
			return fmt.Errorf("cannot record %s in phase %s", conditionType, s.Status.Phase)
		}
		if conditionType == lifecycle.ConditionReady && s.Status.ReadyTime == nil {
			now := metav1.Now()
			s.Status.ReadyTime = &now
		}
		lifecycle.Record(&s.Status, conditionType, reason, message, s.Generation)
		_, err = e.sp.SpawnerV1().SessionLivedBackends(e.ns).UpdateStatus(context.Background(), s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		e.t.Fatalf("recording %s on %s: %v", conditionType, name, err)
	}
}

func (e *env) pod(name string) (*corev1.Pod, error) {
	return e.kube.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
}

func (e *env) waitGone(what string, timeout time.Duration, get func() error) {
	e.t.Helper()
	clustertest.Eventually(e.t, timeout, what+" gone", func() (bool, error) {
		err := get()
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// eventReasons are the reasons of the Events on a slab, oldest first.
func (e *env) eventReasons(name string) []string {
	e.t.Helper()
	list, err := e.kube.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=SessionLivedBackend,involvedObject.name=" + name,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, ev := range list.Items {
		out = append(out, ev.Reason)
	}
	return out
}

func (e *env) httpGet(path string) (int, string) {
	e.t.Helper()
	resp, err := http.Get("http://" + e.httpAddr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// kubectl runs the cluster's kubectl ($SPAWNER_CACHE/bin/kubectl, see scripts/lib.sh).
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("kubectl")
	if err != nil {
		cache := os.Getenv("SPAWNER_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "spawner")
		}
		path = filepath.Join(cache, "bin", "kubectl")
	}
	out, err := exec.Command(path, append([]string{"--kubeconfig", os.Getenv("KUBECONFIG")}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
