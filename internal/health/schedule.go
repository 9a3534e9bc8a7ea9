package health

import (
	"container/heap"
	"context"
	"errors"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/registry"
)

// target is one engine being probed. Targets belong to the probe loop's
// goroutine; probe goroutines only read id and url, which never change
// after the target is created.
type target struct {
	id        string
	productID string
	url       string
	// lease is this replica's lease on the engine's shard when the target
	// was last refreshed; it fences the results.
	lease registry.Lease
	// updatedAt is the row's updated_at when failures was last synced: it
	// changes with every lifecycle transition, which may reset the count.
	updatedAt time.Time
	// failures counts consecutive failed probes (registry value, then kept
	// up to date here between refreshes).
	failures int
	due      time.Time
	inFlight bool
	// gone: the engine left the probed set; the heap drops it lazily.
	gone bool
}

// dueHeap orders targets by due time.
type dueHeap []*target

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(*target)) }
func (h *dueHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return t
}

// probeResult is what a probe goroutine hands back to the loop.
type probeResult struct {
	t    *target
	err  error
	sent time.Time
	at   time.Time
}

// probeLoop is the probe loop's state, owned by one goroutine.
type probeLoop struct {
	c       *Checker
	targets map[string]*target
	due     dueHeap
	results chan probeResult
	active  int // probes running
	maxLag  time.Duration
}

func (c *Checker) newLoop() *probeLoop {
	return &probeLoop{
		c:       c,
		targets: map[string]*target{},
		// Every running probe sends exactly one result and at most
		// MaxInFlight run, so a send never blocks.
		results: make(chan probeResult, c.cfg.MaxInFlight),
	}
}

// phase is an engine's fixed offset within the interval, derived from its
// id so that engines spread evenly and keep their slot across refreshes and
// orchestrator restarts.
func phase(id string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return time.Duration(h.Sum64() % uint64(interval))
}

// firstDue is the first instant at or after now in the engine's phase.
func firstDue(id string, now time.Time, interval time.Duration) time.Time {
	off := phase(id, interval)
	cur := time.Duration(uint64(now.UnixNano()) % uint64(interval))
	wait := off - cur
	if wait < 0 {
		wait += interval
	}
	return now.Add(wait)
}

// apply replaces the probed set with engines (the registry's current view)
// of the shards this replica holds: new engines are scheduled in their
// phase, known ones keep their schedule and resync their failure count after
// a lifecycle transition, and engines no longer listed (or whose shard
// moved away) are dropped.
func (l *probeLoop) apply(engines []bap.Engine, now time.Time, schedule bool) {
	seen := make(map[string]bool, len(engines))
	rep := l.c.lm.Replica()
	for _, e := range engines {
		if !l.c.eligible(e.Status) || e.URL == "" {
			continue
		}
		lease, mine := rep.Lease(e.ID)
		if !mine {
			continue
		}
		seen[e.ID] = true
		t := l.targets[e.ID]
		if t != nil && t.url != e.URL {
			// The engine moved: the old target's in-flight probe (if any)
			// speaks for the old address and is ignored.
			t.gone = true
			t = nil
		}
		if t == nil {
			t = &target{id: e.ID, productID: e.ProductID, url: e.URL, updatedAt: e.UpdatedAt,
				failures: e.HealthFailures, lease: lease}
			l.targets[e.ID] = t
			if schedule {
				t.due = firstDue(e.ID, now, l.c.cfg.Interval)
				heap.Push(&l.due, t)
			}
			continue
		}
		t.lease = lease
		if !t.updatedAt.Equal(e.UpdatedAt) {
			t.updatedAt = e.UpdatedAt
			t.failures = e.HealthFailures
		}
	}
	for id, t := range l.targets {
		if !seen[id] {
			t.gone = true
			delete(l.targets, id)
		}
	}
}

// start launches a probe of t.
func (l *probeLoop) start(ctx context.Context, t *target) {
	t.inFlight = true
	l.active++
	c := l.c
	go func() {
		sent := c.now()
		err := lifecycle.Probe(ctx, c.client, t.url, c.cfg.Timeout)
		l.results <- probeResult{t: t, err: err, sent: sent, at: c.now()}
	}()
}

