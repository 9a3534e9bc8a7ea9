package health

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/requestid"
)

// errRestartFailed is what the Observer sees for an attempt that did not
// bring the engine back.
var errRestartFailed = errors.New("restart attempt failed")

// minRestartWait keeps the restart scheduler from spinning on a due time
// that is a hair away.
const minRestartWait = 5 * time.Millisecond

// restartLoop starts the restart attempts of failed engines as they fall
// due, until ctx ends. It looks at least every RestartPoll, at the earliest
// due time it saw, and whenever kicked; attempts run in the background,
// never blocking probes or each other beyond RestartConcurrency.
func (c *Checker) restartLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-c.kick:
		}
		wait, err := c.startDueRestarts(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.ctr.errors.Add(1)
			wait = loop.Backoff(c.cfg.RestartPoll, 30*time.Second, fails)
			fails++
			c.log.WarnContext(ctx, "health: read failed engines", "err", err, "retry_in", wait)
		} else {
			fails = 0
		}
		timer.Reset(wait)
	}
}

// startDueRestarts starts an attempt for every failed engine whose
// next_restart_at has passed (oldest first, while slots are free) and
// returns how long to wait before looking again.
func (c *Checker) startDueRestarts(ctx context.Context) (time.Duration, error) {
	read := time.Now()
	failed, err := c.store.EnginesByStatus(ctx, bap.StateFailed)
	if err != nil {
		return 0, err
	}
	c.forgetFinished(read)
	now := c.now()
	wait := c.cfg.RestartPoll
	var due []bap.Engine
	rep := c.lm.Replica()
	for _, e := range failed {
		if e.NextRestartAt == nil {
			continue
		}
		if _, mine := rep.Lease(e.ID); !mine {
			continue // another replica's shard
		}
		at := *e.NextRestartAt
		c.mu.Lock()
		if h, ok := c.holdOff[e.ID]; ok {
			if h.After(at) {
				at = h
			}
			if !h.After(now) {
				delete(c.holdOff, e.ID)
			}
		}
		c.mu.Unlock()
		if d := at.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		due = append(due, e)
	}
	c.forgetHoldOffs(failed)
	slices.SortFunc(due, func(a, b bap.Engine) int { return a.NextRestartAt.Compare(*b.NextRestartAt) })
	for _, e := range due {
		if !c.startRestart(ctx, e, read) {
			break
		}
	}
	// Like the probe set, a long list of failed engines (many that gave
	// up) is re-read less often.
	return max(wait, minRestartWait, refreshShare*time.Since(read)), nil
}

// startRestart launches one attempt for e, read from the registry at read,
// unless one runs already or finished after that read (the row is stale);
// it reports false when every restart slot is taken.
func (c *Checker) startRestart(ctx context.Context, e bap.Engine, read time.Time) bool {
	c.mu.Lock()
	if c.restarting[e.ID] || c.finished[e.ID].After(read) {
		c.mu.Unlock()
		return true
	}
	select {
	case c.restartSem <- struct{}{}:
	default:
		c.mu.Unlock()
		return false
	}
	c.restarting[e.ID] = true
	c.mu.Unlock()
	c.restarts.Go(func() {
		defer func() {
			c.mu.Lock()
			delete(c.restarting, e.ID)
			c.finished[e.ID] = time.Now()
			c.mu.Unlock()
			<-c.restartSem
			c.Kick() // a freed slot or a new due time: look again
		}()
		c.restart(ctx, e)
	})
	return true
}

// restart runs one attempt and accounts for its outcome.
func (c *Checker) restart(ctx context.Context, e bap.Engine) {
	ctx = requestid.With(ctx, requestid.New("restart-"))
	out, err := c.lm.AutoRestart(ctx, e.ID)
	if ctx.Err() != nil {
		return // shutdown: the attempt finishes detached and is recorded by lifecycle
	}
	log := c.log.With("engine_id", e.ID, "product_id", e.ProductID, "outcome", string(out))
	switch out {
	case lifecycle.RestartSucceeded:
		c.ctr.restarts.Add(1)
		c.ctr.restarted.Add(1)
		c.obs.Restart(e.ProductID, nil)
		log.InfoContext(ctx, "engine restarted")
	case lifecycle.RestartFailed:
		c.ctr.restarts.Add(1)
		c.obs.Restart(e.ProductID, errRestartFailed)
		log.WarnContext(ctx, "engine restart attempt failed")
	case lifecycle.RestartGaveUp:
		c.ctr.restarts.Add(1)
		c.ctr.gaveUp.Add(1)
		c.obs.Restart(e.ProductID, errRestartFailed)
		if g, ok := c.obs.(GiveUpObserver); ok {
			g.RestartsExhausted(e.ProductID)
		}
		log.ErrorContext(ctx, "engine restart gave up: it stays failed until started", "attempts", c.lm.Config().Restart.MaxAttempts)
	case lifecycle.RestartDeferred:
		log.WarnContext(ctx, "engine restart deferred: backend unavailable")
	}
	if err != nil {
		c.ctr.errors.Add(1)
		log.WarnContext(ctx, "engine restart", "err", err)
	}
	if out == lifecycle.RestartDeferred || err != nil {
		// The attempt was not counted and its due time did not move: hold
		// the engine back so an unreachable backend or registry is not
		// hammered.
		c.mu.Lock()
		c.holdOff[e.ID] = c.now().Add(max(c.cfg.RestartPoll, c.lm.Config().Restart.BackoffBase))
		c.mu.Unlock()
	}
	if c.cfg.OnRestart != nil && out != lifecycle.RestartSkipped {
		c.cfg.OnRestart(RestartResult{EngineID: e.ID, ProductID: e.ProductID, Outcome: out, Err: err})
	}
}

// forgetHoldOffs drops the hold-offs of engines that are no longer failed.
func (c *Checker) forgetHoldOffs(failed []bap.Engine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.holdOff) == 0 {
		return
	}
	still := make(map[string]bool, len(failed))
	for _, e := range failed {
		still[e.ID] = true
	}
	for id := range c.holdOff {
		if !still[id] {
			delete(c.holdOff, id)
		}
	}
}

// forgetFinished drops the finish times no scan started at or after read
// can be older than.
func (c *Checker) forgetFinished(read time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, at := range c.finished {
		if at.Before(read) {
			delete(c.finished, id)
		}
	}
}
