//go:build cluster

package test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
)

func TestHappyPath(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startController("--public-base-url=https://spawner.test/")
	e.newSlab("happy", func(s *spawnerv1.SessionLivedBackend) {
		s.Spec.HTTPPort = 8123
		s.Spec.Template.Metadata.Labels = map[string]string{"team": "t"}
	})

	s := e.waitPhase("happy", lifecycle.Running, 90*time.Second)
	pod, err := e.pod("happy")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pod.Spec.Containers); n != 2 || pod.Spec.Containers[0].Name != "app" || pod.Spec.Containers[1].Name != spawnerv1.SidecarContainerName {
		t.Errorf("pod containers %v, want app and the sidecar", pod.Spec.Containers)
	}
	if ref := metav1.GetControllerOf(pod); ref == nil || ref.UID != s.UID || !ptr.Deref(ref.BlockOwnerDeletion, false) {
		t.Errorf("pod controller ref %+v, want the slab", ref)
	}
	if pod.Labels[spawnerv1.LabelManagedBy] != "spawner" || pod.Labels[spawnerv1.LabelBackend] != "happy" || pod.Labels["team"] != "t" {
		t.Errorf("pod labels %v", pod.Labels)
	}
	if pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds] != "300" || pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("pod annotations %v restartPolicy %s", pod.Annotations, pod.Spec.RestartPolicy)
	}
	if s.Status.NodeName == "" || s.Status.NodeName != pod.Spec.NodeName || s.Status.PodIP != pod.Status.PodIP || s.Status.URL != "https://spawner.test/p/happy/" {
		t.Errorf("status %s url %q, pod on %s at %s", describe(s), s.Status.URL, pod.Spec.NodeName, pod.Status.PodIP)
	}
	clustertest.Eventually(t, 10*time.Second, "node label on the slab", func() (bool, error) {
		s, err := e.get("happy")
		return err == nil && s.Labels[spawnerv1.LabelNode] == pod.Spec.NodeName, err
	})

	// The sweeper's Ready write (stand-in), then the controller must keep it.
	e.record("happy", lifecycle.ConditionReady, lifecycle.ReasonAppListening, "listening on 8123")
	e.waitPhase("happy", lifecycle.Ready, 5*time.Second)
	time.Sleep(2 * time.Second)
	if s, _ := e.get("happy"); s.Status.Phase != lifecycle.Ready {
		t.Errorf("after 2s: %s, want Ready kept", describe(s))
	}

	clustertest.Eventually(t, 15*time.Second, "Scheduled, Running and Ready events", func() (bool, error) {
		r := e.eventReasons("happy")
		return contains(r, "Scheduled") && contains(r, "Running") && contains(r, "Ready"), nil
	})
	if out := kubectl(t, "get", "slab", "happy", "-n", e.ns); !strings.Contains(out, "Ready") || !strings.Contains(out, "https://spawner.test/p/happy/") {
		t.Errorf("kubectl get slab:\n%s", out)
	}

	// Health and metrics.
	if code, body := e.httpGet("/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := e.httpGet("/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	code, body := e.httpGet("/metrics")
	for _, want := range []string{
		"spawner_controller_reconciles_total ",
		"spawner_controller_reconcile_errors_total ",
		"spawner_controller_queue_depth ",
		`spawner_controller_backends{phase="Ready"} 1`,
		"spawner_controller_spawn_to_ready_seconds_count 1",
		"spawner_controller_pods_created_total 1",
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q:\n%s", code, want, body)
		}
	}
}

