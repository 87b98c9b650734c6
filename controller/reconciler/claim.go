package reconciler

import (
	"context"
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// ClaimTimeout is how long a slab may stay claiming (created from a pool by
// an api-server, not bound to a pod yet) before the controller binds it
// itself: to the warm pod the api-server took for it, if any, else to the
// cold path. An api-server claims in milliseconds on a quiet cluster; only
// one that died or stalled mid-claim leaves a slab claiming this long
// (docs/pools.md). It was 5 s: in a burst of 100 claims against 100 warm
// pods on the 2-core local cluster, where each API request took 0.3–2 s, a
// live claim that took 6.7 s was closed cold, its taken pod freed, and its
// cold start under that load made the burst's tail (24 s, all others warm
// within 5 s; make bench-pool, 2026-12-01 20:19 UTC).
const ClaimTimeout = 10 * time.Second

// awaitingTake reports whether slab, a backend from a pool created bound to
// a warm pod (the api-server's preBind: docs/pools.md), does not hold that
// pod yet: its claim's take is in flight, or lost (the api-server binds it
// again), or its api-server died. Such a slab is still claiming: it gets no
// status and no pod from us, and its named pod is not its own (neither
// foreign, which would fail it, nor a stray). Before ClaimTimeout the cache
// decides (the take's event brings the next sync; a GET per claim would
// cost the API server a request per claim under a burst); after it, the API
// does, and a slab still not holding its pod is closed (closeClaim). A slab
// whose status records its pod (PodCreated) held it once: a pod it no
// longer holds is lost, not awaited.
func (c *Controller) awaitingTake(ctx context.Context, slab *spawnerv1.SessionLivedBackend, podName string, now time.Time) (bool, time.Duration, error) {
	if slab.Annotations[spawnerv1.AnnotationPool] == "" || podName == slab.Name ||
		meta.IsStatusConditionTrue(slab.Status.Conditions, lifecycle.ConditionPodCreated) {
		return false, 0, nil
	}
	if pod, err := c.pods.Pods(slab.Namespace).Get(podName); err == nil && spawnerv1.HoldsPod(slab, pod) {
		return false, 0, nil
	}
	if left := slab.CreationTimestamp.Add(ClaimTimeout).Sub(now); left > 0 {
		return true, left, nil
	}
	live, err := c.kube.CoreV1().Pods(slab.Namespace).Get(ctx, podName, metav1.GetOptions{})
	switch {
	case err == nil && spawnerv1.HoldsPod(slab, live):
		return false, 0, nil // the cache is behind the take (podOf's caller asks the API too)
	case err != nil && !apierrors.IsNotFound(err):
		return true, 0, err
	}
	after, err := c.closeClaim(ctx, slab, now)
	return true, after, err
}

// closeClaim binds a claiming slab once ClaimTimeout has passed: to the one
// live pod it controls (the api-server took it, then died before binding),
// else to its own name, so syncLive creates the pod cold. A slab created
// bound to a pod it does not hold (awaitingTake) is bound again the same
// way, and its node label (that pod's node) goes with that binding. The
// write carries the slab's resourceVersion: a bind by the api-server in
// between wins, and this one conflicts (and requeues).
func (c *Controller) closeClaim(ctx context.Context, slab *spawnerv1.SessionLivedBackend, now time.Time) (time.Duration, error) {
	if left := slab.CreationTimestamp.Add(ClaimTimeout).Sub(now); left > 0 {
		return left, nil
	}
	bind, node := slab.Name, ""
	for _, pod := range c.claimedPods(slab) {
		// Only a pod labelled with the backend is finished: a pool with a
		// claim hook labels its pod once the hook succeeded, so a pod
		// taken without the label may have refused the session (or not
		// received it yet); it stays a stray, deleted once bound.
		if pod.Labels[spawnerv1.LabelBackend] == slab.Name && pod.DeletionTimestamp == nil &&
			pod.Status.Phase != corev1.PodFailed && pod.Status.Phase != corev1.PodSucceeded {
			bind, node = pod.Name, pod.Spec.NodeName
			break
		}
	}
	// A merge patch carrying the resourceVersion is a precondition like an
	// update's, with the patch verb the controller already has.
	md := map[string]any{
		"resourceVersion": slab.ResourceVersion,
		"annotations":     map[string]string{spawnerv1.AnnotationPod: bind},
	}
	if old := slab.Labels[spawnerv1.LabelNode]; old != node {
		if node == "" {
			md["labels"] = map[string]any{spawnerv1.LabelNode: nil}
		} else {
			md["labels"] = map[string]string{spawnerv1.LabelNode: node}
		}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": md})
	if _, err := c.spawner.SpawnerV1().SessionLivedBackends(slab.Namespace).Patch(ctx, slab.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return 0, nil
		}
		return 0, err
	}
	warm := bind != slab.Name
	c.log.Debug("closed an unbound claim", "slab", slab.Namespace+"/"+slab.Name, "pod", bind, "warm", warm)
	c.recorder.Eventf(slab, corev1.EventTypeNormal, "ClaimClosed", "claim not bound within %s; bound to pod %s (warm: %t)", ClaimTimeout, bind, warm)
	return 0, nil
}

// claimedPods are the pods, from the cache, that a claim for slab took:
// controlled by it and labelled with its name, or (a pool with a claim hook,
// before the hook succeeded) with its pool.
func (c *Controller) claimedPods(slab *spawnerv1.SessionLivedBackend) []*corev1.Pod {
	sets := []labels.Set{{spawnerv1.LabelBackend: slab.Name}}
	if pool := slab.Annotations[spawnerv1.AnnotationPool]; pool != "" {
		sets = append(sets, labels.Set{spawnerv1.LabelPool: pool})
	}
	var out []*corev1.Pod
	seen := map[string]bool{}
	for _, set := range sets {
		pods, err := c.pods.Pods(slab.Namespace).List(labels.SelectorFromSet(set))
		if err != nil {
			continue
		}
		for _, p := range pods {
			if !seen[p.Name] && metav1.IsControlledBy(p, slab) {
				seen[p.Name] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// deleteStrays deletes the pods a slab from a pool controls besides its
// bound pod: a warm pod taken by a claim that lost its bind (the
// api-server paused past ClaimTimeout and died before cleaning up). The
// garbage collector would delete them with the slab; this frees them now.
func (c *Controller) deleteStrays(ctx context.Context, slab *spawnerv1.SessionLivedBackend, bound string) error {
	for _, p := range c.claimedPods(slab) {
		if p.Name == bound || p.DeletionTimestamp != nil {
			continue
		}
		c.recorder.Eventf(slab, corev1.EventTypeNormal, "StrayPodDeleted", "pod %s was taken for this backend but not bound to it", p.Name)
		if err := c.deletePod(ctx, p, nil); err != nil {
			return err
		}
	}
	return nil
}
