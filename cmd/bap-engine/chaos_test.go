package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/registry"
)

// chaosDurationEnv makes the chaos soak run longer than its default (a Go
// duration, e.g. 2h).
const chaosDurationEnv = "BAP_CHAOS_DURATION"

// Chaos settings: 3 replicas, 16 clients over 50 users, a product limited to
// 40 engines of which 30 may run. Each client pauses a random time up to
// chaosMaxPause between calls: the kills land among operations all the
// same, and three race-built replicas driven flat out would take the cores
// the rest of the suite runs on beside the soak (with fast-starting engines
// the clients made some 55 calls a second unpaced, about 25 paced).
const (
	chaosReplicas   = 3
	chaosClients    = 16
	chaosUsers      = 50
	chaosMaxEngines = 40
	chaosMaxRunning = 30
	chaosMaxPause   = 600 * time.Millisecond
)

// chaosOps are what the clients do, at random.
var chaosOps = []string{"provision", "admit", "stop", "start", "rotate-key", "destroy"}

// chaosStats counts what a soak did.
type chaosStats struct {
	mu       sync.Mutex
	ops      map[string]map[string]int // op → outcome (error code, "ok", "unreachable") → count
	kills    int
	restarts int
	checks   atomic.Int64 // invariant checks that passed
}

func (s *chaosStats) record(op, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops[op] == nil {
		s.ops[op] = map[string]int{}
	}
	s.ops[op][outcome]++
}

func (s *chaosStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	total := 0
	ops := make([]string, 0, len(s.ops))
	for op := range s.ops {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		outcomes := make([]string, 0, len(s.ops[op]))
		for o, n := range s.ops[op] {
			outcomes = append(outcomes, fmt.Sprintf("%s=%d", o, n))
			total += n
		}
		sort.Strings(outcomes)
		fmt.Fprintf(&b, "  %-10s %s\n", op, strings.Join(outcomes, " "))
	}
	return fmt.Sprintf("%d operations, %d kills, %d restarts, %d invariant checks passed\n%s",
		total, s.kills, s.restarts, s.checks.Load(), b.String())
}

// expectedCodes are the documented answers an operation may get while
// replicas die and clients race each other.
var expectedCodes = map[string]bool{
	client.CodeEngineNotFound: true, client.CodeEngineAlreadyExists: true,
	client.CodeEngineAlreadyRunning: true, client.CodeEngineNotRunning: true,
	client.CodeEngineBusy: true, client.CodeQuotaExceeded: true,
	client.CodeBackendUnavailable: true, client.CodeBootTimeout: true,
}

// TestChaosSoak runs 3 replicas on one PostgreSQL database while 16 clients
// provision, admit, stop, start, rotate and destroy engines of 50 users at
// random and a random replica is killed (-9) and restarted every few
// seconds. Throughout and at the end it checks that the product's limits
// were never exceeded, that every settled row matches its instance, and
// that no backend saw two replicas operate one engine at once; at the end,
// also that nothing is orphaned and that every engine's audit trail is a
// valid path through the transition table. It runs about 3 minutes
// (BAP_CHAOS_DURATION makes it longer).
func TestChaosSoak(t *testing.T) {
	duration := 3 * time.Minute
	if testing.Short() {
		duration = 30 * time.Second
	}
	if v := os.Getenv(chaosDurationEnv); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, chaosDurationEnv)
		duration = d
	}
	c := newCluster(t, chaosReplicas, func(env map[string]string) {
		env["ORCH_LOG_LEVEL"] = "warn"
		env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "0.5"
		env["ORCH_RESTART_BACKOFF_BASE_S"] = "0.2"
		env["ORCH_BOOT_TIMEOUT_S"] = "30"
		engineEnv(env, "ENGINE_WARMUP_S", "0.3", "ENGINE_SHUTDOWN_DELAY_S", "0.3")
	})
	ctx := context.Background()
	_, err := adminClient(c.procs[0].url, c.env).UpdatePolicy(ctx, c.prod.ProductID,
		client.Policy{"max_engines": chaosMaxEngines, "max_running": chaosMaxRunning})
	require.NoError(t, err)
	stats := &chaosStats{ops: map[string]map[string]int{}}
	soakCtx, stopSoak := context.WithTimeout(ctx, duration)
	defer stopSoak()

	var wg sync.WaitGroup
	var failures sync.Map // unexpected outcomes
	for w := range chaosClients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for soakCtx.Err() == nil {
				user := fmt.Sprintf("user-%02d", rng.IntN(chaosUsers))
				op := chaosOps[rng.IntN(len(chaosOps))]
				p := c.live(rng)
				if p == nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				outcome := chaosCall(soakCtx, c, p, op, user)
				stats.record(op, outcome)
				if outcome == "INTERNAL" || strings.HasPrefix(outcome, "unexpected") {
					failures.Store(fmt.Sprintf("%s %s through %s", op, user, p.name), outcome)
				}
				time.Sleep(time.Duration(rng.Int64N(int64(chaosMaxPause))))
			}
		})
	}
	wg.Go(func() { c.killer(soakCtx, stats) })
	wg.Go(func() {
		for soakCtx.Err() == nil {
			c.checkLimits(stats)
			c.checkSettledRows(stats)
			time.Sleep(time.Second)
		}
	})
	wg.Wait()

	// Every replica back, then everything must settle and hold.
	c.reviveAll(stats)
	c.quiesce(2 * takeoverBound)
	c.checkLimits(stats)
	c.checkFinal(stats)
	c.checkAuditTrails(stats)
	failures.Range(func(k, v any) bool {
		t.Errorf("unexpected outcome %v: %v", v, k)
		return true
	})
	t.Logf("chaos soak over %s:\n%s", duration, stats)
}

