package reconciler

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	spawnerfake "spawner.dev/generated/clientset/versioned/fake"
	"spawner.dev/generated/informers/externalversions"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// fixture is a controller over fake clientsets whose caches the test fills
// by hand (no informers run), so each sync sees exactly the given world.
type fixture struct {
	t        *testing.T
	kube     *kubefake.Clientset
	spawner  *spawnerfake.Clientset
	slabIdx  interface{ Add(interface{}) error }
	podIdx   interface{ Add(interface{}) error }
	c        *Controller
	clock    *clocktesting.FakeClock
	recorder *record.FakeRecorder
}

func newFixture(t *testing.T, slab *spawnerv1.SessionLivedBackend, pods ...*corev1.Pod) *fixture {
	f := &fixture{t: t, clock: clocktesting.NewFakeClock(t0), recorder: record.NewFakeRecorder(100)}
	var kubeObjs []runtime.Object
	for _, p := range pods {
		kubeObjs = append(kubeObjs, p)
	}
	f.kube = kubefake.NewClientset(kubeObjs...)
	f.spawner = spawnerfake.NewSimpleClientset(slab)
	sf := externalversions.NewSharedInformerFactory(f.spawner, 0)
	kf := informers.NewSharedInformerFactory(f.kube, 0)
	slabs := sf.Spawner().V1().SessionLivedBackends()
	podInf := kf.Core().V1().Pods()
	c, err := New(Params{Kube: f.kube, Spawner: f.spawner, Slabs: slabs, Pods: podInf, Recorder: f.recorder, Clock: f.clock,
		Options: Options{Sidecar: testSidecar, PublicBaseURL: "https://spawner.example/", StartupTimeout: 5 * time.Minute, FailedRetention: 10 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	slabs.Informer().GetIndexer().Add(slab)
	for _, p := range pods {
		podInf.Informer().GetIndexer().Add(p)
	}
	f.slabIdx, f.podIdx = slabs.Informer().GetIndexer(), podInf.Informer().GetIndexer()
	return f
}

func (f *fixture) sync(slab *spawnerv1.SessionLivedBackend) time.Duration {
	f.t.Helper()
	after, err := f.c.sync(context.Background(), slab.Namespace+"/"+slab.Name)
	if err != nil {
		f.t.Fatalf("sync: %v", err)
	}
	return after
}

func (f *fixture) slab(name string) *spawnerv1.SessionLivedBackend {
	f.t.Helper()
	s, err := f.spawner.SpawnerV1().SessionLivedBackends("ns").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *fixture) actions(verb, resource string) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range append(f.kube.Actions(), f.spawner.Actions()...) {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			out = append(out, a)
		}
	}
	return out
}

func (f *fixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func newSlab() *spawnerv1.SessionLivedBackend {
	s := testSlab("b")
	s.CreationTimestamp = metav1.NewTime(t0)
	return s
}

// ownedPod is the pod the controller would have created for slab.
func ownedPod(slab *spawnerv1.SessionLivedBackend, mutate func(*corev1.Pod)) *corev1.Pod {
	p := BuildPod(slab, testSidecar)
	p.UID = "pod-uid"
	if mutate != nil {
		mutate(p)
	}
	return p
}

func TestNewSlabGetsItsPod(t *testing.T) {
	slab := newSlab()
	f := newFixture(t, slab)
	after := f.sync(slab)
	if after != 5*time.Minute {
		t.Errorf("requeue after %v, want the startup timeout", after)
	}
	creates := f.actions("create", "pods")
	if len(creates) != 1 {
		t.Fatalf("%d pod creates, want 1", len(creates))
	}
	pod := creates[0].(k8stesting.CreateAction).GetObject().(*corev1.Pod)
	if pod.Name != "b" || len(pod.Spec.Containers) != 3 {
		t.Errorf("created %s with %d containers", pod.Name, len(pod.Spec.Containers))
	}
	got := f.slab("b")
	if !condIs(&got.Status, lifecycle.ConditionPodCreated, metav1.ConditionTrue, lifecycle.ReasonPodCreated) || got.Status.Phase != lifecycle.Pending {
		t.Errorf("status %+v, want Pending with PodCreated", got.Status)
	}
	if got.Status.URL != "https://spawner.example/p/b/" {
		t.Errorf("url %q", got.Status.URL)
	}
}

func TestAlreadyExistingPodIsAdoptedNotDuplicated(t *testing.T) {
	// A previous controller process created the pod and died before writing
	// status; this process's cache has not seen the pod yet.
	slab := newSlab()
	pod := ownedPod(slab, nil)
	f := newFixture(t, slab)
	f.kube.Tracker().Add(pod)
	f.sync(slab)
	if n := len(f.actions("create", "pods")); n != 1 {
		t.Errorf("%d create attempts, want 1 (answered AlreadyExists)", n)
	}
	pods, _ := f.kube.CoreV1().Pods("ns").List(context.Background(), metav1.ListOptions{})
	if len(pods.Items) != 1 {
		t.Errorf("%d pods, want 1", len(pods.Items))
	}
	if got := f.slab("b"); !condIs(&got.Status, lifecycle.ConditionPodCreated, metav1.ConditionTrue, lifecycle.ReasonPodCreated) {
		t.Errorf("status %+v, want PodCreated (adopted)", got.Status)
	}
}

func TestForeignPodWithTheNameFailsTheBackend(t *testing.T) {
	slab := newSlab()
	foreign := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "ns", UID: "other"}}
	f := newFixture(t, slab)
	f.kube.Tracker().Add(foreign)
	f.sync(slab)
	got := f.slab("b")
	if got.Status.Phase != lifecycle.Failed || got.Status.Reason != lifecycle.ReasonInvalidSpec {
		t.Errorf("status %+v, want Failed/InvalidSpec", got.Status)
	}
	if n := len(f.actions("delete", "pods")); n != 0 {
		t.Errorf("deleted someone else's pod")
	}
}

