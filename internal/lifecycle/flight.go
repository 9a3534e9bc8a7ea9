package lifecycle

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// flights serializes operations per key within this process (an engine id,
// or a product/user pair for provisions) and lets a caller of an operation
// that is already running or queued for that key join it and share its
// result. Operations run detached from their callers' contexts, bounded by
// the operation timeout, so a caller that gives up never interrupts a
// backend operation half-way. Across processes, the claim on the engine's
// row does the same (claim.go).
type flights struct {
	timeout time.Duration
	running sync.WaitGroup
	mu      sync.Mutex
	slots   map[string]*slot
}

type slot struct {
	turn    chan struct{} // one token: whoever holds it runs
	running *call
	pending map[string]*call // queued calls by operation name
	refs    int              // calls created and not yet finished
}

type call struct {
	op   string
	done chan struct{}
	res  Result
	err  error
}

func newFlights(timeout time.Duration) *flights {
	return &flights{timeout: timeout, slots: map[string]*slot{}}
}

// wait waits for every operation started so far to finish.
func (f *flights) wait() { f.running.Wait() }

// do runs fn as operation op on key, or joins the same operation already
// running or queued there. It waits for the result or for ctx to end.
func (f *flights) do(ctx context.Context, key, op string, fn func(context.Context) (Result, error)) (Result, error) {
	f.mu.Lock()
	s := f.slots[key]
	if s == nil {
		s = &slot{turn: make(chan struct{}, 1), pending: map[string]*call{}}
		s.turn <- struct{}{}
		f.slots[key] = s
	}
	if c := s.running; c != nil && c.op == op {
		f.mu.Unlock()
		return wait(ctx, c)
	}
	if c := s.pending[op]; c != nil {
		f.mu.Unlock()
		return wait(ctx, c)
	}
	c := &call{op: op, done: make(chan struct{})}
	s.pending[op] = c
	s.refs++
	f.mu.Unlock()

	f.running.Add(1)
	go func() {
		defer f.running.Done()
		<-s.turn
		f.mu.Lock()
		delete(s.pending, op)
		s.running = c
		f.mu.Unlock()

		func() {
			opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.timeout)
			defer cancel()
			defer func() {
				if r := recover(); r != nil {
					c.err = fmt.Errorf("operation %s panicked: %v", op, r)
				}
			}()
			c.res, c.err = fn(opCtx)
		}()

		f.mu.Lock()
		s.running = nil
		s.refs--
		if s.refs == 0 {
			delete(f.slots, key)
		}
		f.mu.Unlock()
		s.turn <- struct{}{}
		close(c.done)
	}()
	return wait(ctx, c)
}

// idle waits until no operation is running or queued on key.
func (f *flights) idle(ctx context.Context, key string) error {
	for {
		f.mu.Lock()
		s := f.slots[key]
		var c *call
		if s != nil {
			c = s.running
			if c == nil {
				for _, p := range s.pending {
					c = p
					break
				}
			}
		}
		f.mu.Unlock()
		if c == nil {
			return nil
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// inFlight reports whether an operation is running or queued on key.
func (f *flights) inFlight(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slots[key] != nil
}

func wait(ctx context.Context, c *call) (Result, error) {
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return Result{}, fmt.Errorf("waiting for %s: %w", c.op, ctx.Err())
	}
}