// TestFailureReasons: each way a backend can fail ends in Failed with that
// reason, its pod is deleted at once, and the slab after the retention.
func TestFailureReasons(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startController("--startup-timeout=45s", "--failed-retention=15s")
	cases := map[string]struct {
		mutate  func(*spawnerv1.SessionLivedBackend)
		reason  string
		message string
	}{
		"invalid-image": {func(s *spawnerv1.SessionLivedBackend) {
			s.Spec.Template.Containers[0].Image = "localhost/Not A Valid:Image"
		},
			lifecycle.ReasonImagePullFailed, "InvalidImageName"},
		"missing-image": {func(s *spawnerv1.SessionLivedBackend) {
			s.Spec.Template.Containers[0].Image = "localhost/spawner-does-not-exist:dev"
		}, lifecycle.ReasonImagePullFailed, "spawner-does-not-exist"},
		"exit-1": {func(s *spawnerv1.SessionLivedBackend) {
			s.Spec.Template.Containers[0].Env = []corev1.EnvVar{{Name: "DEMO_EXIT_AFTER_SECONDS", Value: "1"}, {Name: "DEMO_EXIT_CODE", Value: "1"}}
		}, lifecycle.ReasonAppExited, "exited with code 1"},
		"unschedulable": {func(s *spawnerv1.SessionLivedBackend) {
			s.Spec.Template.NodeSelector = map[string]string{"spawner.dev/test-no-such-node": "true"}
		}, lifecycle.ReasonUnschedulable, "not scheduled within 45s"},
		// Running but never listening: no sweeper can call it Ready.
		"never-ready": {func(s *spawnerv1.SessionLivedBackend) {
			s.Spec.Template.Containers[0].Env = []corev1.EnvVar{{Name: "DEMO_LISTEN_DELAY_MS", Value: "3600000"}}
		}, lifecycle.ReasonStartupTimeout, "not ready within 45s"},
	}
	for name, tc := range cases {
		e.newSlab(name, tc.mutate)
	}
	var wg sync.WaitGroup
	for name, tc := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var failed *spawnerv1.SessionLivedBackend
			deadline := time.Now().Add(100 * time.Second)
			for failed == nil && time.Now().Before(deadline) {
				if s, err := e.get(name); err == nil && s.Status.Phase == lifecycle.Failed {
					failed = s
				}
				time.Sleep(100 * time.Millisecond)
			}
			if failed == nil {
				s, _ := e.get(name)
				if s != nil {
					t.Errorf("%s: not Failed within 100s: %s", name, describe(s))
				} else {
					t.Errorf("%s: not Failed within 100s", name)
				}
				return
			}
			if failed.Status.Reason != tc.reason || !strings.Contains(failed.Status.Message, tc.message) {
				t.Errorf("%s: %s\nwant reason %s, message containing %q", name, describe(failed), tc.reason, tc.message)
			}
			if c := meta.FindStatusCondition(failed.Status.Conditions, lifecycle.ConditionFailed); c == nil || c.Reason != tc.reason {
				t.Errorf("%s: Failed condition %+v", name, c)
			}
			// The pod is deleted at once (well before the slab's retention ends;
			// how long the kubelet then takes to stop it is not the controller's)...
			clustertest.Eventually(t, 5*time.Second, name+"'s pod deleted", func() (bool, error) {
				p, err := e.pod(name)
				if apierrors.IsNotFound(err) {
					return true, nil
				}
				return err == nil && p.DeletionTimestamp != nil, err
			})
			if _, err := e.get(name); err != nil {
				t.Errorf("%s: slab gone before its retention: %v", name, err)
			}
			// ...and the slab after the retention, and the pod for good.
			e.waitGone(name+"'s slab", 30*time.Second, func() error { _, err := e.get(name); return err })
			e.waitGone(name+"'s pod", 60*time.Second, func() error { _, err := e.pod(name); return err })
		}()
	}
	wg.Wait()
	for name := range cases {
		if r := e.eventReasons(name); !contains(r, "Failed") {
			t.Errorf("%s: events %v, want a Failed one", name, r)
		}
	}
}

