package reconciler

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/routerproof"
	"spawner.dev/common/wire"
)

func testSlab(name string) *spawnerv1.SessionLivedBackend {
	return &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: "uid-" + "name", Generation: 1},
		Spec: spawnerv1.SessionLivedBackendSpec{
			HTTPPort: 8000,
			Template: spawnerv1.BackendPodTemplate{
				Metadata: spawnerv1.PodMetadata{
					Labels:      map[string]string{"team": "a", spawnerv1.LabelBackend: "spoofed"},
					Annotations: map[string]string{"note": "x"},
				},
				Containers: []corev1.Container{
					{Name: "app", Image: "example/app:1", Env: []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "PORT", Value: "1"}},
						ImagePullPolicy: corev1.PullAlways},
					{Name: "helper", Image: "example/helper:1"},
				},
				NodeSelector:                  map[string]string{"disk": "ssd"},
				Tolerations:                   []corev1.Toleration{{Key: "k", Operator: corev1.TolerationOpExists}},
				ServiceAccountName:            "sa",
				PriorityClassName:             "high",
				TerminationGracePeriodSeconds: ptr.To[int64](7),
				ImagePullSecrets:              []corev1.LocalObjectReference{{Name: "pull"}},
			},
		},
	}
}

var testSidecar = SidecarOptions{Image: "sidecar:dev", PullPolicy: corev1.PullIfNotPresent,
	CPURequest: resource.MustParse("10m"), MemoryRequest: resource.MustParse("16Mi")}

func TestBuildPodFollowsTheContract(t *testing.T) {
	slab := testSlab("b1")
	before := slab.DeepCopy()
	pod := BuildPod(slab, testSidecar)

	if pod.Name != "b1" || pod.Namespace != "ns" {
		t.Errorf("pod %s/%s, want ns/b1", pod.Namespace, pod.Name)
	}
	if len(pod.OwnerReferences) != 1 {
		t.Fatalf("owner refs %v", pod.OwnerReferences)
	}
	ref := pod.OwnerReferences[0]
	if ref.Kind != "SessionLivedBackend" || ref.APIVersion != "spawner.dev/v1" || ref.Name != "b1" || ref.UID != slab.UID ||
		!ptr.Deref(ref.Controller, false) || !ptr.Deref(ref.BlockOwnerDeletion, false) {
		t.Errorf("owner ref %+v", ref)
	}
	if pod.Labels[spawnerv1.LabelManagedBy] != "spawner" || pod.Labels[spawnerv1.LabelBackend] != "b1" || pod.Labels["team"] != "a" {
		t.Errorf("labels %v", pod.Labels)
	}
	if pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds] != "300" || pod.Annotations["note"] != "x" {
		t.Errorf("annotations %v", pod.Annotations)
	}
	if pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %q", pod.Spec.RestartPolicy)
	}
	if n := len(pod.Spec.Containers); n != 3 {
		t.Fatalf("%d containers, want app, helper, sidecar", n)
	}
	app := pod.Spec.Containers[0]
	var port []string
	for _, e := range app.Env {
		if e.Name == "PORT" {
			port = append(port, e.Value)
		}
	}
	if len(port) != 1 || port[0] != "8000" || app.Env[0].Name != "A" {
		t.Errorf("app env %v, want PORT=8000 once (user's A kept)", app.Env)
	}
	if app.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("app pull policy %q, want the user's", app.ImagePullPolicy)
	}
	if h := pod.Spec.Containers[1]; len(h.Env) != 0 || h.ImagePullPolicy != "" {
		t.Errorf("helper container changed: %+v", h)
	}
	sc := pod.Spec.Containers[2]
	if sc.Name != "spawner-sidecar" || sc.Image != "sidecar:dev" || sc.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("sidecar %+v", sc)
	}
	wantArgs := []string{"--serve-port=9090", "--upstream-port=8000", "--status-port=9091"}
	if len(sc.Args) != 3 || sc.Args[0] != wantArgs[0] || sc.Args[1] != wantArgs[1] || sc.Args[2] != wantArgs[2] {
		t.Errorf("sidecar args %v, want %v", sc.Args, wantArgs)
	}
	if len(sc.Ports) != 2 || sc.Ports[0].Name != "http" || sc.Ports[0].ContainerPort != 9090 || sc.Ports[1].Name != "status" || sc.Ports[1].ContainerPort != 9091 {
		t.Errorf("sidecar ports %v", sc.Ports)
	}
	if sc.Resources.Requests.Cpu().String() != "10m" || sc.Resources.Requests.Memory().String() != "16Mi" {
		t.Errorf("sidecar requests %v", sc.Resources.Requests)
	}
	s := pod.Spec
	if s.NodeSelector["disk"] != "ssd" || len(s.Tolerations) != 1 || s.ServiceAccountName != "sa" || s.PriorityClassName != "high" ||
		ptr.Deref(s.TerminationGracePeriodSeconds, 0) != 7 || len(s.ImagePullSecrets) != 1 {
		t.Errorf("placement/sizing fields not copied: %+v", s)
	}
	// The slab in the informer cache must never be modified.
	if slab.Spec.Template.Containers[0].Env[1].Value != "1" || len(slab.Spec.Template.Containers) != len(before.Spec.Template.Containers) {
		t.Error("BuildPod modified the slab")
	}
}

