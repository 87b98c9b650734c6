package pool

import (
	"testing"
	"time"
)

// TestToCreateKeepsStartsBounded: a pool short of pods creates toward its
// replicas, at most a batch per sync and never more than maxStarting
// starting at once (a refill after a burst of claims started as many pods
// as were claimed, all at once).
func TestToCreateKeepsStartsBounded(t *testing.T) {
	for _, c := range []struct{ want, current, starting, max, batch, out int }{
		{100, 0, 0, 10, 16, 10},  // empty pool of 100: ten at a time
		{100, 10, 10, 10, 16, 0}, // ten starting: wait for one to be Ready
		{100, 20, 7, 10, 16, 3},  // 13 Ready, 7 starting: three more
		{5, 2, 0, 10, 16, 3},     // small pool: what is missing
		{40, 0, 0, 50, 16, 16},   // a large maxStarting: the batch bounds a sync
		{10, 12, 0, 10, 16, 0},   // more than wanted: none
		{10, 5, 12, 10, 16, 0},   // above the cap (lowered meanwhile): none, never negative
	} {
		if got := toCreate(c.want, c.current, c.starting, c.max, c.batch); got != c.out {
			t.Errorf("toCreate(want %d, current %d, starting %d, max %d, batch %d) = %d, want %d", c.want, c.current, c.starting, c.max, c.batch, got, c.out)
		}
	}
}

func TestRefillWaitsForABurstOfClaims(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name        string
		first, last time.Duration // after t0
		now         time.Duration
		want        time.Duration
	}{
		{"no claim", -1, -1, 0, 0},
		{"a claim just now", 0, 0, 100 * time.Millisecond, refillQuiet - 100*time.Millisecond},
		{"quiet since the last claim", 0, 0, refillQuiet, 0},
		{"claims still coming", 0, 3 * time.Second, 3*time.Second + 100*time.Millisecond, refillQuiet - 100*time.Millisecond},
		{"a burst past the longest deferral", 0, refillMaxDefer - 100*time.Millisecond, refillMaxDefer, 0},
	} {
		var b claimBurst
		if c.first >= 0 {
			b = claimBurst{first: t0.Add(c.first), last: t0.Add(c.last)}
		}
		if got := refillWait(b, t0.Add(c.now)); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
