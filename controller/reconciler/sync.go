package reconciler

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/workloop"
)

// minPositive is the earlier of two requeue delays, 0 meaning none.
func minPositive(a, b time.Duration) time.Duration {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	case a < b:
		return a
	}
	return b
}

// sync makes one slab's world right. It returns when the slab should be
// looked at again even if nothing changes (a deadline), or an error to retry.
// Each step is its own method: the lifetime deadline, the live backend's pod
// (syncLive), the status write with its Events, the node label, and the end
// of a failed or terminating backend (finish).
func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	// A slab gone: its pod, if any, goes with it (the garbage collector
	// follows the owner reference).
	slab, found, err := workloop.Get(key, func(ns, name string) (*spawnerv1.SessionLivedBackend, error) {
		return c.slabs.SessionLivedBackends(ns).Get(name)
	})
	if !found || err != nil {
		return 0, err
	}
	if slab.DeletionTimestamp != nil {
		return 0, nil
	}
	now := c.clock.Now()
	status := slab.Status.DeepCopy()
	status.Phase = lifecycle.Phase(slab)
	ch := &statusChange{status: status, generation: slab.Generation}

	// A slab claiming a warm pod (docs/pools.md) gets no pod from us: the
	// api-server binds it, or closeClaim does once it stalled.
	podName, bound := spawnerv1.PodNameOf(slab)
	if !bound {
		return c.closeClaim(ctx, slab, now)
	}
	if awaiting, after, err := c.awaitingTake(ctx, slab, podName, now); awaiting || err != nil {
		return after, err
	}
	if slab.Annotations[spawnerv1.AnnotationPool] != "" {
		if err := c.deleteStrays(ctx, slab, podName); err != nil {
			return 0, err
		}
	}
	pod, foreign, err := c.podOf(slab)
	if err != nil {
		return 0, err
	}
	next := enforceLifetime(slab, ch, now)
	if !lifecycle.IsEnding(status.Phase) {
		var after time.Duration
		pod, foreign, after, err = c.syncLive(ctx, slab, ch, pod, foreign, now)
		if err != nil {
			return 0, err
		}
		next = minPositive(next, after)
	}
	terminateSwept(ch)

	if !lifecycle.IsEnding(status.Phase) && lifecycle.ClaimRecordPending(slab, now) {
		// Its claim is about to record it Ready with everything this sync
		// would write (the api-server's recordClaimed, right after it
		// answered): writing first made one of the two conflict and write
		// again, under a burst of 100 claims three status writes per
		// claim. That write brings the next sync; so does this deadline if
		// it never comes.
		return minPositive(next, slab.CreationTimestamp.Add(lifecycle.ClaimRecordWait).Sub(now)), nil
	}
	slab, err = c.writeStatus(ctx, key, slab, ch)
	if err != nil || slab == nil {
		return 0, err
	}
	c.observeReady(slab)
	if err := c.labelNode(ctx, slab, status.NodeName); err != nil {
		return 0, err
	}
	return c.finish(ctx, slab, status, pod, foreign, next, now)
}

// enforceLifetime sweeps a live backend past its hard lifetime (by us), and
// otherwise returns how long until it reaches it (0: no lifetime).
func enforceLifetime(slab *spawnerv1.SessionLivedBackend, ch *statusChange, now time.Time) time.Duration {
	if lifecycle.IsEnding(ch.status.Phase) {
		return 0
	}
	max, ok := slab.Spec.MaxLifetime()
	if !ok {
		return 0
	}
	left := slab.CreationTimestamp.Add(max).Sub(now)
	if left > 0 {
		return left
	}
	ch.record(lifecycle.ConditionSwept, lifecycle.ReasonLifetimeExceeded,
		fmt.Sprintf("maxLifetimeSeconds (%d) reached", *slab.Spec.MaxLifetimeSeconds))
	return 0
}

// terminateSwept terminates a swept backend for the same reason it was swept.
func terminateSwept(ch *statusChange) {
	if ch.status.Phase != lifecycle.Swept {
		return
	}
	swept := meta.FindStatusCondition(ch.status.Conditions, lifecycle.ConditionSwept)
	reason, msg := lifecycle.ReasonTerminationRequested, "termination requested"
	if swept != nil {
		reason, msg = swept.Reason, swept.Message
	}
	ch.record(lifecycle.ConditionTerminating, reason, msg)
}

