package pool

import "testing"

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