func TestRunningPodMakesRunningSlabWithNodeLabelAndEvents(t *testing.T) {
	slab := newSlab()
	pod := ownedPod(slab, func(p *corev1.Pod) {
		p.Spec.NodeName, p.Status.PodIP = "node-1", "10.244.0.9"
		p.Status.ContainerStatuses = []corev1.ContainerStatus{running("app"), running("helper"), running("spawner-sidecar")}
	})
	f := newFixture(t, slab, pod)
	f.clock.Step(10 * time.Second)
	if after := f.sync(slab); after != 5*time.Minute-10*time.Second {
		t.Errorf("requeue after %v, want the rest of the startup timeout", after)
	}
	got := f.slab("b")
	if got.Status.Phase != lifecycle.Running || got.Status.NodeName != "node-1" || got.Status.PodIP != "10.244.0.9" {
		t.Errorf("status %+v", got.Status)
	}
	if got.Labels[spawnerv1.LabelNode] != "node-1" {
		t.Errorf("labels %v, want %s=node-1", got.Labels, spawnerv1.LabelNode)
	}
	ev := f.events()
	if len(ev) != 2 || !strings.HasPrefix(ev[0], "Normal Scheduled ") || !strings.HasPrefix(ev[1], "Normal Running ") {
		t.Errorf("events %q, want Scheduled then Running", ev)
	}
	// A second sync with nothing new writes nothing.
	f.kube.ClearActions()
	f.spawner.ClearActions()
	f.slabIdx.Add(got)
	f.sync(got)
	if n := len(f.actions("update", "sessionlivedbackends")) + len(f.actions("patch", "sessionlivedbackends")); n != 0 {
		t.Errorf("%d writes on a steady backend, want 0", n)
	}
}

