// Package lifecycle is spawner's phase machine: the one place that says which
// milestones a backend has, in what order, and what one-word phase a set of
// milestones amounts to. Every component that records a milestone (controller,
// sweeper, api-server) changes a condition here and recomputes the phase here.
package lifecycle

import (
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// Phases, in the order a healthy backend passes through them.
const (
	Pending     spawnerv1.BackendPhase = "Pending"
	Scheduled   spawnerv1.BackendPhase = "Scheduled"
	Running     spawnerv1.BackendPhase = "Running"
	Ready       spawnerv1.BackendPhase = "Ready"
	Swept       spawnerv1.BackendPhase = "Swept"
	Terminating spawnerv1.BackendPhase = "Terminating"
	Failed      spawnerv1.BackendPhase = "Failed"
)

// Condition types: the milestones. Each is written by exactly one kind of
// component (docs/architecture.md), except Swept, which records a request to
// end the backend and so may come from the sweeper, the api-server or the
// controller.
const (
	ConditionPodCreated  = "PodCreated"
	ConditionScheduled   = "Scheduled"
	ConditionRunning     = "Running"
	ConditionReady       = "Ready"
	ConditionSwept       = "Swept"
	ConditionTerminating = "Terminating"
	ConditionFailed      = "Failed"
)

// Reasons. A Swept or Terminating condition's reason says why the backend
// ends; a Failed condition's reason says what went wrong.
const (
	ReasonPodCreated           = "PodCreated"
	ReasonScheduled            = "Scheduled"
	ReasonContainersStarted    = "ContainersStarted"
	ReasonAppListening         = "AppListening"
	ReasonIdle                 = "Idle"
	ReasonTerminationRequested = "TerminationRequested"
	ReasonLifetimeExceeded     = "LifetimeExceeded"
	ReasonImagePullFailed      = "ImagePullFailed"
	ReasonAppExited            = "AppExited"
	ReasonUnschedulable        = "Unschedulable"
	ReasonStartupTimeout       = "StartupTimeout"
	ReasonPodLost              = "PodLost"
	ReasonInvalidSpec          = "InvalidSpec"
	// ReasonWarmPodClaimed: the backend was bound to a pool's warm pod,
	// already running and listening, so it passed every milestone up to
	// Ready at the claim (RecordClaimed).
	ReasonWarmPodClaimed = "WarmPodClaimed"
)

// Milestone is a phase and the condition that records it.
type Milestone struct {
	Phase     spawnerv1.BackendPhase
	Condition string
}

// milestones are the phases in the order a healthy backend passes through
// them, then Failed (reachable from any phase that is not ending). A backend
// is Pending from its creation; PodCreated only explains that phase.
var milestones = []Milestone{
	{Pending, ConditionPodCreated},
	{Scheduled, ConditionScheduled},
	{Running, ConditionRunning},
	{Ready, ConditionReady},
	{Swept, ConditionSwept},
	{Terminating, ConditionTerminating},
	{Failed, ConditionFailed},
}

// Milestones returns every phase, in order, with the condition that records
// it. Lists of phases (the api-server's status stream, the waiting page) come
// from here.
func Milestones() []Milestone { return slices.Clone(milestones) }

// ConditionOf is the condition that records a phase, "" for an unknown one.
func ConditionOf(phase spawnerv1.BackendPhase) string {
	for _, m := range milestones {
		if m.Phase == phase {
			return m.Condition
		}
	}
	return ""
}

// PhaseOf is the phase that the conditions amount to: the latest milestone
// whose condition is true, Pending when none after it is.
func PhaseOf(conditions []metav1.Condition) spawnerv1.BackendPhase {
	for i := len(milestones) - 1; i > 0; i-- {
		if meta.IsStatusConditionTrue(conditions, milestones[i].Condition) {
			return milestones[i].Phase
		}
	}
	return Pending
}

// Phase is a backend's phase, computed from its conditions: the authority
// every reader uses (status.phase stores the same value, for kubectl and
// for watchers that select on it).
func Phase(slab *spawnerv1.SessionLivedBackend) spawnerv1.BackendPhase {
	return PhaseOf(slab.Status.Conditions)
}

// IsEnding reports whether a backend in this phase will never serve again:
// it must not be routed to, and its key may be given a new backend.
func IsEnding(phase spawnerv1.BackendPhase) bool {
	return phase == Swept || phase == Terminating || phase == Failed
}

// Record sets a true condition (keeping the original transition time when it
// was already true) and recomputes the phase. A condition that ends the
// backend (Swept, Terminating, Failed) also becomes status.reason and
// status.message, the one-line why that kubectl and clients read. It reports
// whether anything changed, so callers skip writes that would change nothing.
func Record(status *spawnerv1.SessionLivedBackendStatus, conditionType, reason, message string, generation int64) bool {
	changed := set(status, metav1.Condition{
		Type: conditionType, Status: metav1.ConditionTrue, Reason: reason, Message: message, ObservedGeneration: generation,
	})
	switch conditionType {
	case ConditionSwept, ConditionTerminating, ConditionFailed:
		if status.Reason != reason || status.Message != message {
			status.Reason, status.Message = reason, message
			changed = true
		}
	}
	return changed
}

// RecordClaimed records every milestone up to Ready at once, reason
// ReasonWarmPodClaimed, for a backend the api-server bound to a pool's warm
// pod whose app already listens: the backend is Ready at its claim, not a
// sweeper's round trip later (issue #16; docs/pools.md). Milestones already
// true keep their reason and time. It records nothing on a backend that may
// no longer progress (CanRecord), and reports whether anything changed.
func RecordClaimed(status *spawnerv1.SessionLivedBackendStatus, message string, generation int64) bool {
	changed := false
	for _, m := range milestones {
		if !CanRecord(PhaseOf(status.Conditions), m.Condition) {
			return changed
		}
		if !meta.IsStatusConditionTrue(status.Conditions, m.Condition) {
			changed = Record(status, m.Condition, ReasonWarmPodClaimed, message, generation) || changed
		}
		if m.Phase == Ready {
			return changed
		}
	}
	return changed
}

// ClaimRecordWait is how long after a pool backend's creation its warm
// claim may still record Ready (RecordClaimed, written by the api-server
// that claimed once its claims are quiet, at most half this after the
// slab's create, so that a burst's records do not compete with its claims;
// a claim on its own is recorded a moment after its answer). Until then the
// sweeper does not record that backend's Ready and the controller does not
// write its status unless it fails, so neither races the claim's write
// (docs/pools.md). It was 5 s; a burst of 100 claims lasted 3–4 s on the
// local cluster, longer than the 2.5 s its records could wait.
const ClaimRecordWait = 10 * time.Second

// ClaimRecordPending reports whether slab is a pool backend, claiming or
// bound to a warm pod (not a cold pod of its own), not Ready yet and
// created less than ClaimRecordWait before now: its claim is about to
// record its Ready.
func ClaimRecordPending(slab *spawnerv1.SessionLivedBackend, now time.Time) bool {
	if slab.Annotations[spawnerv1.AnnotationPool] == "" || meta.IsStatusConditionTrue(slab.Status.Conditions, ConditionReady) {
		return false
	}
	if pod, bound := spawnerv1.PodNameOf(slab); bound && pod == slab.Name {
		return false // bound cold: nobody else records its Ready
	}
	return now.Sub(slab.CreationTimestamp.Time) < ClaimRecordWait
}

// Clear sets a condition false (for milestones that can be lost, such as
// Scheduled while a pod waits for a node) and recomputes the phase.
func Clear(status *spawnerv1.SessionLivedBackendStatus, conditionType, reason, message string, generation int64) bool {
	return set(status, metav1.Condition{
		Type: conditionType, Status: metav1.ConditionFalse, Reason: reason, Message: message, ObservedGeneration: generation,
	})
}

func set(status *spawnerv1.SessionLivedBackendStatus, c metav1.Condition) bool {
	changed := meta.SetStatusCondition(&status.Conditions, c)
	if phase := PhaseOf(status.Conditions); phase != status.Phase {
		status.Phase = phase
		changed = true
	}
	return changed
}

// CanRecord reports whether a milestone may still be recorded in a phase:
// nothing is recorded after Failed, and an ending backend gains no new
// progress (a late Ready must not revive a swept backend).
func CanRecord(phase spawnerv1.BackendPhase, conditionType string) bool {
	switch phase {
	case Failed:
		return false
	case Swept:
		// The application is about to be stopped; how it stops is not a failure.
		return conditionType == ConditionTerminating
	case Terminating:
		// An application exiting on SIGTERM is the end we asked for, not a failure.
		return false
	}
	return true
}

// TransitionTime is when a condition last became what it is now, and nil if
// it is absent.
func TransitionTime(conditions []metav1.Condition, conditionType string) *metav1.Time {
	c := meta.FindStatusCondition(conditions, conditionType)
	if c == nil {
		return nil
	}
	t := c.LastTransitionTime
	return &t
}