// TestDeletedSlabTakesItsPod: with the controller stopped, so only the
// garbage collector (owner reference) can do it.
func TestDeletedSlabTakesItsPod(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctrl := e.startController()
	e.newSlab("del", nil)
	e.waitPhase("del", lifecycle.Running, 90*time.Second)
	ctrl.Kill()
	if err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Delete(context.Background(), "del", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("pod of the deleted slab", 60*time.Second, func() error { _, err := e.pod("del"); return err })
}

// TestPodDeletedBehindLiveSlab: the documented choice is Failed/PodLost,
// never a second pod and never a slab stuck in Running.
func TestPodDeletedBehindLiveSlab(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startController()
	e.newSlab("lost", nil)
	e.waitPhase("lost", lifecycle.Running, 90*time.Second)
	if err := e.kube.CoreV1().Pods(e.ns).Delete(context.Background(), "lost", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	var s *spawnerv1.SessionLivedBackend
	clustertest.Eventually(t, 30*time.Second, "slab Failed", func() (bool, error) {
		var err error
		s, err = e.get("lost")
		return err == nil && s.Status.Phase == lifecycle.Failed, err
	})
	if s.Status.Reason != lifecycle.ReasonPodLost {
		t.Errorf("%s, want reason PodLost", describe(s))
	}
	time.Sleep(3 * time.Second)
	if p, err := e.pod("lost"); err == nil {
		t.Errorf("pod recreated (%s) for a slab whose pod was lost", p.UID)
	}
}

// TestSweptBackend: the pod is deleted with the template's grace period
// (SIGTERM, time to finish), and the slab only once the pod is gone.
func TestSweptBackend(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startController()
	e.newSlab("swept", nil) // terminationGracePeriodSeconds: 5
	e.waitPhase("swept", lifecycle.Running, 90*time.Second)
	e.record("swept", lifecycle.ConditionReady, lifecycle.ReasonAppListening, "")
	e.record("swept", lifecycle.ConditionSwept, lifecycle.ReasonIdle, "no connections for 300s")

	var (
		sawTerminating bool
		podGrace       *int64
		slabGoneFirst  bool
	)
	clustertest.Eventually(t, 60*time.Second, "slab deleted", func() (bool, error) {
		s, serr := e.get("swept")
		p, perr := e.pod("swept")
		// The first grace seen is the controller's; the kubelet later
		// finishes the deletion with grace 0.
		if perr == nil && p.DeletionTimestamp != nil && podGrace == nil {
			podGrace = p.DeletionGracePeriodSeconds
		}
		if serr == nil && s.Status.Phase == lifecycle.Terminating {
			sawTerminating = true
			if c := meta.FindStatusCondition(s.Status.Conditions, lifecycle.ConditionTerminating); c == nil || c.Reason != lifecycle.ReasonIdle {
				t.Errorf("Terminating condition %+v, want reason Idle", c)
			}
		}
		if serr != nil && perr == nil {
			slabGoneFirst = true
		}
		return serr != nil, nil
	})
	if !sawTerminating {
		t.Error("never saw phase Terminating")
	}
	if podGrace == nil || *podGrace != 5 {
		t.Errorf("pod deletion grace %v, want the template's 5s", ptr.Deref(podGrace, -1))
	}
	if slabGoneFirst {
		t.Error("slab deleted while its pod still existed")
	}
	if r := e.eventReasons("swept"); !contains(r, "Swept") || !contains(r, "Terminating") {
		t.Errorf("events %v, want Swept and Terminating", r)
	}
}

func TestMaxLifetime(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startController()
	e.newSlab("short", func(s *spawnerv1.SessionLivedBackend) { s.Spec.MaxLifetimeSeconds = ptr.To[int64](12) })
	s := e.waitPhase("short", lifecycle.Terminating, 60*time.Second)
	if s.Status.Reason != lifecycle.ReasonLifetimeExceeded {
		t.Errorf("%s, want reason LifetimeExceeded", describe(s))
	}
	if c := meta.FindStatusCondition(s.Status.Conditions, lifecycle.ConditionSwept); c == nil || c.Reason != lifecycle.ReasonLifetimeExceeded {
		t.Errorf("Swept condition %+v", c)
	}
	if age := time.Since(s.CreationTimestamp.Time); age < 11*time.Second {
		t.Errorf("terminated %v after creation, before maxLifetimeSeconds", age)
	}
	e.waitGone("slab past its lifetime", 60*time.Second, func() error { _, err := e.get("short"); return err })
	if _, err := e.pod("short"); err == nil {
		t.Error("pod outlived its slab")
	}
}