// chaosCall makes one client call and names its outcome.
func chaosCall(ctx context.Context, c *cluster, p *replicaProc, op, user string) string {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	pc := c.platform(p)
	var err error
	switch op {
	case "provision":
		_, err = pc.Provision(ctx, client.ProvisionRequest{UserID: user})
	case "admit":
		var r client.AdmitResult
		r, err = pc.Admit(ctx, user, client.AdmitOptions{AutoProvision: true, AutoWake: true})
		if err == nil && !r.Admitted {
			return "denied:" + r.Reason
		}
	case "stop":
		_, err = pc.Stop(ctx, user)
	case "start":
		_, err = pc.Start(ctx, user)
	case "rotate-key":
		_, err = pc.RotateKey(ctx, user)
	case "destroy":
		_, err = pc.Destroy(ctx, user)
	}
	if err == nil {
		return "ok"
	}
	var ce *client.Error
	if errors.As(err, &ce) {
		if expectedCodes[ce.Code] || ce.Code == client.CodeInternal {
			return ce.Code
		}
		return "unexpected:" + ce.Code
	}
	return "unreachable" // the replica died under the call, or the soak ended
}

// live picks a replica process that is running.
func (c *cluster) live(rng *rand.Rand) *replicaProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	var up []*replicaProc
	for _, p := range c.procs {
		select {
		case <-p.done:
		default:
			up = append(up, p)
		}
	}
	if len(up) == 0 {
		return nil
	}
	return up[rng.IntN(len(up))]
}

// killer kills a random replica every few seconds and starts a new one in
// its place a moment later; half the time on a new host, so the others
// learn of the death only from its heartbeat.
func (c *cluster) killer(ctx context.Context, stats *chaosStats) {
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	generation := 0
	for {
		if !loop.Sleep(ctx, time.Duration(3000+rng.IntN(3000))*time.Millisecond) {
			return
		}
		p := c.live(rng)
		if p == nil {
			continue
		}
		c.kill(p)
		stats.mu.Lock()
		stats.kills++
		stats.mu.Unlock()
		if !loop.Sleep(ctx, time.Duration(500+rng.IntN(1500))*time.Millisecond) {
			return
		}
		generation++
		name := p.name
		if rng.IntN(2) == 0 {
			name = fmt.Sprintf("%s-g%d", strings.SplitN(p.name, "-", 2)[0], generation)
		}
		c.start(name)
		c.forget(p)
		stats.mu.Lock()
		stats.restarts++
		stats.mu.Unlock()
	}
}

// forget drops a dead replica process from the cluster's list.
func (c *cluster) forget(p *replicaProc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = slices.DeleteFunc(c.procs, func(q *replicaProc) bool { return q == p })
	c.dead = append(c.dead, p)
}