func TestFailedBackendLosesItsPodAtOnceAndTheSlabAfterRetention(t *testing.T) {
	slab := newSlab()
	pod := ownedPod(slab, func(p *corev1.Pod) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{waiting("app", "InvalidImageName", "bad ref")}
	})
	f := newFixture(t, slab, pod)
	after := f.sync(slab)
	got := f.slab("b")
	if got.Status.Phase != lifecycle.Failed || got.Status.Reason != lifecycle.ReasonImagePullFailed {
		t.Fatalf("status %+v, want Failed/ImagePullFailed", got.Status)
	}
	if dels := f.actions("delete", "pods"); len(dels) != 1 {
		t.Errorf("%d pod deletes, want 1", len(dels))
	}
	if ev := f.events(); len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning Failed ImagePullFailed: ") {
		t.Errorf("events %q", ev)
	}
	// The fake API server keeps the transition time it was given (the real clock).
	failedAt := lifecycle.TransitionTime(got.Status.Conditions, lifecycle.ConditionFailed).Time
	f.clock.SetTime(failedAt.Add(time.Minute))
	if after <= 0 {
		t.Errorf("no requeue for retention")
	}
	f.slabIdx.Add(got)
	if after := f.sync(got); after != 9*time.Minute {
		t.Errorf("requeue after %v, want 9m of retention left", after)
	}
	f.clock.SetTime(failedAt.Add(10 * time.Minute))
	f.sync(got)
	if dels := f.actions("delete", "sessionlivedbackends"); len(dels) != 1 {
		t.Errorf("%d slab deletes after retention, want 1", len(dels))
	}
}

func TestPodDeletedBehindLiveSlabIsPodLost(t *testing.T) {
	slab := newSlab()
	lifecycle.Record(&slab.Status, lifecycle.ConditionPodCreated, lifecycle.ReasonPodCreated, "", 1)
	lifecycle.Record(&slab.Status, lifecycle.ConditionRunning, lifecycle.ReasonContainersStarted, "", 1)
	f := newFixture(t, slab)
	f.sync(slab)
	got := f.slab("b")
	if got.Status.Phase != lifecycle.Failed || got.Status.Reason != lifecycle.ReasonPodLost {
		t.Errorf("status %+v, want Failed/PodLost", got.Status)
	}
	if n := len(f.actions("create", "pods")); n != 0 {
		t.Errorf("recreated the pod")
	}
	if n := len(f.actions("get", "pods")); n != 1 {
		t.Errorf("%d live pod reads, want 1 (the cache may lag)", n)
	}
}

func TestPodMissingFromCacheButAliveIsNotLost(t *testing.T) {
	slab := newSlab()
	lifecycle.Record(&slab.Status, lifecycle.ConditionPodCreated, lifecycle.ReasonPodCreated, "", 1)
	f := newFixture(t, slab)
	f.kube.Tracker().Add(ownedPod(slab, nil))
	f.sync(slab)
	if got := f.slab("b"); got.Status.Phase != lifecycle.Pending {
		t.Errorf("status %+v, want still Pending", got.Status)
	}
}

func TestSweptBackendIsTerminatedThenDeleted(t *testing.T) {
	slab := newSlab()
	lifecycle.Record(&slab.Status, lifecycle.ConditionPodCreated, lifecycle.ReasonPodCreated, "", 1)
	lifecycle.Record(&slab.Status, lifecycle.ConditionReady, lifecycle.ReasonAppListening, "", 1)
	lifecycle.Record(&slab.Status, lifecycle.ConditionSwept, lifecycle.ReasonIdle, "idle for 300s", 1)
	pod := ownedPod(slab, func(p *corev1.Pod) {
		p.Spec.NodeName = "n"
		p.Status.ContainerStatuses = []corev1.ContainerStatus{running("app"), running("spawner-sidecar")}
	})
	f := newFixture(t, slab, pod)
	f.sync(slab)
	got := f.slab("b")
	if got.Status.Phase != lifecycle.Terminating || !condIs(&got.Status, lifecycle.ConditionTerminating, metav1.ConditionTrue, lifecycle.ReasonIdle) {
		t.Errorf("status %+v, want Terminating/Idle", got.Status)
	}
	dels := f.actions("delete", "pods")
	if len(dels) != 1 {
		t.Fatalf("%d pod deletes, want 1", len(dels))
	}
	if g := dels[0].(k8stesting.DeleteActionImpl).DeleteOptions.GracePeriodSeconds; ptr.Deref(g, -1) != 7 {
		t.Errorf("grace %v, want the template's 7s", g)
	}
	if n := len(f.actions("delete", "sessionlivedbackends")); n != 0 {
		t.Errorf("slab deleted before its pod is gone")
	}
	// The pod is gone: the slab goes.
	f2 := newFixture(t, got)
	f2.sync(got)
	if n := len(f2.actions("delete", "sessionlivedbackends")); n != 1 {
		t.Errorf("%d slab deletes once the pod is gone, want 1", n)
	}
}

