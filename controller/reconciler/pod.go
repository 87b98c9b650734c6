package reconciler

import (
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/routerproof"
	"spawner.dev/common/wire"
)

// SidecarOptions say how the spawner-sidecar container of every backend pod looks.
type SidecarOptions struct {
	Image         string
	PullPolicy    corev1.PullPolicy
	CPURequest    resource.Quantity
	MemoryRequest resource.Quantity
}

// slabGVK is the kind owner references point to.
var slabGVK = spawnerv1.SchemeGroupVersion.WithKind("SessionLivedBackend")

// BuildPod is the backend pod of a slab, exactly as docs/architecture.md
// describes it: same name and namespace, controlled by the slab, the user's
// containers (the first gets PORT) followed by the sidecar, restartPolicy
// Never, and the template's placement and sizing fields.
func BuildPod(slab *spawnerv1.SessionLivedBackend, sc SidecarOptions) *corev1.Pod {
	pod := buildBackendPod(&slab.Spec, sc)
	pod.Name = slab.Name
	pod.Namespace = slab.Namespace
	pod.Labels[spawnerv1.LabelBackend] = slab.Name
	pod.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(slab, slabGVK)}
	return pod
}

// poolGVK is the kind a warm pod's owner reference points to.
var poolGVK = spawnerv1.SchemeGroupVersion.WithKind("BackendPool")

// WarmPodStartupProbe is the startup probe of a warm pod's sidecar: its
// /readyz answers 200 once the app listens, and only then does the kubelet
// mark the pod Ready (the pool's readiness: docs/pools.md). A startup probe
// stops once it succeeded, so a warm pod at rest costs no probe traffic; a
// period of 1 s (the kubelet's smallest) adds at most 1 s to a warm pod's
// start, which no claim waits for. 300 failures (5 min, the controller's
// default startup timeout) kill a sidecar whose app never listens; the pod
// (restartPolicy Never) then fails and the pool replaces it.
func WarmPodStartupProbe() *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: "/readyz", Port: intstr.FromInt32(spawnerv1.SidecarStatusPort)}},
		PeriodSeconds:    1,
		TimeoutSeconds:   1,
		FailureThreshold: 300,
	}
}

// BuildWarmPod is a warm pod of a pool: the backend pod its spec makes (the
// same builder as BuildPod, so a claimed warm pod is a backend like any
// other), named <pool>-<random>, controlled by the pool, labelled with the
// pool and templateHash instead of a backend, with the app defaults d
// applied and the sidecar's startup probe on /readyz.
func BuildWarmPod(pool *spawnerv1.BackendPool, templateHash string, sc SidecarOptions, d AppResources) *corev1.Pod {
	spec := pool.BackendSpec()
	pod := buildBackendPod(&spec, sc)
	pod.GenerateName = pool.Name + "-"
	pod.Namespace = pool.Namespace
	// Unclaimed, it serves no backend: the sweeper follows only pods with
	// that label, so a template's own value must not survive.
	delete(pod.Labels, spawnerv1.LabelBackend)
	pod.Labels[spawnerv1.LabelPool] = pool.Name
	pod.Labels[spawnerv1.LabelPoolTemplateHash] = templateHash
	pod.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(pool, poolGVK)}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == spawnerv1.SidecarContainerName {
			pod.Spec.Containers[i].StartupProbe = WarmPodStartupProbe()
		}
	}
	applyAppResourceDefaults(pod, d)
	return pod
}

