package reconciler

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func podWith(mutate func(*corev1.Pod)) *corev1.Pod {
	pod := BuildPod(testSlab("b"), testSidecar)
	mutate(pod)
	return pod
}

func running(name string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
}

func waiting(name, reason, msg string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}
}

func terminated(name string, code int32, reason string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason}}}
}

func TestClassifyFailure(t *testing.T) {
	cases := []struct {
		name     string
		statuses []corev1.ContainerStatus
		init     []corev1.ContainerStatus
		phase    corev1.PodPhase
		reason   string
		want     string // reason, "" for none
		contains string
	}{
		{name: "pending", statuses: []corev1.ContainerStatus{waiting("app", "ContainerCreating", "")}},
		{name: "running", statuses: []corev1.ContainerStatus{running("app"), running("helper"), running("spawner-sidecar")}},
		{name: "ErrImagePull", statuses: []corev1.ContainerStatus{waiting("app", "ErrImagePull", "not found"), running("spawner-sidecar")},
			want: lifecycle.ReasonImagePullFailed, contains: `container "app": image "example/app:1" cannot be pulled: ErrImagePull: not found`},
		{name: "ImagePullBackOff", statuses: []corev1.ContainerStatus{waiting("app", "ImagePullBackOff", "")}, want: lifecycle.ReasonImagePullFailed},
		{name: "InvalidImageName", statuses: []corev1.ContainerStatus{waiting("app", "InvalidImageName", "")}, want: lifecycle.ReasonImagePullFailed},
		{name: "ErrImageNeverPull", statuses: []corev1.ContainerStatus{waiting("spawner-sidecar", "ErrImageNeverPull", "")},
			want: lifecycle.ReasonImagePullFailed, contains: "spawner-sidecar"},
		{name: "runAsNonRoot, root image", statuses: []corev1.ContainerStatus{waiting("app", "CreateContainerConfigError",
			"container has runAsNonRoot and image will run as root (pod: \"b_ns(uid)\", container: app)"), running("spawner-sidecar")},
			want: lifecycle.ReasonInvalidSpec, contains: `container "app": image "example/app:1" cannot run as non-root: container has runAsNonRoot and image will run as root`},
		{name: "runAsNonRoot, user name", init: []corev1.ContainerStatus{waiting("init", "CreateContainerConfigError",
			"container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root (pod: \"b_ns(uid)\", container: init)")},
			want: lifecycle.ReasonInvalidSpec, contains: "non-numeric user"},
		{name: "runAsUser 0 under runAsNonRoot", statuses: []corev1.ContainerStatus{waiting("app", "CreateContainerConfigError",
			"container's runAsUser breaks non-root policy (pod: \"b_ns(uid)\", container: app)")}, want: lifecycle.ReasonInvalidSpec},
		{name: "a missing ConfigMap may appear", statuses: []corev1.ContainerStatus{waiting("app", "CreateContainerConfigError",
			`configmap "settings" not found`)}},
		{name: "init image", init: []corev1.ContainerStatus{waiting("init", "ErrImagePull", "")}, want: lifecycle.ReasonImagePullFailed},
		{name: "app exit 1", statuses: []corev1.ContainerStatus{terminated("app", 1, "Error"), running("spawner-sidecar")},
			want: lifecycle.ReasonAppExited, contains: `application container "app" exited with code 1 (Error)`},
		{name: "app exit 0", statuses: []corev1.ContainerStatus{terminated("app", 0, "Completed"), running("spawner-sidecar")},
			want: lifecycle.ReasonAppExited, contains: "code 0"},
		{name: "app reported before sidecar", statuses: []corev1.ContainerStatus{terminated("spawner-sidecar", 2, "Error"), terminated("app", 137, "OOMKilled")},
			want: lifecycle.ReasonAppExited, contains: `application container "app" exited with code 137 (OOMKilled)`},
		{name: "sidecar exit", statuses: []corev1.ContainerStatus{running("app"), terminated("spawner-sidecar", 2, "Error")},
			want: lifecycle.ReasonAppExited, contains: "sidecar container"},
		{name: "helper exit 0 is fine", statuses: []corev1.ContainerStatus{running("app"), terminated("helper", 0, "Completed"), running("spawner-sidecar")}},
		{name: "helper exit 3", statuses: []corev1.ContainerStatus{running("app"), terminated("helper", 3, "Error")},
			want: lifecycle.ReasonAppExited, contains: `container "helper" exited with code 3`},
		{name: "init exit 1", init: []corev1.ContainerStatus{terminated("init", 1, "Error")}, want: lifecycle.ReasonAppExited, contains: "init container"},
		{name: "init exit 0", init: []corev1.ContainerStatus{terminated("init", 0, "Completed")}},
		{name: "evicted", phase: corev1.PodFailed, reason: "Evicted", want: lifecycle.ReasonPodLost, contains: "pod failed: Evicted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := podWith(func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "example/init:1"}}
				p.Status.ContainerStatuses = tc.statuses
				p.Status.InitContainerStatuses = tc.init
				p.Status.Phase, p.Status.Reason = tc.phase, tc.reason
			})
			f := ClassifyFailure(pod)
			switch {
			case tc.want == "" && f != nil:
				t.Errorf("failure %+v, want none", f)
			case tc.want != "" && f == nil:
				t.Errorf("no failure, want %s", tc.want)
			case f != nil && (f.Reason != tc.want || !strings.Contains(f.Message, tc.contains)):
				t.Errorf("failure %+v, want reason %s with %q", f, tc.want, tc.contains)
			}
		})
	}
}

