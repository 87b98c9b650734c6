package bench

import (
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"
)

// The soak's verdicts, kept apart from the cluster so they can be checked
// here (TestSoakVerdicts runs in make test-unit): a soakRecord is one
// backend's client record; what it did and when decides whether a sweep the
// watch saw was false, on time or late, and whether one is missing.
const (
	soakGrace = 20 * time.Second // every backend's gracePeriodSeconds
	// soakSlack is the margin the verdicts allow for the hop between a
	// client's clock and the sidecar's (the same machine) and for the watch:
	// a sweep more than this before last activity + grace is false.
	soakSlack = time.Second
	// soakMissAfter: a backend idle for grace + this and not swept is a
	// missed sweep (#17's definition).
	soakMissAfter = 2 * time.Second
	// soakOnTime: a sweep within this of its due time (last activity +
	// grace) is on time (#19's goal).
	soakOnTime = time.Second
	// soakBreakWindow: a connection that broke this shortly before the
	// watch saw the backend Swept was cut by the sweep (the controller
	// deletes the pod once the sweeper records Swept, and the watch can
	// deliver that record after the client saw its socket close); the sweep
	// is judged on what the client did before the break.
	soakBreakWindow = 5 * time.Second
)

// soakRecord is what one client did that counts as activity, and what the
// watch saw of its backend.
type soakRecord struct {
	mu sync.Mutex
	// holding: a connection that keeps the backend alive is open (for a
	// backend with wsIdleSeconds, frames are still flowing). lastActive:
	// the client's last act that counts (a frame, an open, a close, the end
	// of a request).
	holding    bool
	lastActive time.Time
	// brokeAt, before: when a connection last broke without the client
	// closing it, and the record just before that break.
	brokeAt       time.Time
	beforeHolding bool
	beforeActive  time.Time

	sweptAt    time.Time     // when the watch first saw the backend Swept (zero: not seen)
	late       time.Duration // sweptAt − (last activity + grace), judged at the sweep
	falseSweep string
	// overdueSince: the last activity of a stretch in which the backend was
	// seen idle past grace + soakMissAfter and not swept (zero: never).
	overdueSince time.Time
	errors       []soakError // client-visible errors before any sweep
}

type soakError struct {
	at  time.Time
	msg string
}

// active records an act of the client at now: holding says whether a
// connection that keeps the backend alive stays open after it.
func (r *soakRecord) active(holding bool, now time.Time) {
	r.mu.Lock()
	r.holding, r.lastActive = holding, now
	r.mu.Unlock()
}

// broke records a connection that ended without the client closing it: the
// sidecar saw it end about now (so it counts as activity), unless the sweep
// itself cut it, which observeSweep tells apart.
func (r *soakRecord) broke(now time.Time) {
	r.mu.Lock()
	r.brokeAt, r.beforeHolding, r.beforeActive = now, r.holding, r.lastActive
	r.holding, r.lastActive = false, now
	r.mu.Unlock()
}

func (r *soakRecord) fail(now time.Time, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sweptAt.IsZero() {
		r.errors = append(r.errors, soakError{now, msg})
	}
}

func (r *soakRecord) swept() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.sweptAt.IsZero()
}

// observeSweep is the watch's report that the backend was swept at at; the
// verdict on it is made from the client's record at that moment.
func (r *soakRecord) observeSweep(at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.sweptAt.IsZero() {
		return
	}
	r.sweptAt = at
	holding, last := r.holding, r.lastActive
	if !r.brokeAt.IsZero() && r.lastActive.Equal(r.brokeAt) && at.Sub(r.brokeAt) < soakBreakWindow {
		holding, last = r.beforeHolding, r.beforeActive
	}
	r.late = at.Sub(last.Add(soakGrace))
	switch {
	case holding:
		r.falseSweep = "swept while the client held a connection open"
	case r.late < -soakSlack:
		r.falseSweep = fmt.Sprintf("swept %v after the client's last activity (%s), grace is %v",
			at.Sub(last).Round(time.Millisecond), last.Format("15:04:05.000"), soakGrace)
	}
}

// checkOverdue notes, at now, a backend idle past grace + soakMissAfter and
// not swept; the soak calls it every few hundred milliseconds. Its verdict
// does not depend on anything the client does later (a silent socket closed
// at the end of the run would otherwise hide a backend left running).
func (r *soakRecord) checkOverdue(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sweptAt.IsZero() && !r.holding && !r.lastActive.IsZero() && r.overdueSince.IsZero() &&
		now.After(r.lastActive.Add(soakGrace+soakMissAfter)) {
		r.overdueSince = r.lastActive
	}
}

// soakVerdict is the end of one record: a false sweep, a sweep and how late,
// a missed one (late > soakMissAfter, or never swept while overdue), or none
// due within the run.
type soakVerdict struct {
	falseSweep string
	swept      bool
	late       time.Duration // for swept
	missed     bool
	due        time.Time // last activity + grace, for a swept or missed one
}

