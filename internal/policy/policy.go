package policy

import (
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/bap"
)

// RPM is the product's rate_limit_rpm for Limiter.Reserve; 0 (absent, or
// set to 0) means unlimited.
func RPM(p bap.Policy) int {
	if p.RateLimitRPM == nil {
		return 0
	}
	return *p.RateLimitRPM
}

// RetryAfterSeconds rounds a Retry-After duration up to whole seconds, at
// least 1, as the Retry-After header and the RATE_LIMITED message show it.
func RetryAfterSeconds(d time.Duration) int {
	if d <= 0 {
		return 1
	}
	return int((d + time.Second - 1) / time.Second)
}

// RateLimitError is the RATE_LIMITED error for a denial whose first slot
// frees after retryAfter. RetryAfter keeps the exact duration; the message
// (and the header the API writes) round it up to whole seconds.
func RateLimitError(retryAfter time.Duration) *bap.Error {
	return &bap.Error{
		Code:       bap.CodeRateLimited,
		Message:    "Rate limit exceeded. Retry in " + strconv.Itoa(RetryAfterSeconds(retryAfter)) + " seconds.",
		RetryAfter: max(retryAfter, time.Nanosecond),
	}
}
