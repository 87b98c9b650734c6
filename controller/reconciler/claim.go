package reconciler

import (
	"context"
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// ClaimTimeout is how long a slab may stay claiming (created from a pool by
// an api-server, not bound to a pod yet) before the controller binds it
// itself: to the warm pod the api-server took for it, if any, else to the
// cold path. An api-server claims in milliseconds; only one that died or
// stalled mid-claim leaves a slab claiming this long (docs/pools.md).
const ClaimTimeout = 5 * time.Second

// closeClaim binds a claiming slab once ClaimTimeout has passed: to the one
// live pod it controls (the api-server took it, then died before binding),
// else to its own name, so syncLive creates the pod cold. The write carries
// the slab's resourceVersion: a bind by the api-server in between wins, and
// this one conflicts (and requeues).
func (c *Controller) closeClaim(ctx context.Context, slab *spawnerv1.SessionLivedBackend, now time.Time) (time.Duration, error) {
	if left := slab.CreationTimestamp.Add(ClaimTimeout).Sub(now); left > 0 {
		return left, nil
	}
	bind := slab.Name
	for _, pod := range c.claimedPods(slab) {
		// Only a pod labelled with the backend is finished: a pool with a
		// claim hook labels its pod once the hook succeeded, so a pod
		// taken without the label may have refused the session (or not
		// received it yet); it stays a stray, deleted once bound.
		if pod.Labels[spawnerv1.LabelBackend] == slab.Name && pod.DeletionTimestamp == nil &&
			pod.Status.Phase != corev1.PodFailed && pod.Status.Phase != corev1.PodSucceeded {
			bind = pod.Name
			break
		}
	}
	// A merge patch carrying the resourceVersion is a precondition like an
	// update's, with the patch verb the controller already has.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": slab.ResourceVersion,
		"annotations":     map[string]string{spawnerv1.AnnotationPod: bind},
	}})
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
