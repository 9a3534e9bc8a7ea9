package loop

import "time"

// Backoff is the delay before retry n (0-based): min(base·2ⁿ, max),
// computed without overflow. A negative n counts as 0; the result is never
// negative.
func Backoff(base, max time.Duration, n int) time.Duration {
	if base <= 0 || max <= 0 {
		return 0
	}
	d := base
	for i := 0; i < n; i++ {
		if d >= max || d > (1<<63-1)/2 {
			return max
		}
		d *= 2
	}
	return min(d, max)
}