func TestBuildPodDefaults(t *testing.T) {
	slab := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "ns"},
		Spec: spawnerv1.SessionLivedBackendSpec{
			GracePeriodSeconds: ptr.To[int64](42),
			Template:           spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: "x"}}},
		},
	}
	pod := BuildPod(slab, SidecarOptions{Image: "s"})
	if pod.Spec.Containers[0].Env[0] != (corev1.EnvVar{Name: "PORT", Value: "8080"}) {
		t.Errorf("env %v, want PORT=8080 (default)", pod.Spec.Containers[0].Env)
	}
	if pod.Spec.Containers[1].Args[1] != "--upstream-port=8080" {
		t.Errorf("args %v", pod.Spec.Containers[1].Args)
	}
	if pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds] != "42" {
		t.Errorf("annotations %v", pod.Annotations)
	}
	if pod.Spec.Containers[1].Resources.Requests != nil || pod.Spec.TerminationGracePeriodSeconds != nil {
		t.Errorf("unexpected defaults: %+v", pod.Spec)
	}
	if a := pod.Spec.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("automountServiceAccountToken %v, want false when the template says nothing", a)
	}
}

func TestBuildPodKeepsTheTemplatesTokenChoice(t *testing.T) {
	for _, want := range []bool{true, false} {
		slab := &spawnerv1.SessionLivedBackend{
			ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "ns"},
			Spec: spawnerv1.SessionLivedBackendSpec{Template: spawnerv1.BackendPodTemplate{
				AutomountServiceAccountToken: ptr.To(want),
				Containers:                   []corev1.Container{{Name: "app", Image: "x"}},
			}},
		}
		pod := BuildPod(slab, SidecarOptions{Image: "s"})
		if a := pod.Spec.AutomountServiceAccountToken; a == nil || *a != want {
			t.Errorf("template %v: pod has %v", want, a)
		}
		*slab.Spec.Template.AutomountServiceAccountToken = !want
		if *pod.Spec.AutomountServiceAccountToken != want {
			t.Error("the pod shares the slab's pointer")
		}
	}
}

// Every pod gets its own router proof, in the sidecar's env and nowhere else:
// the app (the user's code) must not hold the value that opens its sidecar,
// and one backend's value must not open another's.
func TestBuildPodDrawsARouterProofPerPodForTheSidecarOnly(t *testing.T) {
	p1, p2 := BuildPod(testSlab("b1"), testSidecar), BuildPod(testSlab("b2"), testSidecar)
	proof := func(p *corev1.Pod) string { return routerproof.FromPod(p, spawnerv1.SidecarContainerName) }
	v1, v2 := proof(p1), proof(p2)
	if len(v1) != 43 || len(v2) != 43 {
		t.Fatalf("proofs %q and %q, want 32 random bytes in base64url (43 characters)", v1, v2)
	}
	if v1 == v2 {
		t.Fatalf("two pods got the same proof %q", v1)
	}
	for _, c := range p1.Spec.Containers {
		for _, e := range c.Env {
			if c.Name != spawnerv1.SidecarContainerName && (e.Name == wire.SidecarRouterProofEnv || e.Value == v1) {
				t.Errorf("container %s carries the proof in env %s", c.Name, e.Name)
			}
		}
	}
	for _, c := range p1.Spec.InitContainers {
		if len(c.Env) > 0 {
			t.Errorf("init container %s got env %v", c.Name, c.Env)
		}
	}
	if p1.Annotations[wire.SidecarRouterProofEnv] != "" || len(p1.Spec.Containers[len(p1.Spec.Containers)-1].Args) != 3 {
		t.Error("the proof must be in the env only, not in annotations or args")
	}
}

// TestBuildPodPassesTheIdlePolicyToTheSidecar: wsIdleSeconds and
// countRequests reach the deployed sidecar's flags; the defaults add none.
func TestBuildPodPassesTheIdlePolicyToTheSidecar(t *testing.T) {
	off := false
	for _, tc := range []struct {
		policy *spawnerv1.IdlePolicy
		want   []string
	}{
		{nil, nil},
		{&spawnerv1.IdlePolicy{}, nil},
		{&spawnerv1.IdlePolicy{WSIdleSeconds: 30}, []string{"--ws-idle-seconds=30"}},
		{&spawnerv1.IdlePolicy{WSIdleSeconds: 5, CountRequests: &off}, []string{"--ws-idle-seconds=5", "--count-requests=false"}},
	} {
		slab := testSlab("p")
		slab.Spec.IdlePolicy = tc.policy
		pod := BuildPod(slab, testSidecar)
		args := pod.Spec.Containers[len(pod.Spec.Containers)-1].Args
		if got := strings.Join(args[3:], " "); got != strings.Join(tc.want, " ") {
			t.Errorf("policy %+v: extra sidecar args %q, want %q", tc.policy, got, tc.want)
		}
	}
}