func TestObservePod(t *testing.T) {
	pod := podWith(func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/1 nodes match"}}
	})
	if v := ObservePod(pod); v.Unschedulable != "0/1 nodes match" || v.NodeName != "" || v.Started {
		t.Errorf("unschedulable pod: %+v", v)
	}
	pod = podWith(func(p *corev1.Pod) {
		p.Spec.NodeName, p.Status.PodIP = "n1", "10.0.0.5"
		p.Status.ContainerStatuses = []corev1.ContainerStatus{running("app"), waiting("helper", "ContainerCreating", ""), waiting("spawner-sidecar", "ContainerCreating", "")}
	})
	if v := ObservePod(pod); v.Started || v.NodeName != "n1" || v.PodIP != "10.0.0.5" || v.Waiting != "helper: ContainerCreating; spawner-sidecar: ContainerCreating" {
		t.Errorf("starting pod: %+v", v)
	}
	pod.Status.ContainerStatuses[2] = running("spawner-sidecar")
	if v := ObservePod(pod); !v.Started {
		t.Errorf("app and sidecar running, helper not: %+v, want Started", v)
	}
}

func TestApplyPodDeadlines(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	slab := testSlab("b")
	slab.CreationTimestamp = metav1.NewTime(created)
	unschedulable := podWith(func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "no fit"}}
	})
	startedPod := podWith(func(p *corev1.Pod) {
		p.Spec.NodeName = "n1"
		p.Status.ContainerStatuses = []corev1.ContainerStatus{running("app"), running("spawner-sidecar")}
	})

	st := &spawnerv1.SessionLivedBackendStatus{}
	ch := &statusChange{status: st}
	if after := applyPod(slab, ch, unschedulable, created.Add(time.Minute), 5*time.Minute); after != 4*time.Minute {
		t.Errorf("requeue after %v, want 4m", after)
	}
	if st.Phase != lifecycle.Pending || !condIs(st, lifecycle.ConditionScheduled, metav1.ConditionFalse, lifecycle.ReasonUnschedulable) {
		t.Errorf("status %+v, want Pending with Scheduled=False/Unschedulable", st)
	}
	applyPod(slab, ch, unschedulable, created.Add(5*time.Minute), 5*time.Minute)
	if st.Phase != lifecycle.Failed || st.Reason != lifecycle.ReasonUnschedulable || !strings.Contains(st.Message, "no fit") {
		t.Errorf("status %+v, want Failed/Unschedulable", st)
	}

	st = &spawnerv1.SessionLivedBackendStatus{}
	ch = &statusChange{status: st}
	applyPod(slab, ch, startedPod, created.Add(time.Second), 5*time.Minute)
	if st.Phase != lifecycle.Running || st.NodeName != "n1" {
		t.Errorf("status %+v, want Running on n1", st)
	}
	if len(ch.transitions) != 2 || ch.transitions[0].Phase != lifecycle.Scheduled || ch.transitions[1].Phase != lifecycle.Running {
		t.Errorf("transitions %+v, want Scheduled then Running", ch.transitions)
	}
	applyPod(slab, ch, startedPod, created.Add(6*time.Minute), 5*time.Minute)
	if st.Phase != lifecycle.Failed || st.Reason != lifecycle.ReasonStartupTimeout || !strings.Contains(st.Message, "never listened on port 8000") {
		t.Errorf("status %+v, want Failed/StartupTimeout", st)
	}

	// Ready (written by the sweeper) lifts the deadline.
	st = &spawnerv1.SessionLivedBackendStatus{}
	lifecycle.Record(st, lifecycle.ConditionReady, lifecycle.ReasonAppListening, "", 1)
	ch = &statusChange{status: st}
	if after := applyPod(slab, ch, startedPod, created.Add(time.Hour), 5*time.Minute); after != 0 || st.Phase != lifecycle.Ready {
		t.Errorf("ready backend: after %v, status %+v", after, st)
	}
	// ...but not failures.
	exited := startedPod.DeepCopy()
	exited.Status.ContainerStatuses[0] = terminated("app", 1, "Error")
	applyPod(slab, ch, exited, created.Add(time.Hour), 5*time.Minute)
	if st.Phase != lifecycle.Failed || st.Reason != lifecycle.ReasonAppExited {
		t.Errorf("status %+v, want Failed/AppExited", st)
	}
	// Nothing is recorded after Failed.
	applyPod(slab, ch, startedPod, created.Add(time.Hour), 5*time.Minute)
	if st.Phase != lifecycle.Failed || st.Reason != lifecycle.ReasonAppExited {
		t.Errorf("status %+v, want still Failed/AppExited", st)
	}
}

func condIs(st *spawnerv1.SessionLivedBackendStatus, typ string, status metav1.ConditionStatus, reason string) bool {
	c := meta.FindStatusCondition(st.Conditions, typ)
	return c != nil && c.Status == status && c.Reason == reason
}