// writeStatus writes the edited status when it differs from the slab's, then
// gives every phase entered its Event. It returns the slab as written, or nil
// when the slab is gone.
func (c *Controller) writeStatus(ctx context.Context, key string, slab *spawnerv1.SessionLivedBackend, ch *statusChange) (*spawnerv1.SessionLivedBackend, error) {
	if equality.Semantic.DeepEqual(&slab.Status, ch.status) {
		return slab, nil
	}
	updated := slab.DeepCopy()
	updated.Status = *ch.status
	res, err := c.spawner.SpawnerV1().SessionLivedBackends(slab.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	for _, t := range ch.transitions {
		c.metrics.transition(t.Phase)
		kind := corev1.EventTypeNormal
		if t.Phase == lifecycle.Failed {
			kind = corev1.EventTypeWarning
		}
		c.recorder.Event(res, kind, string(t.Phase), t.Reason+": "+t.Message)
		c.log.Debug("backend phase changed", "slab", key, "phase", t.Phase, "reason", t.Reason, "message", t.Message)
	}
	return res, nil
}

// labelNode puts the spawner.dev/node label on a scheduled backend.
func (c *Controller) labelNode(ctx context.Context, slab *spawnerv1.SessionLivedBackend, node string) error {
	if node == "" || slab.Labels[spawnerv1.LabelNode] == node {
		return nil
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, spawnerv1.LabelNode, node)
	_, err := c.spawner.SpawnerV1().SessionLivedBackends(slab.Namespace).Patch(ctx, slab.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// finish ends a failed backend (its pod at once, the slab after the
// retention) or a terminating one (its pod with the template's grace, then
// the slab). next is the requeue delay the earlier steps asked for.
func (c *Controller) finish(ctx context.Context, slab *spawnerv1.SessionLivedBackend, status *spawnerv1.SessionLivedBackendStatus,
	pod *corev1.Pod, foreign bool, next time.Duration, now time.Time) (time.Duration, error) {
	switch status.Phase {
	case lifecycle.Failed:
		if pod != nil && !foreign && pod.DeletionTimestamp == nil {
			if err := c.deletePod(ctx, pod, nil); err != nil {
				return 0, err
			}
		}
		failedAt := lifecycle.TransitionTime(status.Conditions, lifecycle.ConditionFailed)
		left := time.Duration(0)
		if failedAt != nil {
			left = failedAt.Add(c.opts.FailedRetention).Sub(now)
		}
		if left > 0 {
			return minPositive(next, left), nil
		}
		return 0, c.deleteSlab(ctx, slab, "failed backend retention ("+c.opts.FailedRetention.String()+") passed")
	case lifecycle.Terminating:
		if pod != nil && !foreign {
			if pod.DeletionTimestamp == nil {
				// With the template's grace period: SIGTERM, then time to finish.
				if err := c.deletePod(ctx, pod, slab.Spec.Template.TerminationGracePeriodSeconds); err != nil {
					return 0, err
				}
				return c.opts.PodGoneTimeout + podGrace(pod), nil
			}
			// Wait for the pod's delete event; give up waiting when the
			// kubelet is far past the deadline (node gone): the garbage
			// collector finishes it once the slab is gone.
			left := pod.DeletionTimestamp.Add(c.opts.PodGoneTimeout).Sub(now)
			if left > 0 {
				return left, nil
			}
		}
		return 0, c.deleteSlab(ctx, slab, "backend terminated")
	}
	return next, nil
}

// syncLive creates or adopts a live backend's pod and reads its state. It
// returns the pod (nil if none), whether that pod belongs to someone else,
// and when to look again.
func (c *Controller) syncLive(ctx context.Context, slab *spawnerv1.SessionLivedBackend, ch *statusChange,
	pod *corev1.Pod, foreign bool, now time.Time) (*corev1.Pod, bool, time.Duration, error) {
	status := ch.status
	if status.URL == "" {
		status.URL = c.opts.publicURL(slab.Name)
	}
	if foreign {
		// The cache may lag behind a claim: the api-server takes a warm
		// pod (its controller becomes this slab) and only then binds the
		// slab to it, but the pod and slab watches deliver on their own, so
		// a sync can see the bound slab while the cached pod is still the
		// pool's. A bench of sequential claims on the local cluster failed
		// one such backend InvalidSpec ("a pod named … does not belong to
		// this backend"). Ask the API server before calling it foreign.
		live, err := c.kube.CoreV1().Pods(slab.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			pod, foreign = nil, false
		case err != nil:
			return nil, false, 0, err
		default:
			pod, foreign = live, !metav1.IsControlledBy(live, slab)
		}
	}
	if pod == nil && ch.isTrue(lifecycle.ConditionPodCreated) {
		// The cache may lag behind our own create; ask the API server before
		// declaring the pod lost.
		podName, _ := spawnerv1.PodNameOf(slab)
		live, err := c.kube.CoreV1().Pods(slab.Namespace).Get(ctx, podName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("pod %s was deleted while the backend was live", podName)})
			return nil, false, 0, nil
		case err != nil:
			return nil, false, 0, err
		}
		pod, foreign = live, !metav1.IsControlledBy(live, slab)
		if foreign {
			ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("pod %s was replaced by one this backend does not own", podName)})
			return pod, foreign, 0, nil
		}
	}
	if podName, _ := spawnerv1.PodNameOf(slab); pod == nil && podName != slab.Name {
		// A claimed warm pod is never re-created cold: it is gone.
		ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("the warm pod %s claimed for this backend is gone", podName)})
		return nil, false, 0, nil
	}
	if pod == nil {
		if errs := spawnerv1.ValidateSpec(&slab.Spec, nil); len(errs) > 0 {
			ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec, Message: errs.ToAggregate().Error()})
			return nil, false, 0, nil
		}
		newPod := BuildPod(slab, c.opts.Sidecar)
		applyAppResourceDefaults(newPod, c.opts.AppResources)
		created, err := c.kube.CoreV1().Pods(slab.Namespace).Create(ctx, newPod, metav1.CreateOptions{})
		switch {
		case err == nil:
			c.metrics.podsCreated.Inc()
			pod = created
		case apierrors.IsAlreadyExists(err):
			// Created by an earlier sync or an earlier controller process
			// whose status write never happened: adopt it if it is ours.
			live, gerr := c.kube.CoreV1().Pods(slab.Namespace).Get(ctx, slab.Name, metav1.GetOptions{})
			if gerr != nil {
				return nil, false, 0, gerr // NotFound: deleted meanwhile; retry creates it
			}
			pod, foreign = live, !metav1.IsControlledBy(live, slab)
		case apierrors.IsInvalid(err):
			ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec, Message: "pod rejected by the API server: " + err.Error()})
			return nil, false, 0, nil
		case rejectedByPodSecurity(err):
			// The namespace's Pod Security level forbids what the template
			// asks for: no retry can change that, so fail now rather than
			// leave the backend Pending until the startup timeout.
			ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec, Message: "pod rejected by the namespace's Pod Security policy: " + err.Error()})
			return nil, false, 0, nil
		default:
			if c.opts.StartupTimeout > 0 && now.Sub(slab.CreationTimestamp.Time) > c.opts.StartupTimeout {
				ch.fail(Failure{Reason: lifecycle.ReasonStartupTimeout,
					Message: fmt.Sprintf("pod could not be created within %s: %v", c.opts.StartupTimeout, err)})
				return nil, false, 0, nil
			}
			c.recorder.Event(slab, corev1.EventTypeWarning, "PodCreateFailed", err.Error())
			return nil, false, 0, err
		}
	}
	if foreign {
		return pod, true, c.foreignPod(slab, ch, pod, now), nil
	}
	if !ch.isTrue(lifecycle.ConditionPodCreated) { // a warm claim recorded it (WarmPodClaimed): keep its reason
		ch.record(lifecycle.ConditionPodCreated, lifecycle.ReasonPodCreated, "pod "+pod.Name+" created")
	}
	if pod.DeletionTimestamp != nil {
		ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("pod %s is being deleted while the backend was live", pod.Name)})
		return pod, false, 0, nil
	}
	return pod, false, applyPod(slab, ch, pod, now, c.opts.StartupTimeout), nil
}

