// Package testclock is the one settable clock tests inject where code takes
// a Now func (the rate limiter, discovery, the API's key grace, the
// dashboard's sessions). Safe for concurrent use.
package testclock

import (
	"sync"
	"time"
)

// Clock is a time that moves only when told to (Fixed), or real time plus
// whatever it was advanced by (Running).
type Clock struct {
	mu      sync.Mutex
	t       time.Time     // a fixed clock's time
	offset  time.Duration // a running clock's lead over real time
	running bool
}

// Fixed returns a clock standing at t until advanced or set.
func Fixed(t time.Time) *Clock { return &Clock{t: t} }

// Running returns a clock that follows real time, ahead of it by what it
// has been advanced.
func Running() *Clock { return &Clock{running: true} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return time.Now().Add(c.offset)
	}
	return c.t
}

// Advance moves the clock forward by d (backward when d is negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		c.offset += d
	} else {
		c.t = c.t.Add(d)
	}
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		c.offset = time.Until(t)
	} else {
		c.t = t
	}
}