// handle records one probe result and starts marking the engine failed when
// it reached MaxFailures consecutive failures.
func (l *probeLoop) handle(ctx context.Context, r probeResult) {
	l.active--
	t := r.t
	t.inFlight = false
	if ctx.Err() != nil && r.err != nil {
		return // cancelled by shutdown: says nothing about the engine
	}
	c := l.c
	ok := r.err == nil
	c.ctr.probed.Add(1)
	if c.onResult != nil {
		c.onResult(t.id, ok)
	}
	if t.gone {
		return
	}
	c.w.add(registry.HealthResult{EngineID: t.id, OK: ok, At: bap.Timestamp(r.at), Sent: r.sent, Lease: t.lease})
	if ok {
		t.failures = 0
		return
	}
	c.ctr.failed.Add(1)
	c.obs.ProbeFailure(t.productID)
	t.failures++
	if t.failures >= c.cfg.MaxFailures {
		c.markFailed(ctx, t.id, failedReason(t.failures, r.err))
	}
}

func failedReason(n int, err error) string {
	s := "health check failed " + strconv.Itoa(n) + " times in a row: " + err.Error()
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// drain waits for the running probes (cancelled with ctx) to report.
func (l *probeLoop) drain(ctx context.Context) {
	for l.active > 0 {
		l.handle(ctx, <-l.results)
	}
}

// scheduleLoop is the production loop: every engine is probed once per
// Interval at its own phase; the engine set is refreshed in the background
// and a pass is reported every Interval.
func (c *Checker) scheduleLoop(ctx context.Context) {
	l := c.newLoop()
	refreshed := make(chan []bap.Engine)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.refresher(ctx, refreshed)
	}()
	defer func() { <-done }()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	pass := time.NewTicker(c.cfg.Interval)
	defer pass.Stop()
	passStart := time.Now()

	quantum := dispatchQuantum(c.cfg.Interval)
	var lastDispatch time.Time
	for {
		now := time.Now()
		if now.Sub(lastDispatch) >= quantum {
			l.dispatch(ctx, now)
			lastDispatch = now
		}
		if l.active < c.cfg.MaxInFlight && len(l.due) > 0 {
			// Probes due within one quantum are started together: one
			// wake-up per quantum instead of one per probe.
			wait := max(l.due[0].due.Sub(now), lastDispatch.Add(quantum).Sub(now), 0)
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			l.drain(ctx)
			return
		case r := <-l.results:
			l.handle(ctx, r)
		case engines := <-refreshed:
			l.apply(engines, time.Now(), true)
		case <-timer.C:
		case at := <-pass.C:
			st := c.takeStats()
			st.Engines = len(l.targets)
			st.MaxLag, l.maxLag = l.maxLag, 0
			st.Duration = at.Sub(passStart)
			passStart = at
			if c.cfg.OnPass != nil {
				c.cfg.OnPass(st)
			}
		}
	}
}

// dispatchQuantum is how close together probe starts are batched: a
// thousandth of the interval, at most 25 ms — far below anything a health
// schedule can notice, and it spares the process a wake-up per probe.
func dispatchQuantum(interval time.Duration) time.Duration {
	return min(interval/1000, 25*time.Millisecond)
}

// dispatch starts every due probe while slots are free. An engine whose
// previous probe still runs skips this turn; every started engine is due
// again one Interval after its due time, so a late start never shifts its
// phase.
func (l *probeLoop) dispatch(ctx context.Context, now time.Time) {
	interval := l.c.cfg.Interval
	for l.active < l.c.cfg.MaxInFlight && len(l.due) > 0 && !l.due[0].due.After(now) {
		t := l.due[0]
		if t.gone {
			heap.Pop(&l.due)
			continue
		}
		if _, mine := l.c.lm.Replica().Lease(t.id); !mine {
			// The shard moved away (or this replica may not act now): its
			// new holder probes it from now on.
			t.gone = true
			delete(l.targets, t.id)
			heap.Pop(&l.due)
			continue
		}
		if t.inFlight {
			l.c.ctr.skipped.Add(1)
		} else {
			l.maxLag = max(l.maxLag, now.Sub(t.due))
			l.start(ctx, t)
		}
		t.due = t.due.Add(interval)
		if !t.due.After(now) {
			// More than an interval behind: resume in phase rather than
			// firing the missed probes back to back.
			t.due = t.due.Add(now.Sub(t.due).Truncate(interval) + interval)
		}
		heap.Fix(&l.due, 0)
	}
}