func (r *soakRecord) verdict() soakVerdict {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := soakVerdict{falseSweep: r.falseSweep, swept: !r.sweptAt.IsZero() && r.falseSweep == "", late: r.late}
	switch {
	case v.falseSweep != "":
	case v.swept:
		v.missed, v.due = r.late > soakMissAfter, r.sweptAt.Add(-r.late)
	case !r.overdueSince.IsZero():
		v.missed, v.due = true, r.overdueSince.Add(soakGrace)
	}
	return v
}

// lateness summarizes the sweeps' delays past their due times.
type lateness struct {
	n, onTime  int
	p50, p99   time.Duration
	max, early time.Duration // early: the most negative (a sweep before its due time, within the slack)
}

func summarizeLateness(d []time.Duration) lateness {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	l := lateness{n: len(s)}
	if len(s) == 0 {
		return l
	}
	at := func(p float64) time.Duration { return s[int(float64(len(s)-1)*p+0.5)] }
	l.p50, l.p99, l.max, l.early = at(0.5), at(0.99), s[len(s)-1], s[0]
	for _, x := range s {
		if x >= -soakOnTime && x <= soakOnTime {
			l.onTime++
		}
	}
	return l
}

func TestSoakVerdicts(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	sec := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for _, tc := range []struct {
		name    string
		play    func(r *soakRecord)
		want    soakVerdict
		isFalse bool
	}{{
		name: "swept 0.4 s past grace after the client left",
		play: func(r *soakRecord) { r.active(true, sec(0)); r.active(false, sec(10)); r.observeSweep(sec(30.4)) },
		want: soakVerdict{swept: true, late: 400 * time.Millisecond, due: sec(30)},
	}, {
		name:    "swept while a connection was held",
		play:    func(r *soakRecord) { r.active(true, sec(0)); r.observeSweep(sec(30)) },
		isFalse: true,
	}, {
		name:    "swept 2 s before grace ran out",
		play:    func(r *soakRecord) { r.active(false, sec(10)); r.observeSweep(sec(28)) },
		isFalse: true,
	}, {
		// The silent socket, cut when its pod went, before the watch
		// delivered Swept: judged on the socket's open at 10 s.
		name: "a silent socket cut by the sweep before the watch saw it",
		play: func(r *soakRecord) { r.active(false, sec(10)); r.broke(sec(30.2)); r.observeSweep(sec(30.5)) },
		want: soakVerdict{swept: true, late: 500 * time.Millisecond, due: sec(30)},
	}, {
		// A held socket broken (say, a router restart) and swept soon
		// after: the break is no excuse.
		name:    "swept right after a held connection broke",
		play:    func(r *soakRecord) { r.active(true, sec(0)); r.broke(sec(10)); r.observeSweep(sec(12)) },
		isFalse: true,
	}, {
		// A break long before the sweep is the sidecar's last activity.
		name: "swept grace after a connection broke",
		play: func(r *soakRecord) { r.active(true, sec(0)); r.broke(sec(10)); r.observeSweep(sec(30.3)) },
		want: soakVerdict{swept: true, late: 300 * time.Millisecond, due: sec(30)},
	}, {
		name: "swept 3 s late",
		play: func(r *soakRecord) { r.active(false, sec(10)); r.observeSweep(sec(33)) },
		want: soakVerdict{swept: true, late: 3 * time.Second, missed: true, due: sec(30)},
	}, {
		// A silent socket left open and never swept: the client's final
		// close at the end of the run must not hide it.
		name: "never swept, then the client closed at the end",
		play: func(r *soakRecord) {
			r.active(false, sec(10))
			for s := 10.0; s < 100; s += 0.5 {
				r.checkOverdue(sec(s))
			}
			r.active(false, sec(100))
		},
		want: soakVerdict{missed: true, due: sec(30)},
	}, {
		name: "idle, not yet overdue at the end",
		play: func(r *soakRecord) { r.active(false, sec(10)); r.checkOverdue(sec(31.9)) },
		want: soakVerdict{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := &soakRecord{}
			tc.play(r)
			got := r.verdict()
			if tc.isFalse {
				if got.falseSweep == "" || got.swept || got.missed {
					t.Fatalf("want a false sweep, got %+v", got)
				}
				return
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSummarizeLateness(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*50*time.Millisecond) // 50 ms … 5 s
	}
	d = append(d, -800*time.Millisecond)
	l := summarizeLateness(d)
	// 101 values: -0.8 s, 0.05 … 5 s; on time: -0.8 s and 0.05 … 1 s (20).
	if l.n != 101 || l.onTime != 21 || l.p50 != 2500*time.Millisecond || l.p99 != 4950*time.Millisecond || l.max != 5*time.Second || l.early != -800*time.Millisecond {
		t.Fatalf("got %+v", l)
	}
	if z := summarizeLateness(nil); z.n != 0 || z.onTime != 0 {
		t.Fatalf("empty: %+v", z)
	}
}