func TestMaxLifetime(t *testing.T) {
	slab := newSlab()
	slab.Spec.MaxLifetimeSeconds = ptr.To[int64](60)
	pod := ownedPod(slab, func(p *corev1.Pod) {
		p.Spec.NodeName = "n"
		p.Status.ContainerStatuses = []corev1.ContainerStatus{running("app"), running("spawner-sidecar")}
	})
	f := newFixture(t, slab, pod)
	f.clock.Step(20 * time.Second)
	if after := f.sync(slab); after != 40*time.Second {
		t.Errorf("requeue after %v, want 40s (lifetime left)", after)
	}
	got := f.slab("b")
	f.slabIdx.Add(got)
	f.clock.Step(40 * time.Second)
	f.sync(got)
	got = f.slab("b")
	if got.Status.Phase != lifecycle.Terminating || got.Status.Reason != lifecycle.ReasonLifetimeExceeded ||
		!condIs(&got.Status, lifecycle.ConditionSwept, metav1.ConditionTrue, lifecycle.ReasonLifetimeExceeded) {
		t.Errorf("status %+v, want Swept+Terminating/LifetimeExceeded", got.Status)
	}
	if n := len(f.actions("delete", "pods")); n != 1 {
		t.Errorf("%d pod deletes, want 1", n)
	}
	var reasons []string
	for _, e := range f.events() {
		reasons = append(reasons, strings.Fields(e)[1])
	}
	if strings.Join(reasons, ",") != "Scheduled,Running,Swept,Terminating" {
		t.Errorf("event reasons %v", reasons)
	}
}

func TestInvalidSpecFails(t *testing.T) {
	slab := newSlab()
	slab.Spec.HTTPPort = 9090
	f := newFixture(t, slab)
	f.sync(slab)
	if got := f.slab("b"); got.Status.Phase != lifecycle.Failed || got.Status.Reason != lifecycle.ReasonInvalidSpec {
		t.Errorf("status %+v, want Failed/InvalidSpec", got.Status)
	}
	if n := len(f.actions("create", "pods")); n != 0 {
		t.Errorf("created a pod for an invalid spec")
	}
}

func TestConflictIsReturnedForRequeue(t *testing.T) {
	slab := newSlab()
	f := newFixture(t, slab)
	f.spawner.PrependReactor("update", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errConflict()
	})
	if _, err := f.c.sync(context.Background(), "ns/b"); err == nil {
		t.Error("conflict swallowed")
	}
}

func errConflict() error {
	return apierrors.NewConflict(spawnerv1.Resource("sessionlivedbackends"), "b", nil)
}

func TestTransitionsWrittenByOthersGetEvents(t *testing.T) {
	slab := newSlab()
	f := newFixture(t, slab)
	running := slab.DeepCopy()
	lifecycle.Record(&running.Status, lifecycle.ConditionRunning, lifecycle.ReasonContainersStarted, "", 1)
	ready := running.DeepCopy()
	lifecycle.Record(&ready.Status, lifecycle.ConditionReady, lifecycle.ReasonAppListening, "listening on 8000", 1)
	swept := ready.DeepCopy()
	lifecycle.Record(&swept.Status, lifecycle.ConditionSwept, lifecycle.ReasonIdle, "idle", 1)
	terminating := swept.DeepCopy()
	lifecycle.Record(&terminating.Status, lifecycle.ConditionTerminating, lifecycle.ReasonIdle, "idle", 1)
	f.c.observeTransition(slab, running)      // ours: its Event came with the write
	f.c.observeTransition(running, ready)     // sweeper
	f.c.observeTransition(ready, ready)       // resync
	f.c.observeTransition(ready, swept)       // sweeper
	f.c.observeTransition(swept, terminating) // ours
	ev := f.events()
	if len(ev) != 2 || ev[0] != "Normal Ready AppListening: listening on 8000" || ev[1] != "Normal Swept Idle: idle" {
		t.Errorf("events %q", ev)
	}
}

