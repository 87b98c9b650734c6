package apiserver

import (
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// peers splits the warm pods between the api-server's replicas, so that
// their concurrent claims mostly try different pods: each replica tries the
// pods it is the rendezvous owner of first (the highest hash of replica and
// pod UID among the replicas), then the others. The replicas are the ready
// endpoints of the api-server's Service (--peer-service), each its pod's
// name. It is a preference, never a lock: the take's resourceVersion
// precondition is still all that keeps two claims from one pod, and a
// replica whose view of its peers differs from another's (one just started
// or left) only collides more, as without it.
//
// Why: each replica learns of the other's takes only by watch, seconds late
// under a burst, and picks at random among the pods its cache shows free. In
// a burst of 100 claims against 100 warm pods on the local cluster, 51 of
// the 151 takes sent lost to the other replica (each a pod patch of ~1 s
// under that load, then another try), and a claim that lost two lists the
// pool's pods from the API (make bench-pool, 2026-12-01).
type peers struct {
	self     string
	informer cache.SharedIndexInformer // nil: no partition
	factory  kubeinformers.SharedInformerFactory
}

// newPeers watches the EndpointSlices of service ("namespace/name"); self
// is this replica's pod name. An empty service turns the partition off.
func newPeers(kube kubernetes.Interface, service, self string) (*peers, error) {
	p := &peers{self: self}
	if service == "" {
		return p, nil
	}
	ns, name, ok := strings.Cut(service, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--peer-service %q: want namespace/name of the api-server's Service", service)
	}
	if self == "" {
		return nil, fmt.Errorf("--peer-service needs this replica's pod name (--pod-name, or the POD_NAME environment variable)")
	}
	p.factory = kubeinformers.NewSharedInformerFactoryWithOptions(kube, 0, kubeinformers.WithNamespace(ns),
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=" + name
		}))
	p.informer = p.factory.Discovery().V1().EndpointSlices().Informer()
	return p, nil
}

// defaultPodName is this replica's pod name when --pod-name is not given:
// $POD_NAME (the downward API), else the hostname, which Kubernetes sets to
// the pod's name.
func defaultPodName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

func (p *peers) start(stop <-chan struct{}) {
	if p.factory != nil {
		p.factory.Start(stop)
	}
}

// replicas are the pod names of the Service's ready endpoints, sorted, when
// this replica is among them; else nil (no partition: it is not serving yet,
// or is leaving, and its claims are as random as without one).
func (p *peers) replicas() []string {
	if p.informer == nil || !p.informer.HasSynced() {
		return nil
	}
	var names []string
	for _, obj := range p.informer.GetStore().List() {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" || (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) {
				continue
			}
			names = append(names, ep.TargetRef.Name)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if !slices.Contains(names, p.self) {
		return nil
	}
	return names
}

// owner is the replica among replicas that pod uid goes to first
// (rendezvous hashing: a replica joining or leaving moves only its share).
func owner(replicas []string, uid types.UID) string {
	var (
		best  string
		bestH uint64
	)
	for _, r := range replicas {
		h := fnv.New64a()
		h.Write([]byte(r))
		h.Write([]byte{0})
		h.Write([]byte(uid))
		if v := mix64(h.Sum64()); best == "" || v > bestH {
			best, bestH = r, v
		}
	}
	return best
}

// mix64 is splitmix64's finalizer: FNV-1a alone mixes the last bytes of
// similar keys into its high bits so poorly that 1000 pods went 600/190/210
// among three replicas (TestOwnerSpreadsPods).
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// mineFirst reorders pods (already shuffled) so that those this replica owns
// come first, each part in its order.
func (p *peers) mineFirst(pods []*corev1.Pod) []*corev1.Pod {
	replicas := p.replicas()
	if len(replicas) < 2 {
		return pods
	}
	out := make([]*corev1.Pod, 0, len(pods))
	var theirs []*corev1.Pod
	for _, pod := range pods {
		if owner(replicas, pod.UID) == p.self {
			out = append(out, pod)
		} else {
			theirs = append(theirs, pod)
		}
	}
	return append(out, theirs...)
}