// reviveAll makes sure chaosReplicas replicas run.
func (c *cluster) reviveAll(stats *chaosStats) {
	c.mu.Lock()
	var up int
	for _, p := range c.procs {
		select {
		case <-p.done:
		default:
			up++
		}
	}
	c.mu.Unlock()
	for i := up; i < chaosReplicas; i++ {
		c.start(fmt.Sprintf("final%d", i))
		stats.mu.Lock()
		stats.restarts++
		stats.mu.Unlock()
	}
}

// quiesce waits until no engine has an operation claimed or a transitional
// state, for up to within.
func (c *cluster) quiesce(within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		engines, err := c.store.EnginesByStatus(context.Background(), bap.States...)
		require.NoError(c.t, err)
		var busy []string
		for _, e := range engines {
			if e.Claim.Held() || e.Status == bap.StateProvisioning || e.Status == bap.StateDestroying {
				busy = append(busy, fmt.Sprintf("%s %s %s by %s since %v", e.UserID, e.Status, e.Claim.Op,
					e.Claim.Owner, e.Claim.StartedAt))
			}
		}
		if len(busy) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("engines still busy %s after the soak: %v", within, busy)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkLimits: the product never has more engines than max_engines, nor
// more running ones than max_running.
func (c *cluster) checkLimits(stats *chaosStats) {
	c.t.Helper()
	counts, err := c.store.CountByStatus(context.Background(), c.prod.ProductID)
	if errors.Is(err, registry.ErrUnavailable) {
		return
	}
	require.NoError(c.t, err)
	total := 0
	for _, n := range counts {
		total += n
	}
	require.LessOrEqual(c.t, total, chaosMaxEngines, "max_engines exceeded: %v", counts)
	running := counts[bap.StateRunning] + counts[bap.StateSleeping] + counts[bap.StateProvisioning]
	require.LessOrEqual(c.t, running, chaosMaxRunning, "max_running exceeded: %v", counts)
	stats.checks.Add(1)
}

// settledAfter is how long a row must have stayed unchanged, with no
// operation claimed, before the soak holds it to its instance: long enough
// for the health loop to notice an engine that a refused backend call left
// down (three failed probes, then the transition), as it would in
// production.
const settledAfter = 5 * time.Second

// checkSettledRows checks, while the soak runs, the rows no operation holds
// and that have not changed for settledAfter: a running one answers, a
// stopped one has no process. A row that changed meanwhile is left for the
// next pass.
func (c *cluster) checkSettledRows(stats *chaosStats) {
	c.t.Helper()
	engines, err := c.store.EnginesByStatus(context.Background(), bap.States...)
	if err != nil {
		return
	}
	pids := map[string]bool{}
	for _, pid := range enginePids(c.env["ORCH_DATA_ROOT"]) {
		pids[engineOfPid(pid)] = true
	}
	for _, e := range engines {
		if e.Claim.Held() || time.Since(e.UpdatedAt) < settledAfter {
			continue
		}
		ok := c.rowMatches(e, pids)
		if !ok {
			// Read again: an operation that began since is not a violation.
			time.Sleep(2 * time.Second)
			again, err := c.store.GetEngine(context.Background(), e.ID)
			if err != nil || again.Claim.Held() || !again.UpdatedAt.Equal(e.UpdatedAt) {
				continue
			}
			fresh := map[string]bool{}
			for _, pid := range enginePids(c.env["ORCH_DATA_ROOT"]) {
				fresh[engineOfPid(pid)] = true
			}
			require.True(c.t, c.rowMatches(again, fresh), "engine %s (%s) is %s but its instance disagrees",
				e.UserID, e.ID, e.Status)
		}
		stats.checks.Add(1)
	}
}

// rowMatches: running (or sleeping: mark mode) answers healthy; stopped
// and failed have no process (a failed one may still have one between its
// death being noticed and the restart: failed rows pass either way).
func (c *cluster) rowMatches(e bap.Engine, pids map[string]bool) bool {
	switch e.Status {
	case bap.StateRunning, bap.StateSleeping:
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(e.URL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	case bap.StateStopped:
		return !pids[e.ID]
	}
	return true
}

// checkFinal: once settled, every row matches its instance exactly (within
// the time the health loop needs to notice a change), and nothing exists
// without a row (process, data, port).
func (c *cluster) checkFinal(stats *chaosStats) {
	c.t.Helper()
	// Restarts of engines that failed while replicas died may still run.
	require.Eventually(c.t, func() bool {
		engines, err := c.store.EnginesByStatus(context.Background(), bap.StateFailed)
		require.NoError(c.t, err)
		for _, e := range engines {
			if e.NextRestartAt != nil {
				return false
			}
		}
		return true
	}, time.Minute, 200*time.Millisecond, "failed engines still being restarted")
	c.quiesce(2 * takeoverBound)
	// A row that changed just before the soak ended (an engine the health
	// loop is restarting, one whose death is being recorded) may disagree
	// with its instance for as long as the health loop takes to notice, as
	// during the soak (settledAfter); a disagreement that outlasts finalBound
	// is a violation.
	const finalBound = 6 * settledAfter
	deadline := time.Now().Add(finalBound)
	for {
		engines, err := c.store.EnginesByStatus(context.Background(), bap.States...)
		require.NoError(c.t, err)
		pids := map[string]bool{}
		for _, pid := range enginePids(c.env["ORCH_DATA_ROOT"]) {
			pids[engineOfPid(pid)] = true
		}
		var wrong []string
		for _, e := range engines {
			if !c.rowMatches(e, pids) || e.Status == bap.StateFailed && pids[e.ID] {
				wrong = append(wrong, fmt.Sprintf("%s (%s) is %s since %s, process running: %v",
					e.UserID, e.ID, e.Status, e.UpdatedAt.Format(time.RFC3339Nano), pids[e.ID]))
			}
		}
		if len(wrong) == 0 {
			stats.checks.Add(int64(len(engines)))
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d engine(s) still disagree with their instance %s after settling: %v", len(wrong), finalBound, wrong)
		}
		time.Sleep(500 * time.Millisecond)
	}
	c.requireClean()
	stats.checks.Add(1)
}

// checkAuditTrails replays every engine's audit trail through the
// transition table: each transition must be allowed from the state the
// previous ones left, and the "from" an entry names must be that state.
func (c *cluster) checkAuditTrails(stats *chaosStats) {
	c.t.Helper()
	entries, _, err := c.store.ListAudit(context.Background(), registry.AuditFilter{ProductID: c.prod.ProductID})
	require.NoError(c.t, err)
	byEngine := map[string][]audit.Entry{}
	for _, e := range entries {
		if e.EngineID != "" {
			byEngine[e.EngineID] = append(byEngine[e.EngineID], e)
		}
	}
	for id, trail := range byEngine {
		sort.Slice(trail, func(i, j int) bool { return trail[i].ID < trail[j].ID })
		state := bap.StateProvisioning
		gone := false
		var path []string
		for _, e := range trail {
			path = append(path, string(e.Action))
			if e.Action == audit.AdmitDenied || e.Action == audit.OrphanRemoved {
				continue
			}
			require.False(c.t, gone, "engine %s: %s after its destroy: %v", id, e.Action, path)
			next, ok := auditTarget(e.Action, state)
			require.True(c.t, ok, "engine %s: unknown action %s", id, e.Action)
			if from, ok := e.Metadata["from"].(string); ok && slices.Contains([]audit.Action{audit.Start, audit.Stop, audit.Wake}, e.Action) {
				require.Equal(c.t, string(state), from, "engine %s: %s says it came from %s, the trail says %s: %v",
					id, e.Action, from, state, path)
			}
			if next == "" {
				gone = true
				continue
			}
			if next != state {
				require.True(c.t, bap.CanTransition(state, next), "engine %s: %s → %s (%s) is not a transition: %v",
					id, state, next, e.Action, path)
			}
			state = next
		}
		stats.checks.Add(1)
	}
}

// auditTarget is the state an audited action leaves an engine in ("" for
// destroyed), given the state before it.
func auditTarget(a audit.Action, cur bap.State) (bap.State, bool) {
	switch a {
	case audit.Provision, audit.Start, audit.Wake, audit.AutoRestartSuccess, audit.RotateKey, audit.RotateKeyFailed:
		return bap.StateRunning, true
	case audit.ProvisionFailed, audit.StartFailed, audit.HealthFailed, audit.EngineDied,
		audit.ReconcileFailed, audit.AutoRestartFailed:
		return bap.StateFailed, true
	case audit.Stop:
		return bap.StateStopped, true
	case audit.Sleep:
		return bap.StateSleeping, true
	case audit.AutoRestartStart, audit.AutoRestartGaveUp:
		return cur, true
	case audit.Destroy:
		return "", true
	}
	return cur, false
}