// TestClaimedPodStillThePoolsInTheCacheIsNotForeign: a slab bound to a warm
// pod it took, seen before the pod cache has the take (the pod still the
// pool's there): the API server has the pod controlled by the slab, so the
// backend goes on; it failed InvalidSpec ("does not belong to this
// backend") when the cache was believed.
func TestClaimedPodStillThePoolsInTheCacheIsNotForeign(t *testing.T) {
	slab := newSlab()
	slab.Annotations = map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-x"}
	taken := ownedPod(slab, func(p *corev1.Pod) { p.Name = "rooms-x" })
	f := newFixture(t, slab, taken)
	stale := taken.DeepCopy()
	stale.OwnerReferences = []metav1.OwnerReference{{APIVersion: spawnerv1.SchemeGroupVersion.String(), Kind: "BackendPool",
		Name: "rooms", UID: "pool-uid", Controller: ptr.To(true)}}
	if err := f.podIdx.Add(stale); err != nil {
		t.Fatal(err)
	}
	// The claim never recorded it, and the cache never showed the take:
	// past the claim timeout the controller asks the API and writes.
	f.clock.Step(max(lifecycle.ClaimRecordWait, ClaimTimeout))
	f.sync(slab)
	if got := f.slab("b"); got.Status.Phase == lifecycle.Failed || !condIs(&got.Status, lifecycle.ConditionPodCreated, metav1.ConditionTrue, lifecycle.ReasonPodCreated) {
		t.Errorf("status %+v, want the claimed pod adopted (PodCreated), not Failed", got.Status)
	}
}

// TestControllerLeavesAPendingClaimsStatusToTheClaim: a slab just bound to a
// warm pod gets its status from its claim (Ready and everything up to it,
// node, pod IP, URL), written by the api-server right after it answered.
// The controller does not write before it (the two raced, and one
// conflicted and wrote again: three status writes per claim in a burst);
// once it came, the controller has nothing to write, not even the reasons
// of the milestones the claim recorded (WarmPodClaimed). If it never comes,
// the controller writes once ClaimRecordWait has passed.
func TestControllerLeavesAPendingClaimsStatusToTheClaim(t *testing.T) {
	slab := newSlab()
	slab.Annotations = map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-x"}
	slab.Labels = map[string]string{spawnerv1.LabelNode: "n1"}
	taken := ownedPod(slab, func(p *corev1.Pod) {
		p.Name = "rooms-x"
		p.Spec.NodeName = "n1"
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.2.3", ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
			{Name: spawnerv1.SidecarContainerName, Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}
	})
	for _, claimRecords := range []bool{true, false} {
		f := newFixture(t, slab.DeepCopy(), taken)
		f.clock.Step(time.Second)
		if after := f.sync(slab); after <= 0 || after > lifecycle.ClaimRecordWait-time.Second {
			t.Errorf("requeue after %v, want by the end of the claim's wait (%v)", after, lifecycle.ClaimRecordWait-time.Second)
		}
		if n := len(f.actions("update", "sessionlivedbackends")) + len(f.actions("patch", "sessionlivedbackends")); n != 0 {
			t.Fatalf("%d slab writes while its claim records it, want 0", n)
		}
		cur := f.slab("b")
		if claimRecords {
			lifecycle.RecordClaimed(&cur.Status, "claimed warm pod rooms-x", cur.Generation)
			cur.Status.NodeName, cur.Status.PodIP = "n1", "10.1.2.3"
			cur.Status.URL = f.c.opts.publicURL("b")
			var err error
			if cur, err = f.spawner.SpawnerV1().SessionLivedBackends("ns").UpdateStatus(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := f.slabIdx.Add(cur); err != nil {
				t.Fatal(err)
			}
			f.spawner.ClearActions()
			f.sync(cur)
			if n := len(f.actions("update", "sessionlivedbackends")) + len(f.actions("patch", "sessionlivedbackends")); n != 0 {
				t.Errorf("%d slab writes after the claim recorded it, want 0 (%+v)", n, f.slab("b").Status.Conditions)
			}
			continue
		}
		f.clock.Step(lifecycle.ClaimRecordWait)
		f.sync(cur)
		if got := f.slab("b"); !condIs(&got.Status, lifecycle.ConditionRunning, metav1.ConditionTrue, lifecycle.ReasonContainersStarted) {
			t.Errorf("no claim recorded it within %v: status %+v, want the controller's", lifecycle.ClaimRecordWait, got.Status)
		}
	}
}

// poolPod is warm pod name of pool rooms, unclaimed.
func poolPod(name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name),
		Labels: map[string]string{spawnerv1.LabelPool: "rooms"},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: spawnerv1.SchemeGroupVersion.String(), Kind: "BackendPool",
			Name: "rooms", UID: "pool-uid", Controller: ptr.To(true)}}},
		Spec:   corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

