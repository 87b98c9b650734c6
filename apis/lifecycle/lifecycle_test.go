package lifecycle

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func TestPhaseFollowsTheLatestTrueMilestone(t *testing.T) {
	var status spawnerv1.SessionLivedBackendStatus
	steps := []struct {
		condition string
		want      spawnerv1.BackendPhase
	}{
		{ConditionPodCreated, Pending},
		{ConditionScheduled, Scheduled},
		{ConditionRunning, Running},
		{ConditionReady, Ready},
		{ConditionSwept, Swept},
		{ConditionTerminating, Terminating},
	}
	for _, step := range steps {
		if !Record(&status, step.condition, "Because", "", 1) {
			t.Fatalf("Record(%s) reported no change", step.condition)
		}
		if status.Phase != step.want {
			t.Fatalf("after %s: phase %s, want %s", step.condition, status.Phase, step.want)
		}
	}
}

func TestFailedWinsOverEveryOtherMilestone(t *testing.T) {
	var status spawnerv1.SessionLivedBackendStatus
	Record(&status, ConditionReady, ReasonAppListening, "", 1)
	Record(&status, ConditionFailed, ReasonAppExited, "exit code 1", 1)
	if status.Phase != Failed {
		t.Fatalf("phase %s, want Failed", status.Phase)
	}
}

func TestRecordingTheSameMilestoneTwiceChangesNothing(t *testing.T) {
	var status spawnerv1.SessionLivedBackendStatus
	Record(&status, ConditionRunning, ReasonContainersStarted, "", 1)
	first := status.Conditions[0].LastTransitionTime
	if Record(&status, ConditionRunning, ReasonContainersStarted, "", 1) {
		t.Error("second identical Record reported a change; callers would write for nothing")
	}
	if status.Conditions[0].LastTransitionTime != first {
		t.Error("an unchanged condition lost its original transition time")
	}
}

func TestClearedMilestoneNoLongerCounts(t *testing.T) {
	var status spawnerv1.SessionLivedBackendStatus
	Record(&status, ConditionScheduled, ReasonScheduled, "", 1)
	Clear(&status, ConditionScheduled, ReasonUnschedulable, "0/1 nodes match", 1)
	if status.Phase != Pending {
		t.Fatalf("phase %s, want Pending", status.Phase)
	}
	if TransitionTime(status.Conditions, ConditionScheduled) == nil {
		t.Error("a false condition must still be listed with its time")
	}
	if TransitionTime(status.Conditions, ConditionReady) != nil {
		t.Error("TransitionTime of an absent condition must be nil")
	}
}

func TestEndingBackendsGainNoNewProgress(t *testing.T) {
	cases := []struct {
		phase     spawnerv1.BackendPhase
		condition string
		allowed   bool
	}{
		{Running, ConditionReady, true},
		{Ready, ConditionSwept, true},
		{Swept, ConditionReady, false},
		{Swept, ConditionTerminating, true},
		{Swept, ConditionFailed, false},
		{Terminating, ConditionFailed, false},
		{Terminating, ConditionReady, false},
		{Failed, ConditionSwept, false},
		{Failed, ConditionReady, false},
	}
	for _, tc := range cases {
		if got := CanRecord(tc.phase, tc.condition); got != tc.allowed {
			t.Errorf("CanRecord(%s, %s) = %v, want %v", tc.phase, tc.condition, got, tc.allowed)
		}
	}
}

func TestOnlyEndingPhasesAreEnding(t *testing.T) {
	for phase, want := range map[spawnerv1.BackendPhase]bool{
		Pending: false, Scheduled: false, Running: false, Ready: false,
		Swept: true, Terminating: true, Failed: true,
	} {
		if IsEnding(phase) != want {
			t.Errorf("IsEnding(%s) = %v, want %v", phase, !want, want)
		}
	}
}

func TestMilestonesListEveryPhaseInOrder(t *testing.T) {
	want := []spawnerv1.BackendPhase{Pending, Scheduled, Running, Ready, Swept, Terminating, Failed}
	got := Milestones()
	if len(got) != len(want) {
		t.Fatalf("%d milestones, want %d", len(got), len(want))
	}
	for i, m := range got {
		if m.Phase != want[i] {
			t.Errorf("milestone %d is %s, want %s", i, m.Phase, want[i])
		}
		if ConditionOf(m.Phase) != m.Condition {
			t.Errorf("ConditionOf(%s) = %q, want %q", m.Phase, ConditionOf(m.Phase), m.Condition)
		}
	}
	got[0].Phase = "Changed"
	if Milestones()[0].Phase != Pending {
		t.Error("Milestones handed out its own list: a caller changed the phase machine")
	}
}