// foreignPod handles a pod that has the backend's name but is not
// controlled by this slab.
func (c *Controller) foreignPod(slab *spawnerv1.SessionLivedBackend, ch *statusChange, pod *corev1.Pod, now time.Time) time.Duration {
	ref := metav1.GetControllerOf(pod)
	ours := ref != nil && ref.Kind == slabGVK.Kind && ref.APIVersion == slabGVK.GroupVersion().String()
	if !ours && pod.DeletionTimestamp == nil {
		ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec,
			Message: fmt.Sprintf("a pod named %s already exists and does not belong to this backend", pod.Name)})
		return 0
	}
	// The pod of an earlier slab of the same name, on its way out (the
	// garbage collector deletes it): wait for it, within the startup timeout.
	if c.opts.StartupTimeout > 0 && now.Sub(slab.CreationTimestamp.Time) > c.opts.StartupTimeout {
		ch.fail(Failure{Reason: lifecycle.ReasonStartupTimeout,
			Message: fmt.Sprintf("the name %s is still held by the pod of an earlier backend", pod.Name)})
		return 0
	}
	return 2 * time.Second
}

// podOf is the slab's pod from the cache, and whether it is someone else's.
func (c *Controller) podOf(slab *spawnerv1.SessionLivedBackend) (*corev1.Pod, bool, error) {
	name, ok := spawnerv1.PodNameOf(slab)
	if !ok {
		return nil, false, nil
	}
	pod, err := c.pods.Pods(slab.Namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return pod, !metav1.IsControlledBy(pod, slab), nil
}

func (c *Controller) deletePod(ctx context.Context, pod *corev1.Pod, grace *int64) error {
	opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}, GracePeriodSeconds: grace}
	err := c.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts)
	if err == nil {
		c.metrics.podsDeleted.Inc()
		c.log.Debug("deleted backend pod", "pod", pod.Namespace+"/"+pod.Name)
	}
	return workloop.IgnoreGone(err)
}