// TestSlabAwaitingItsTakeIsClaiming: a slab the api-server created bound to
// the warm pod its claim is about to take (preBind) does not hold it yet:
// until ClaimTimeout the controller leaves it alone (no status, no pod, and
// the pool's pod is not called foreign, which failed the backend
// InvalidSpec before); then, still not holding it, the claim is closed
// cold, its node label (that pod's node) removed, and the pod left to its
// pool.
func TestSlabAwaitingItsTakeIsClaiming(t *testing.T) {
	slab := newSlab()
	slab.Annotations = map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-x"}
	slab.Labels = map[string]string{spawnerv1.LabelNode: "n1"}
	f := newFixture(t, slab, poolPod("rooms-x"))
	f.clock.Step(time.Second)
	if after := f.sync(slab); after <= 0 || after > ClaimTimeout-time.Second {
		t.Errorf("requeue after %v, want by ClaimTimeout (%v)", after, ClaimTimeout-time.Second)
	}
	if a := f.spawner.Actions(); len(f.actions("update", "sessionlivedbackends"))+len(f.actions("patch", "sessionlivedbackends")) != 0 {
		t.Fatalf("slab written while its take is in flight: %v (status %+v)", a, f.slab("b").Status)
	}
	if n := len(f.actions("create", "pods")) + len(f.actions("delete", "pods")); n != 0 {
		t.Fatalf("%d pod writes while the take is in flight", n)
	}
	f.clock.Step(ClaimTimeout)
	f.sync(f.slab("b"))
	got := f.slab("b")
	if pod, _ := spawnerv1.PodNameOf(got); pod != "b" || got.Labels[spawnerv1.LabelNode] != "" || got.Status.Phase == lifecycle.Failed {
		t.Errorf("after ClaimTimeout: bound to %q, node label %q, phase %s; want closed cold, no node label, not failed", pod, got.Labels[spawnerv1.LabelNode], got.Status.Phase)
	}
	if n := len(f.actions("delete", "pods")); n != 0 {
		t.Errorf("the pool's pod was deleted")
	}
	if ev := f.events(); len(ev) == 0 || !strings.Contains(ev[0], "ClaimClosed") {
		t.Errorf("events %q, want ClaimClosed", ev)
	}
}

// TestALostTakesNextPodIsNoStray: the api-server lost the pod its slab was
// created bound to (another spawn holds it) and took another, which it is
// about to bind: that pod is the claim's, not a stray to delete (the
// controller deleted it before, as a pod the slab controls but is not bound
// to).
func TestALostTakesNextPodIsNoStray(t *testing.T) {
	slab := newSlab()
	slab.Annotations = map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-x"}
	other := newSlab()
	other.Name, other.UID = "other", "other-uid"
	lost := poolPod("rooms-x")
	lost.Labels[spawnerv1.LabelBackend] = "other"
	lost.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(other, slabGVK)}
	next := poolPod("rooms-y")
	next.Labels[spawnerv1.LabelBackend] = "b"
	next.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(slab, slabGVK)}
	f := newFixture(t, slab, lost, next)
	f.clock.Step(time.Second)
	f.sync(slab)
	if n := len(f.actions("delete", "pods")); n != 0 {
		t.Errorf("%d pods deleted while the claim binds the pod it took", n)
	}
	if got := f.slab("b"); got.Status.Phase == lifecycle.Failed {
		t.Errorf("status %+v: failed for a pod another slab holds", got.Status)
	}
}
