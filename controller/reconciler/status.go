package reconciler

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// Failure is why a backend failed: a lifecycle reason and a message for people.
type Failure struct {
	Reason  string
	Message string
}

// PodView is what the controller takes from a backend pod.
type PodView struct {
	NodeName string
	PodIP    string
	// Unschedulable is the scheduler's message while the pod's PodScheduled
	// condition is False with reason Unschedulable.
	Unschedulable string
	// Started: the application container and the sidecar are both running.
	Started bool
	// Failure is set when the pod can never serve (see ClassifyFailure).
	Failure *Failure
	// Waiting summarises containers that are not running yet, for messages.
	Waiting string
}

// imagePullReasons are the kubelet's waiting reasons for an image that cannot
// be pulled. They are treated as final: a backend is interactive, a user is
// waiting for it, and a retry loop on a bad image only hides the mistake.
var imagePullReasons = map[string]bool{
	"ErrImagePull":      true,
	"ImagePullBackOff":  true,
	"InvalidImageName":  true,
	"ErrImageNeverPull": true,
}

// refusesNonRoot says whether a container's waiting state is the kubelet's
// refusal to start it under runAsNonRoot (reason CreateContainerConfigError;
// kubelet verifyRunAsNonRoot: "container has runAsNonRoot and image will run
// as root", "... image has non-numeric user (...), cannot verify user is
// non-root", "container's runAsUser breaks non-root policy"). It is final:
// the pod's image and securityContext never change, so waiting out
// --startup-timeout would only hide the reason for 5 minutes.
func refusesNonRoot(w *corev1.ContainerStateWaiting) bool {
	return w.Reason == "CreateContainerConfigError" &&
		(strings.Contains(w.Message, "runAsNonRoot") || strings.Contains(w.Message, "non-root policy"))
}

// ObservePod reads a backend pod. app is the application container's name
// (the first container of the template).
func ObservePod(pod *corev1.Pod) PodView {
	v := PodView{NodeName: pod.Spec.NodeName, PodIP: pod.Status.PodIP}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			v.Unschedulable = c.Message
			if v.Unschedulable == "" {
				v.Unschedulable = "no node fits the pod"
			}
		}
	}
	v.Failure = ClassifyFailure(pod)

	app := appContainerName(pod)
	running := map[string]bool{}
	var waiting []string
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.State.Running != nil {
			running[cs.Name] = true
		}
		if w := cs.State.Waiting; w != nil {
			s := cs.Name + ": " + w.Reason
			if w.Message != "" {
				s += " (" + w.Message + ")"
			}
			waiting = append(waiting, s)
		}
	}
	sort.Strings(waiting)
	v.Waiting = strings.Join(waiting, "; ")
	v.Started = app != "" && running[app] && running[spawnerv1.SidecarContainerName]
	return v
}

func appContainerName(pod *corev1.Pod) string {
	if len(pod.Spec.Containers) == 0 {
		return ""
	}
	return pod.Spec.Containers[0].Name
}

// ClassifyFailure says whether a pod has failed for good, and why:
//   - ImagePullFailed: any container (init, app, other, sidecar) waits on an
//     image that cannot be pulled (ErrImagePull, ImagePullBackOff,
//     InvalidImageName, ErrImageNeverPull).
//   - AppExited: the application container or the sidecar terminated (any
//     exit code: with restartPolicy Never a backend whose app exited cannot
//     serve again), another container or an init container exited non-zero.
//   - InvalidSpec: the kubelet refuses to start a container under
//     runAsNonRoot (refusesNonRoot): its image runs as root, or as a user
//     name, and its securityContext names no uid.
//   - PodLost: the pod failed as a whole without a container to blame
//     (eviction, node shutdown).
//
// It returns nil while the pod may still become (or stay) useful.
func ClassifyFailure(pod *corev1.Pod) *Failure {
	all := append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...)
	for _, cs := range all {
		if w := cs.State.Waiting; w != nil && imagePullReasons[w.Reason] {
			msg := fmt.Sprintf("container %q: image %q cannot be pulled: %s", cs.Name, imageOf(pod, cs), w.Reason)
			if w.Message != "" {
				msg += ": " + w.Message
			}
			return &Failure{Reason: lifecycle.ReasonImagePullFailed, Message: msg}
		}
		if w := cs.State.Waiting; w != nil && refusesNonRoot(w) {
			return &Failure{Reason: lifecycle.ReasonInvalidSpec, Message: fmt.Sprintf("container %q: image %q cannot run as non-root: %s "+
				"(give the container a numeric runAsUser, or leave out its securityContext for spawner's restricted defaults)",
				cs.Name, imageOf(pod, cs), w.Message)}
		}
	}
	app := appContainerName(pod)
	for _, cs := range pod.Status.InitContainerStatuses {
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			return &Failure{Reason: lifecycle.ReasonAppExited, Message: "init container " + describeExit(cs.Name, t)}
		}
	}
	// The application first: its exit is the most useful thing to report.
	statuses := append([]corev1.ContainerStatus{}, pod.Status.ContainerStatuses...)
	sort.SliceStable(statuses, func(i, j int) bool { return statuses[i].Name == app && statuses[j].Name != app })
	for _, cs := range statuses {
		t := cs.State.Terminated
		if t == nil {
			continue
		}
		switch {
		case cs.Name == app:
			return &Failure{Reason: lifecycle.ReasonAppExited, Message: "application container " + describeExit(cs.Name, t)}
		case cs.Name == spawnerv1.SidecarContainerName:
			return &Failure{Reason: lifecycle.ReasonAppExited, Message: "sidecar container " + describeExit(cs.Name, t)}
		case t.ExitCode != 0:
			return &Failure{Reason: lifecycle.ReasonAppExited, Message: "container " + describeExit(cs.Name, t)}
		}
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		msg := "pod " + strings.ToLower(string(pod.Status.Phase))
		if pod.Status.Reason != "" {
			msg += ": " + pod.Status.Reason
		}
		if pod.Status.Message != "" {
			msg += ": " + pod.Status.Message
		}
		return &Failure{Reason: lifecycle.ReasonPodLost, Message: msg}
	}
	return nil
}