func (c *Controller) deleteSlab(ctx context.Context, slab *spawnerv1.SessionLivedBackend, why string) error {
	opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &slab.UID}}
	err := c.spawner.SpawnerV1().SessionLivedBackends(slab.Namespace).Delete(ctx, slab.Name, opts)
	if err == nil {
		c.metrics.slabsDeleted.Inc()
		c.log.Debug("deleted backend", "slab", slab.Namespace+"/"+slab.Name, "why", why)
	}
	return workloop.IgnoreGone(err)
}

// observeReady records spawn-to-ready latency once per slab, for slabs that
// became Ready while this process was running (a restarted controller does
// not replay old latencies).
func (c *Controller) observeReady(slab *spawnerv1.SessionLivedBackend) {
	if c.metrics == nil {
		return
	}
	readyAt := slab.Status.ReadyTime
	if readyAt == nil {
		readyAt = lifecycle.TransitionTime(slab.Status.Conditions, lifecycle.ConditionReady)
	}
	if readyAt == nil || !meta.IsStatusConditionTrue(slab.Status.Conditions, lifecycle.ConditionReady) {
		return
	}
	c.mu.Lock()
	seen := c.readySeen[slab.UID]
	c.readySeen[slab.UID] = true
	c.mu.Unlock()
	if seen || readyAt.Time.Before(c.started.Add(-time.Second)) {
		return
	}
	c.metrics.spawnToReady.Observe(readyAt.Sub(slab.CreationTimestamp.Time).Seconds())
}

func podGrace(pod *corev1.Pod) time.Duration {
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return corev1.DefaultTerminationGracePeriodSeconds * time.Second
}

// publicURL is a backend's status.url (its public URL, without a token), or
// "" when no public base URL is set. Config.Options refuses a base or suffix
// NewPublicRoutes would; parsing here, once per backend, costs ~1 µs.
func (o Options) publicURL(name string) string {
	if o.PublicBaseURL == "" {
		return ""
	}
	routes, err := spawnerv1.NewPublicRoutes(o.PublicBaseURL, o.PublicHostSuffix)
	if err != nil {
		return ""
	}
	return routes.BackendURL(name)
}
