package docker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// Event-watch tuning.
const (
	// ownStopSlack widens each own-operation span, covering the daemon
	// stamping a die event a little before or after our call's bounds.
	ownStopSlack = time.Second
	// ownStopKeep is how long a finished span is remembered, so a die
	// replayed after a stream reconnect is still recognised as ours.
	ownStopKeep = 10 * time.Minute
	// Reconnect backoff of the event stream.
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	// watchHealthy is how long a stream must have lived for the next
	// reconnect to start again from the minimum backoff.
	watchHealthy = 10 * time.Second
	// eventBuffer is the capacity of the channel Events returns.
	eventBuffer = 64
)

// span is one operation of ours that makes a container die: from its start
// until it returned (to is zero while it runs). A later Start cuts it: a die
// after that is a new life's crash.
type span struct {
	from, to, cut time.Time
}

// covers reports whether a die at t is explained by this operation.
func (s span) covers(t time.Time) bool {
	if t.Before(s.from.Add(-ownStopSlack)) {
		return false
	}
	if !s.cut.IsZero() && !t.Before(s.cut) {
		return false
	}
	return s.to.IsZero() || !t.After(s.to.Add(ownStopSlack))
}

// ownStops remembers the stops, removals and pauses the orchestrator itself
// caused, so their die events are not reported as crashes.
type ownStops struct {
	mu    sync.Mutex
	now   func() time.Time
	spans map[string][]*span
}

func newOwnStops() *ownStops {
	return &ownStops{now: time.Now, spans: make(map[string][]*span)}
}

// begin records that an operation on the engine starts now; the returned
// function records its end.
func (o *ownStops) begin(engineID string) (done func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.gcLocked()
	s := &span{from: o.now()}
	o.spans[engineID] = append(o.spans[engineID], s)
	return func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		s.to = o.now()
	}
}

// started records that the engine is being started now: dies from here on
// are not explained by earlier operations.
func (o *ownStops) started(engineID string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	for _, s := range o.spans[engineID] {
		if s.cut.IsZero() {
			s.cut = now
		}
	}
}

// expected reports whether a die of the engine at t was caused by us.
func (o *ownStops) expected(engineID string, t time.Time) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.spans[engineID] {
		if s.covers(t) {
			return true
		}
	}
	return false
}

// gcLocked forgets spans that ended long ago.
func (o *ownStops) gcLocked() {
	horizon := o.now().Add(-ownStopKeep)
	for id, list := range o.spans {
		kept := list[:0]
		for _, s := range list {
			if s.to.IsZero() || s.to.After(horizon) {
				kept = append(kept, s)
			}
		}
		if len(kept) == 0 {
			delete(o.spans, id)
		} else {
			o.spans[id] = kept
		}
	}
}

// nextBackoff doubles d within [watchBackoffMin, watchBackoffMax].
func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, watchBackoffMin), watchBackoffMax)
}

// eventTime is when the daemon says the event happened.
func eventTime(m events.Message) time.Time {
	switch {
	case m.TimeNano != 0:
		return time.Unix(0, m.TimeNano)
	case m.Time != 0:
		return time.Unix(m.Time, 0)
	}
	return time.Now()
}

// cursor tracks the last event seen, so a reconnect replays the gap and
// skips what was already delivered.
type cursor struct {
	start time.Time       // when the watch began: the replay start until an event is seen
	at    time.Time       // time of the last event seen
	ids   map[string]bool // actors already seen at exactly at
}

// fresh reports whether m has not been seen yet, and records it.
func (c *cursor) fresh(m events.Message) bool {
	t := eventTime(m)
	switch {
	case c.at.IsZero():
		c.at, c.ids = t, make(map[string]bool)
	case t.Before(c.at):
		return false
	case t.Equal(c.at):
		if c.ids[m.Actor.ID] {
			return false
		}
	default:
		c.at, c.ids = t, make(map[string]bool)
	}
	c.ids[m.Actor.ID] = true
	return true
}

// since is the replay start for the next connection.
func (c *cursor) since() string {
	t := c.at
	if t.IsZero() {
		t = c.start
	}
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
}

// Events reports this deployment's containers that die without the
// orchestrator having asked (not a Stop, Remove, Destroy or Pause of ours).
// The stream reconnects with backoff when it breaks and replays what
// happened meanwhile. Events returns once the first subscription is
// attempted (at most CallTimeout), so a die after it returns is seen. The
// channel is closed when ctx ends.
func (b *Backend) Events(ctx context.Context) <-chan backend.Event {
	out := make(chan backend.Event, eventBuffer)
	ready := make(chan struct{})
	go b.watch(ctx, out, ready)
	wait := time.NewTimer(b.cfg.CallTimeout)
	defer wait.Stop()
	select {
	case <-ready:
	case <-ctx.Done():
	case <-wait.C:
	}
	return out
}

// watch runs the event subscription until ctx ends.
func (b *Backend) watch(ctx context.Context, out chan<- backend.Event, ready chan<- struct{}) {
	defer close(out)
	filters := b.labelFilter().
		Add("type", string(events.ContainerEventType)).
		Add("event", string(events.ActionDie))
	cur := cursor{start: time.Now()}
	first := true
	var delay time.Duration
	for {
		since := ""
		if !first {
			since = cur.since()
		}
		streamCtx, cancel := context.WithCancel(ctx)
		began := time.Now()
		res := b.cli.Events(streamCtx, client.EventsListOptions{Since: since, Filters: filters})
		if first {
			close(ready)
			first = false
		}
		err := b.pump(ctx, res, out, &cur)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > watchHealthy {
			delay = 0
		}
		delay = nextBackoff(delay)
		b.cfg.Logger.Warn("docker event stream broke; reconnecting",
			"deployment", b.cfg.Deployment, "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// pump forwards die events from one subscription until it ends.
func (b *Backend) pump(ctx context.Context, res client.EventsResult, out chan<- backend.Event, cur *cursor) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-res.Err:
			if err == nil {
				err = fmt.Errorf("event stream closed")
			}
			return wrap(err, "watch docker events")
		case m := <-res.Messages:
			if m.Type != events.ContainerEventType || m.Action != events.ActionDie || !cur.fresh(m) {
				continue
			}
			id := m.Actor.Attributes[backend.LabelEngineID]
			at := eventTime(m)
			if id == "" || b.own.expected(id, at) {
				continue
			}
			code, _ := strconv.Atoi(m.Actor.Attributes["exitCode"])
			select {
			case out <- backend.Event{EngineID: id, ExitCode: code, At: at.UTC()}:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}