func describeExit(name string, t *corev1.ContainerStateTerminated) string {
	s := fmt.Sprintf("%q exited with code %d", name, t.ExitCode)
	if t.Signal != 0 {
		s += fmt.Sprintf(" (signal %d)", t.Signal)
	}
	if t.Reason != "" {
		s += " (" + t.Reason + ")"
	}
	if t.Message != "" {
		s += ": " + strings.TrimSpace(t.Message)
	}
	return s
}

func imageOf(pod *corev1.Pod, cs corev1.ContainerStatus) string {
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == cs.Name {
			return c.Image
		}
	}
	return cs.Image
}

// Transition is a phase a backend entered during one sync, for its Event.
type Transition struct {
	Phase   spawnerv1.BackendPhase
	Reason  string
	Message string
}

// statusChange is a status being edited through the phase machine; it
// remembers the phases entered, in order, so each gets its Event.
type statusChange struct {
	status      *spawnerv1.SessionLivedBackendStatus
	generation  int64
	transitions []Transition
}

func (c *statusChange) record(conditionType, reason, message string) {
	c.apply(lifecycle.Record, conditionType, reason, message)
}

func (c *statusChange) clear(conditionType, reason, message string) {
	c.apply(lifecycle.Clear, conditionType, reason, message)
}

// apply sets or clears (lifecycle.Record, lifecycle.Clear) a condition the
// phase machine still lets change, and notes the phase it enters, if any.
func (c *statusChange) apply(change func(*spawnerv1.SessionLivedBackendStatus, string, string, string, int64) bool, conditionType, reason, message string) {
	if !lifecycle.CanRecord(c.status.Phase, conditionType) {
		return
	}
	before := c.status.Phase
	change(c.status, conditionType, reason, message, c.generation)
	if c.status.Phase != before {
		c.transitions = append(c.transitions, Transition{Phase: c.status.Phase, Reason: reason, Message: message})
	}
}

func (c *statusChange) fail(f Failure) { c.record(lifecycle.ConditionFailed, f.Reason, f.Message) }

func (c *statusChange) isTrue(conditionType string) bool {
	return meta.IsStatusConditionTrue(c.status.Conditions, conditionType)
}

// applyPod brings a live backend's status up to date with its pod, and
// returns how long until its startup deadline passes (0: no deadline pending).
func applyPod(slab *spawnerv1.SessionLivedBackend, c *statusChange, pod *corev1.Pod, now time.Time, startupTimeout time.Duration) time.Duration {
	v := ObservePod(pod)
	switch {
	case v.NodeName != "":
		c.status.NodeName = v.NodeName
		// A milestone reached keeps its reason: a warm claim recorded it
		// (WarmPodClaimed), and rewriting it was one more write per claim.
		if !c.isTrue(lifecycle.ConditionScheduled) {
			c.record(lifecycle.ConditionScheduled, lifecycle.ReasonScheduled, "pod scheduled to node "+v.NodeName)
		}
	case v.Unschedulable != "":
		c.clear(lifecycle.ConditionScheduled, lifecycle.ReasonUnschedulable, v.Unschedulable)
	}
	if v.PodIP != "" {
		c.status.PodIP = v.PodIP
	}
	if v.Failure != nil {
		c.fail(*v.Failure)
		return 0
	}
	if v.Started && !c.isTrue(lifecycle.ConditionRunning) {
		c.record(lifecycle.ConditionRunning, lifecycle.ReasonContainersStarted, "application and sidecar containers started")
	}
	if startupTimeout <= 0 || c.isTrue(lifecycle.ConditionReady) {
		return 0
	}
	left := slab.CreationTimestamp.Add(startupTimeout).Sub(now)
	if left > 0 {
		return left
	}
	switch {
	case v.NodeName == "":
		msg := fmt.Sprintf("pod not scheduled within %s", startupTimeout)
		if v.Unschedulable != "" {
			msg += ": " + v.Unschedulable
		}
		c.fail(Failure{Reason: lifecycle.ReasonUnschedulable, Message: msg})
	default:
		msg := fmt.Sprintf("backend not ready within %s", startupTimeout)
		switch {
		case v.Waiting != "":
			msg += ": waiting for " + v.Waiting
		case v.Started:
			msg += fmt.Sprintf(": containers running but the application never listened on port %d", slab.Spec.EffectiveHTTPPort())
		}
		c.fail(Failure{Reason: lifecycle.ReasonStartupTimeout, Message: msg})
	}
	return 0
}
