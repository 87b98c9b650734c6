package apiserver

import (
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/controller/reconciler"
)

// podSecurity checks a spawn against the Pod Security level the backend
// namespace enforces (its label pod-security.kubernetes.io/enforce and
// enforce-version) before anything is created, so that a spawn whose pod
// the namespace would refuse is answered 422 with the reason instead of
// leaving a backend that fails once the controller tries its pod.
//
// How: the pod is the one the controller will create (reconciler.BuildPod,
// the controller's own builder, with the restricted defaults filled in;
// imported, not copied, so the two cannot drift),
// evaluated by k8s.io/pod-security-admission's policy package, the same
// code and version (v0.37.2, the cluster's) that the API server's
// PodSecurity admission runs. Chosen over a server-side dry-run create of
// the pod because a dry run needs RBAC `create` on pods (the api-server may
// not create pods: only the controller does) and a round trip to the API
// server on every spawn, where the evaluator needs only `get/list/watch` on
// the one namespace object (informer, field selector on its name) and
// costs microseconds. What it cannot see: exemptions in the API server's
// admission configuration (usernames, runtime classes, namespaces) and
// other admission webhooks; a cluster that exempts spawner's backends can
// turn the check off with --check-pod-security=false, and the controller
// still fails a refused pod at once (reason InvalidSpec).
type podSecurity struct {
	namespace string
	evaluator policy.Evaluator
	factory   kubeinformers.SharedInformerFactory
	informer  cache.SharedIndexInformer
}

func newPodSecurity(kube kubernetes.Interface, namespace string) (*podSecurity, error) {
	ev, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return nil, fmt.Errorf("pod security evaluator: %w", err)
	}
	f := kubeinformers.NewSharedInformerFactoryWithOptions(kube, 0,
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + namespace }))
	return &podSecurity{namespace: namespace, evaluator: ev, factory: f, informer: f.Core().V1().Namespaces().Informer()}, nil
}

// enforced is the level and version the backend namespace enforces;
// privileged (nothing checked) when the namespace or its label is missing,
// as the admission plugin does with its default configuration.
func (p *podSecurity) enforced() (psaapi.LevelVersion, error) {
	obj, ok, err := p.informer.GetIndexer().GetByKey(p.namespace)
	var labels map[string]string
	if err == nil && ok {
		if ns, isNS := obj.(*corev1.Namespace); isNS {
			labels = ns.Labels
		}
	}
	pol, errs := psaapi.PolicyToEvaluate(labels, psaapi.Policy{
		Enforce: psaapi.LevelVersion{Level: psaapi.LevelPrivileged, Version: psaapi.LatestVersion()},
		Audit:   psaapi.LevelVersion{Level: psaapi.LevelPrivileged, Version: psaapi.LatestVersion()},
		Warn:    psaapi.LevelVersion{Level: psaapi.LevelPrivileged, Version: psaapi.LatestVersion()},
	})
	if len(errs) > 0 {
		// As the admission plugin: an invalid label is evaluated as restricted.
		return pol.Enforce, errs.ToAggregate()
	}
	return pol.Enforce, nil
}

// check answers nil when the namespace admits slab's pod, else a 422 naming
// the namespace's level and every reason, in the admission plugin's words.
func (p *podSecurity) check(slab *spawnerv1.SessionLivedBackend) *requestError {
	lv, _ := p.enforced()
	if lv.Level == psaapi.LevelPrivileged {
		return nil
	}
	// The sidecar's options (image, requests) do not change what Pod
	// Security looks at: the sidecar always runs restricted.
	pod := reconciler.BuildPod(slab, reconciler.SidecarOptions{Image: "spawner-sidecar"})
	res := policy.AggregateCheckResults(p.evaluator.EvaluatePod(lv, &pod.ObjectMeta, &pod.Spec))
	if res.Allowed {
		return nil
	}
	return &requestError{http.StatusUnprocessableEntity, fmt.Sprintf(
		"the backend's pod would be rejected by the Pod Security policy of namespace %s: violates PodSecurity %q: %s "+
			"(ask for fewer privileges, or have an operator relax the namespace's pod-security.kubernetes.io/enforce label: docs/production.md)",
		p.namespace, lv.String(), res.ForbiddenDetail())}
}

// checkPodSecurity is podSecurity.check, nil when the check is off.
func (s *Server) checkPodSecurity(slab *spawnerv1.SessionLivedBackend) *requestError {
	if s.psa == nil {
		return nil
	}
	return s.psa.check(slab)
}