func TestPhaseIsComputedFromTheConditions(t *testing.T) {
	var slab spawnerv1.SessionLivedBackend
	Record(&slab.Status, ConditionRunning, ReasonContainersStarted, "", 1)
	slab.Status.Phase = Pending // a stale stored summary does not decide
	if got := Phase(&slab); got != Running {
		t.Fatalf("Phase = %s, want Running", got)
	}
}

func TestRecordWritesWhyTheBackendEnds(t *testing.T) {
	var status spawnerv1.SessionLivedBackendStatus
	Record(&status, ConditionReady, ReasonAppListening, "listening", 1)
	if status.Reason != "" || status.Message != "" {
		t.Fatalf("a progress milestone set status.reason/message: %q %q", status.Reason, status.Message)
	}
	for _, c := range []string{ConditionSwept, ConditionTerminating, ConditionFailed} {
		var st spawnerv1.SessionLivedBackendStatus
		if !Record(&st, c, "Why", "because", 1) {
			t.Fatalf("Record(%s) reported no change", c)
		}
		if st.Reason != "Why" || st.Message != "because" {
			t.Errorf("after %s: reason %q message %q, want Why/because", c, st.Reason, st.Message)
		}
	}
}

func TestRecordClaimedPassesEveryMilestoneUpToReady(t *testing.T) {
	var status spawnerv1.SessionLivedBackendStatus
	Record(&status, ConditionPodCreated, ReasonPodCreated, "by the controller", 1)
	if !RecordClaimed(&status, "claimed warm pod rooms-x", 1) {
		t.Fatal("RecordClaimed reported no change")
	}
	if status.Phase != Ready {
		t.Fatalf("phase %s, want Ready", status.Phase)
	}
	for _, m := range Milestones()[:4] {
		c := findCondition(status.Conditions, m.Condition)
		if c == nil || c.Status != "True" {
			t.Fatalf("%s not true after a claim: %+v", m.Condition, status.Conditions)
		}
		want := ReasonWarmPodClaimed
		if m.Condition == ConditionPodCreated {
			want = ReasonPodCreated // already true: kept
		}
		if c.Reason != want {
			t.Errorf("%s: reason %s, want %s", m.Condition, c.Reason, want)
		}
	}
	for _, c := range []string{ConditionSwept, ConditionTerminating, ConditionFailed} {
		if findCondition(status.Conditions, c) != nil {
			t.Errorf("RecordClaimed recorded %s", c)
		}
	}
	if RecordClaimed(&status, "claimed warm pod rooms-x", 1) {
		t.Error("a second RecordClaimed reported a change")
	}
}

func TestRecordClaimedDoesNotReviveAnEndingBackend(t *testing.T) {
	for _, end := range []string{ConditionSwept, ConditionTerminating, ConditionFailed} {
		var status spawnerv1.SessionLivedBackendStatus
		Record(&status, ConditionPodCreated, ReasonPodCreated, "", 1)
		Record(&status, end, ReasonTerminationRequested, "", 1)
		before := status.Phase
		if RecordClaimed(&status, "late claim", 1) || status.Phase != before {
			t.Errorf("after %s: RecordClaimed changed the status (phase %s)", end, status.Phase)
		}
	}
}

func findCondition(cs []metav1.Condition, t string) *metav1.Condition {
	return meta.FindStatusCondition(cs, t)
}

func TestClaimRecordPending(t *testing.T) {
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	mk := func(pool, pod string, ready bool) *spawnerv1.SessionLivedBackend {
		s := &spawnerv1.SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: "b", CreationTimestamp: metav1.NewTime(created), Annotations: map[string]string{}}}
		if pool != "" {
			s.Annotations[spawnerv1.AnnotationPool] = pool
		}
		if pod != "" {
			s.Annotations[spawnerv1.AnnotationPod] = pod
		}
		if ready {
			RecordClaimed(&s.Status, "claimed", 1)
		}
		return s
	}
	for _, c := range []struct {
		name string
		slab *spawnerv1.SessionLivedBackend
		age  time.Duration
		want bool
	}{
		{"bound to a warm pod", mk("rooms", "rooms-x", false), time.Second, true},
		{"claiming", mk("rooms", "", false), time.Second, true},
		{"past the wait", mk("rooms", "rooms-x", false), ClaimRecordWait, false},
		{"already Ready", mk("rooms", "rooms-x", true), time.Second, false},
		{"bound cold", mk("rooms", "b", false), time.Second, false},
		{"not from a pool", mk("", "", false), time.Second, false},
	} {
		if got := ClaimRecordPending(c.slab, created.Add(c.age)); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