// refreshShare bounds the time the refresher spends reading: it waits at
// least this many times as long as its last read took, so re-reading a
// large fleet costs a small, fixed share of a core whatever its size.
const refreshShare = 20

// refresher reads the probed set every Refresh (longer for a fleet whose
// read is slow, see refreshShare; at once when this replica's shards
// change), backing off while the registry cannot be
// read, and hands each read to the loop.
func (c *Checker) refresher(ctx context.Context, out chan<- []bap.Engine) {
	fails := 0
	for {
		began := time.Now()
		engines, err := c.store.EnginesByStatus(ctx, c.states...)
		wait := max(c.cfg.Refresh, refreshShare*time.Since(began))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			c.ctr.errors.Add(1)
			wait = loop.Backoff(c.cfg.Refresh, 30*time.Second, fails)
			fails++
			c.log.Warn("health: read engines to probe", "err", err, "retry_in", wait)
		default:
			if fails > 0 {
				c.log.Info("health: registry readable again")
			}
			fails = 0
			select {
			case out <- engines:
			case <-ctx.Done():
				return
			}
		}
		if !c.waitRefresh(ctx, wait) {
			return
		}
	}
}

// shardCheck is how often a waiting refresher looks whether this replica's
// shards changed.
const shardCheck = 100 * time.Millisecond

// waitRefresh waits d, or less when this replica's shards change, and
// reports false when ctx ended.
func (c *Checker) waitRefresh(ctx context.Context, d time.Duration) bool {
	rep := c.lm.Replica()
	gen := rep.Generation()
	t := time.NewTimer(d)
	defer t.Stop()
	tick := time.NewTicker(min(shardCheck, d))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-tick.C:
			if rep.Generation() != gen {
				return true
			}
		}
	}
}

// sweepLoop is the Tick mode: one full sweep at start and one per tick.
func (c *Checker) sweepLoop(ctx context.Context) {
	l := c.newLoop()
	for {
		c.sweep(ctx, l)
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Tick:
		}
	}
}

// sweep probes every engine of the set once, waits for the results and the
// transitions they cause, writes them, and reports the pass.
func (c *Checker) sweep(ctx context.Context, l *probeLoop) {
	began := time.Now()
	engines, err := c.store.EnginesByStatus(ctx, c.states...)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		c.ctr.errors.Add(1)
		c.log.Warn("health: read engines to probe; probing the last known set", "err", err)
	} else {
		l.apply(engines, began, false)
	}
	queue := make([]*target, 0, len(l.targets))
	for _, t := range l.targets {
		queue = append(queue, t)
	}
	for len(queue) > 0 || l.active > 0 {
		for len(queue) > 0 && l.active < c.cfg.MaxInFlight {
			l.start(ctx, queue[0])
			queue = queue[1:]
		}
		select {
		case <-ctx.Done():
			l.drain(ctx)
			return
		case r := <-l.results:
			l.handle(ctx, r)
		}
	}
	c.marks.Wait()
	if err := c.w.flush(ctx); err != nil && ctx.Err() == nil {
		c.ctr.errors.Add(1)
		c.log.Warn("health: record results", "err", err)
	}
	st := c.takeStats()
	st.Engines = len(l.targets)
	st.Duration = time.Since(began)
	if c.cfg.OnPass != nil {
		c.cfg.OnPass(st)
	}
}

func isNotFound(err error) bool { return errors.Is(err, registry.ErrNotFound) }
