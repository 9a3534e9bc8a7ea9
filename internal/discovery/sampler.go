package discovery

import (
	"sync"
	"time"
)

// maxSamples bounds the denial sampler's memory. Under a flood of denials
// for more distinct users than this within one interval, further rows are
// dropped rather than memory grown: the audit log is a record, not a
// firehose.
const maxSamples = 1 << 16

// sampler lets at most one event per key through per interval.
type sampler struct {
	mu       sync.Mutex
	interval time.Duration
	last     map[string]time.Time
}

func newSampler(interval time.Duration) *sampler {
	return &sampler{interval: interval, last: map[string]time.Time{}}
}

// allow reports whether an event for key at now is to be recorded, and if
// so counts it.
func (s *sampler) allow(key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.last[key]; ok && now.Sub(t) < s.interval {
		return false
	}
	if len(s.last) >= maxSamples {
		s.pruneLocked(now)
		if len(s.last) >= maxSamples {
			return false
		}
	}
	s.last[key] = now
	return true
}

// prune forgets keys whose interval has passed.
func (s *sampler) prune(now time.Time) {
	s.mu.Lock()
	s.pruneLocked(now)
	s.mu.Unlock()
}

func (s *sampler) pruneLocked(now time.Time) {
	for k, t := range s.last {
		if now.Sub(t) >= s.interval {
			delete(s.last, k)
		}
	}
}
