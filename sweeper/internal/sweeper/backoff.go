package sweeper

import (
	"math/rand/v2"
	"time"
)

// backoff yields reconnect delays doubling from min to max, each with up to
// ±20% jitter so that the streams of a restarted sweeper (or of a node whose
// network blipped) do not reconnect in lockstep.
type backoff struct {
	min, max time.Duration
	next     time.Duration
	jitter   func() float64 // in [0,1); tests make it constant
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, next: min, jitter: rand.Float64}
}

// Next returns the delay before the next attempt and doubles the one after.
func (b *backoff) Next() time.Duration {
	d := b.next
	b.next = min(b.next*2, b.max)
	j := 0.8 + 0.4*b.jitter()
	return min(time.Duration(float64(d)*j), b.max)
}

// Reset starts again from min, after a connection that worked.
func (b *backoff) Reset() { b.next = b.min }