// buildBackendPod is the pod a backend spec makes, without a name, owner or
// backend label: what BuildPod and BuildWarmPod share.
func buildBackendPod(spec *spawnerv1.SessionLivedBackendSpec, sc SidecarOptions) *corev1.Pod {
	t := spec.Template.DeepCopy()
	applyRestrictedDefaults(&t.SecurityContext, t.InitContainers, t.Containers)
	port := spec.EffectiveHTTPPort()

	labels := map[string]string{}
	for k, v := range t.Metadata.Labels {
		labels[k] = v
	}
	labels[spawnerv1.LabelManagedBy] = spawnerv1.ManagedByValue

	annotations := map[string]string{}
	for k, v := range t.Metadata.Annotations {
		annotations[k] = v
	}
	annotations[spawnerv1.AnnotationGracePeriodSeconds] = strconv.FormatInt(int64(spec.GracePeriod().Seconds()), 10)

	containers := t.Containers
	if len(containers) > 0 {
		containers[0].Env = setEnv(containers[0].Env, spawnerv1.PortEnvVar, strconv.Itoa(int(port)))
	}
	// The router proof: a fresh random value per pod, in the sidecar's env
	// only (never the app's). The sidecar refuses requests without it, so only
	// the router and the sweeper, which read it from the pod, get through; a
	// leaked value opens this one pod and dies with it.
	sidecar := sidecarContainer(port, sc)
	sidecar.Args = append(sidecar.Args, idlePolicyArgs(spec)...)
	sidecar.Env = setEnv(sidecar.Env, wire.SidecarRouterProofEnv, routerproof.New())
	containers = append(containers, sidecar)

	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Labels:      labels,
			Annotations: annotations,
		},
		Spec: corev1.PodSpec{
			Containers:                    containers,
			InitContainers:                t.InitContainers,
			ImagePullSecrets:              t.ImagePullSecrets,
			Volumes:                       t.Volumes,
			NodeSelector:                  t.NodeSelector,
			Tolerations:                   t.Tolerations,
			Affinity:                      t.Affinity,
			ServiceAccountName:            t.ServiceAccountName,
			AutomountServiceAccountToken:  automountToken(t.AutomountServiceAccountToken),
			SecurityContext:               t.SecurityContext,
			PriorityClassName:             t.PriorityClassName,
			RuntimeClassName:              t.RuntimeClassName,
			TerminationGracePeriodSeconds: t.TerminationGracePeriodSeconds,
			RestartPolicy:                 corev1.RestartPolicyNever,
		},
	}
}

// automountToken is the template's choice, or false when it makes none: a
// backend serves one user's session and has no business with the Kubernetes
// API unless its author says so. Leaving the token out also leaves the pod
// without volumes to wait for, which the kubelet otherwise polls for every
// 300 ms before it creates the sandbox.
func automountToken(fromTemplate *bool) *bool {
	if fromTemplate != nil {
		v := *fromTemplate
		return &v
	}
	v := false
	return &v
}

// idlePolicyArgs passes the backend's idle policy to its sidecar, which
// applies it when it counts live connections; nothing for the defaults, so
// a default pod's sidecar runs exactly as before.
func idlePolicyArgs(spec *spawnerv1.SessionLivedBackendSpec) []string {
	var args []string
	if d := spec.WSIdle(); d > 0 {
		args = append(args, "--ws-idle-seconds="+strconv.Itoa(int(d/time.Second)))
	}
	if !spec.CountsRequests() {
		args = append(args, "--count-requests=false")
	}
	return args
}

func sidecarContainer(upstream int32, sc SidecarOptions) corev1.Container {
	c := corev1.Container{
		Name:  spawnerv1.SidecarContainerName,
		Image: sc.Image,
		Args: []string{
			"--serve-port=" + strconv.Itoa(spawnerv1.SidecarServePort),
			"--upstream-port=" + strconv.Itoa(int(upstream)),
			"--status-port=" + strconv.Itoa(spawnerv1.SidecarStatusPort),
		},
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: spawnerv1.SidecarServePort, Protocol: corev1.ProtocolTCP},
			{Name: "status", ContainerPort: spawnerv1.SidecarStatusPort, Protocol: corev1.ProtocolTCP},
		},
		ImagePullPolicy: sc.PullPolicy,
		SecurityContext: sidecarSecurityContext(),
	}
	req := corev1.ResourceList{}
	if !sc.CPURequest.IsZero() {
		req[corev1.ResourceCPU] = sc.CPURequest
	}
	if !sc.MemoryRequest.IsZero() {
		req[corev1.ResourceMemory] = sc.MemoryRequest
	}
	if len(req) > 0 {
		c.Resources.Requests = req
	}
	return c
}

// setEnv sets name=value, replacing an existing entry of that name.
func setEnv(env []corev1.EnvVar, name, value string) []corev1.EnvVar {
	for i := range env {
		if env[i].Name == name {
			env[i] = corev1.EnvVar{Name: name, Value: value}
			return env
		}
	}
	return append(env, corev1.EnvVar{Name: name, Value: value})
}
