package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/replica"
)

// replicaTTL is the replicas' TTL in these tests (ORCH_REPLICA_TTL_S):
// short, so that a death is noticed quickly, yet long enough that a loaded
// test machine does not miss heartbeats. A takeover must be done within
// TTL + 5 s.
const replicaTTL = 5 * time.Second

// takeoverBound is how long after a replica's death its unfinished
// operations may stay unfinished.
const takeoverBound = replicaTTL + 5*time.Second

// replicaProc is one `serve` process of a cluster.
type replicaProc struct {
	name string
	cmd  *exec.Cmd
	url  string
	log  string // its stderr
	done chan struct{}
}

// cluster is several orchestrator processes on one PostgreSQL database and
// one engine data root, each with its own host name, so that they know of
// each other's deaths only through heartbeats.
type cluster struct {
	t     *testing.T
	env   map[string]string
	store registry.Store // the same database, for assertions
	mu    sync.Mutex
	procs []*replicaProc
	dead  []*replicaProc // killed and replaced (their logs still count)
	logs  string
	prod  client.Product
}

func newCluster(t *testing.T, n int, mod func(env map[string]string)) *cluster {
	t.Helper()
	dbURL := pgtest.URL(t)
	env := baseEnv(t, dbURL)
	env["ORCH_REPLICA_TTL_S"] = strconv.FormatFloat(replicaTTL.Seconds(), 'f', -1, 64)
	env["ORCH_LOG_LEVEL"] = "info"
	if mod != nil {
		mod(env)
	}
	st, err := postgres.Open(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	c := &cluster{t: t, env: env, store: st, logs: t.TempDir()}
	killEnginesUnder(t, env["ORCH_DATA_ROOT"])
	for i := range n {
		c.start(fmt.Sprintf("r%d", i))
	}
	c.prod, err = adminClient(c.procs[0].url, env).RegisterProduct(context.Background(),
		client.ProductRequest{Slug: "acme", DisplayName: "Acme"})
	require.NoError(t, err)
	t.Cleanup(c.checkNoOverlap)
	t.Cleanup(c.dumpLogsOnFailure)
	return c
}

// dumpLogsOnFailure prints the warnings and errors of every replica when the
// test failed.
func (c *cluster) dumpLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range append(slices.Clone(c.procs), c.dead...) {
		b, _ := os.ReadFile(p.log)
		var lines []string
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) ||
				strings.Contains(l, "rebalanced") || strings.Contains(l, "registered") {
				lines = append(lines, l)
			}
		}
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		c.t.Logf("replica %s (pid %d) warnings:\n%s", p.name, p.cmd.Process.Pid, strings.Join(lines, "\n"))
	}
}

// start runs a new replica process named name (its host name too).
func (c *cluster) start(name string) *replicaProc {
	t := c.t
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(self, "serve")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "HOSTNAME=" + name}
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	logPath := filepath.Join(c.logs, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	cmd.Stderr = logf
	require.NoError(t, cmd.Start())
	_ = logf.Close()
	p := &replicaProc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.url = <-listeningURL(stdout):
	case <-p.done:
		t.Fatalf("replica %s exited before listening:\n%s", name, tail(logPath))
	case <-time.After(60 * time.Second):
		t.Fatalf("replica %s did not start", name)
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// kill SIGKILLs a replica.
func (c *cluster) kill(p *replicaProc) {
	c.t.Helper()
	require.NoError(c.t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done
}

// platform is the product's client through replica p.
func (c *cluster) platform(p *replicaProc) *client.Client {
	return client.New(p.url, client.WithPlatformKey(c.prod.PlatformAPIKey))
}

// replicaID is the registered id of replica process p.
func (c *cluster) replicaID(p *replicaProc) string {
	c.t.Helper()
	list, err := c.store.Replicas(context.Background(), replicaTTL)
	require.NoError(c.t, err)
	for _, r := range list {
		if r.Pid == p.cmd.Process.Pid && r.Host == p.name {
			return r.ID
		}
	}
	c.t.Fatalf("replica %s (pid %d) is not registered", p.name, p.cmd.Process.Pid)
	return ""
}

// holder is the replica process that holds the engine's shard now.
func (c *cluster) holder(engineID string) *replicaProc {
	c.t.Helper()
	leases, err := c.store.Leases(context.Background())
	require.NoError(c.t, err)
	shard := replica.ShardOf(engineID)
	for _, l := range leases {
		if l.Shard != shard {
			continue
		}
		c.mu.Lock()
		procs := slices.Clone(c.procs)
		c.mu.Unlock()
		for _, p := range procs {
			select {
			case <-p.done:
				continue
			default:
			}
			if c.replicaID(p) == l.ReplicaID {
				return p
			}
		}
	}
	return nil
}

// row reads the engine's row (claim included) from the database.
func (c *cluster) row(engineID string) (bap.Engine, bool) {
	c.t.Helper()
	e, err := c.store.GetEngine(context.Background(), engineID)
	if err != nil {
		require.ErrorIs(c.t, err, registry.ErrNotFound)
		return bap.Engine{}, false
	}
	return e, true
}

// settled waits until the engine has no operation claimed (or no row) and
// returns the row, failing after within.
func (c *cluster) settled(engineID string, within time.Duration, what string) (bap.Engine, bool) {
	c.t.Helper()
	var (
		e      bap.Engine
		exists bool
	)
	require.Eventually(c.t, func() bool {
		e, exists = c.row(engineID)
		return !exists || (!e.Claim.Held() && e.Status != bap.StateProvisioning && e.Status != bap.StateDestroying)
	}, within, 20*time.Millisecond, "%s: engine still %s with claim %+v", what, e.Status, e.Claim)
	return e, exists
}

// actions is the engine's audit trail, oldest first.
func (c *cluster) actions(engineID string) []audit.Action {
	c.t.Helper()
	entries, _, err := c.store.ListAudit(context.Background(), registry.AuditFilter{EngineID: engineID})
	require.NoError(c.t, err)
	out := make([]audit.Action, 0, len(entries))
	for i := len(entries) - 1; i >= 0; i-- {
		out = append(out, entries[i].Action)
	}
	return out
}

// checkNoOverlap fails the test if any replica's backend met another
// replica's operation on the same engine.
func (c *cluster) checkNoOverlap() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range append(slices.Clone(c.procs), c.dead...) {
		b, err := os.ReadFile(p.log)
		require.NoError(c.t, err)
		if n := strings.Count(string(b), overlapMessage); n > 0 {
			c.t.Errorf("replica %s saw %d overlapping backend operations:\n%s", p.name, n, grepLines(string(b), overlapMessage))
		}
	}
}

// requireClean checks what a finished engine leaves behind: a running one
// answers and has its data; a failed or destroyed one has no process; no
// data dir exists without a row, and every allocated port has an engine.
func (c *cluster) requireClean() {
	c.t.Helper()
	ctx := context.Background()
	engines, err := c.store.EnginesByStatus(ctx, bap.States...)
	require.NoError(c.t, err)
	rows := map[string]bap.Engine{}
	for _, e := range engines {
		rows[e.ID] = e
	}
	require.Eventually(c.t, func() bool {
		for _, d := range engineDirs(c.t, c.env) {
			if _, ok := rows[d]; !ok {
				return false
			}
		}
		return true
	}, 10*time.Second, 50*time.Millisecond, "no engine data without a row")
	for _, pid := range enginePids(c.env["ORCH_DATA_ROOT"]) {
		id := engineOfPid(pid)
		e, ok := rows[id]
		require.True(c.t, ok, "engine process %d (%s) has no row", pid, id)
		require.NotEqual(c.t, bap.StateFailed, e.Status, "failed engine %s still has a process", id)
	}
	ports, err := c.store.ListPortAllocations(ctx)
	require.NoError(c.t, err)
	for _, p := range ports {
		_, ok := rows[p.EngineID]
		require.True(c.t, ok, "port %d allocated to %s, which has no row", p.Port, p.EngineID)
	}
}

// TestReplicaKilledMidOperation kills (-9) the replica that runs an
// operation in its middle; another replica finishes or fails it within the
// TTL + 5 s, leaving no orphan process, data or port.
func TestReplicaKilledMidOperation(t *testing.T) {
	slowEngines := func(env map[string]string) {
		engineEnv(env, "ENGINE_WARMUP_S", "1.5", "ENGINE_SHUTDOWN_DELAY_S", "1.5")
		env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "30"
	}
	ctx := context.Background()

	t.Run("provision", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 2, slowEngines)
		a, b := c.procs[0], c.procs[1]
		go func() { _, _ = c.platform(a).Provision(ctx, client.ProvisionRequest{UserID: "alice"}) }()
		var e bap.Engine
		require.Eventually(t, func() bool {
			got, err := c.store.GetEngineByUser(ctx, c.prod.ProductID, "alice")
			e = got
			return err == nil && len(engineDirs(t, c.env)) == 1
		}, 10*time.Second, 5*time.Millisecond)
		time.Sleep(300 * time.Millisecond) // created and warming up
		c.kill(a)
		died := time.Now()
		got, exists := c.settled(e.ID, takeoverBound, "provision")
		t.Logf("provision settled %s after the kill: %s", time.Since(died).Round(time.Millisecond), got.Status)
		require.True(t, exists)
		require.Contains(t, []bap.State{bap.StateRunning, bap.StateFailed}, got.Status)
		if got.Status == bap.StateRunning {
			adm, err := c.platform(b).Admit(ctx, "alice", client.AdmitOptions{})
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey))
		}
		c.requireClean()
	})

	t.Run("destroy", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 2, slowEngines)
		a, b := c.procs[0], c.procs[1]
		pr, err := c.platform(a).Provision(ctx, client.ProvisionRequest{UserID: "bob"})
		require.NoError(t, err)
		go func() { _, _ = c.platform(a).Destroy(ctx, "bob") }()
		require.Eventually(t, func() bool {
			e, ok := c.row(pr.EngineID)
			return ok && e.Status == bap.StateDestroying
		}, 10*time.Second, 5*time.Millisecond)
		c.kill(a)
		died := time.Now()
		_, exists := c.settled(pr.EngineID, takeoverBound, "destroy")
		t.Logf("destroy finished %s after the kill", time.Since(died).Round(time.Millisecond))
		require.False(t, exists)
		_, err = c.platform(b).Get(ctx, "bob")
		require.Equal(t, client.CodeEngineNotFound, client.ErrorCode(err))
		require.Zero(t, engineAnswers(t, pr.URL, pr.APIKey))
		c.requireClean()
	})

	t.Run("rotate-key", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 2, slowEngines)
		a, b := c.procs[0], c.procs[1]
		pr, err := c.platform(a).Provision(ctx, client.ProvisionRequest{UserID: "carol"})
		require.NoError(t, err)
		go func() { _, _ = c.platform(a).RotateKey(ctx, "carol") }()
		require.Eventually(t, func() bool {
			e, ok := c.row(pr.EngineID)
			return ok && e.Claim.Op == bap.OpRotateKey
		}, 10*time.Second, 5*time.Millisecond)
		time.Sleep(500 * time.Millisecond) // the old instance is draining
		c.kill(a)
		died := time.Now()
		got, exists := c.settled(pr.EngineID, takeoverBound+3*time.Second, "rotate-key")
		t.Logf("rotate-key repaired %s after the kill: %s", time.Since(died).Round(time.Millisecond), got.Status)
		require.True(t, exists)
		require.Equal(t, bap.StateRunning, got.Status)
		// The key the database holds is the one the engine accepts.
		adm, err := c.platform(b).Admit(ctx, "carol", client.AdmitOptions{})
		require.NoError(t, err)
		require.True(t, adm.Admitted)
		require.Equal(t, http.StatusOK, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey))
		require.Equal(t, pr.APIKey, adm.Engine.APIKey, "the rotation died with its replica: the old key stands")
		require.Contains(t, c.actions(pr.EngineID), audit.RotateKeyFailed)
		c.requireClean()
	})

	t.Run("auto-restart", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 2, func(env map[string]string) {
			slowEngines(env)
			env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "0.3"
			env["ORCH_RESTART_BACKOFF_BASE_S"] = "0.1"
			env["ENGINE_WARMUP_S"] = "2"
		})
		pr, err := c.platform(c.procs[0]).Provision(ctx, client.ProvisionRequest{UserID: "dave"})
		require.NoError(t, err)
		// The engine dies; the replica holding its shard restarts it.
		require.NoError(t, syscall.Kill(mustAtoi(t, pidOf(t, c.env, pr.EngineID)), syscall.SIGKILL))
		require.Eventually(t, func() bool {
			e, ok := c.row(pr.EngineID)
			return ok && e.Claim.Op == bap.OpAutoRestart
		}, 10*time.Second, 5*time.Millisecond)
		e, _ := c.row(pr.EngineID)
		var runner *replicaProc
		for _, p := range c.procs {
			if c.replicaID(p) == e.Claim.Owner {
				runner = p
			}
		}
		require.NotNil(t, runner)
		time.Sleep(300 * time.Millisecond) // restarting: the new process warms up
		c.kill(runner)
		died := time.Now()
		require.Eventually(t, func() bool {
			e, ok := c.row(pr.EngineID)
			return ok && e.Status == bap.StateRunning && !e.Claim.Held()
		}, takeoverBound+3*time.Second, 20*time.Millisecond, "the surviving replica restarts the engine")
		t.Logf("auto-restart finished %s after the kill", time.Since(died).Round(time.Millisecond))
		var survivor *replicaProc
		for _, p := range c.procs {
			if p != runner {
				survivor = p
			}
		}
		adm, err := c.platform(survivor).Admit(ctx, "dave", client.AdmitOptions{})
		require.NoError(t, err)
		require.True(t, adm.Admitted)
		require.Equal(t, http.StatusOK, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey))
		c.requireClean()
	})
}

// TestConcurrentRotateKeyAcrossReplicas rotates one engine's key through two
// replicas at once, again and again: the key the database holds is the one
// the engine accepts, and every other key handed out is rejected.
func TestConcurrentRotateKeyAcrossReplicas(t *testing.T) {
	c := newCluster(t, 2, func(env map[string]string) { env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "30" })
	ctx := context.Background()
	a, b := c.platform(c.procs[0]), c.platform(c.procs[1])
	pr, err := a.Provision(ctx, client.ProvisionRequest{UserID: "erin"})
	require.NoError(t, err)
	seen := map[string]bool{pr.APIKey: true}
	for round := range 5 {
		var wg sync.WaitGroup
		keys := make([]string, 2)
		for i, pc := range []*client.Client{a, b} {
			wg.Go(func() {
				r, err := pc.RotateKey(ctx, "erin")
				if err == nil {
					keys[i] = r.APIKey
				} else {
					require.Equal(t, client.CodeEngineBusy, client.ErrorCode(err), "round %d: %v", round, err)
				}
			})
		}
		wg.Wait()
		held, err := b.Get(ctx, "erin")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, engineAnswers(t, held.URL, held.APIKey), "round %d: the database's key works", round)
		for _, k := range keys {
			if k != "" {
				seen[k] = true
			}
		}
		for k := range seen {
			if k != held.APIKey {
				require.Equal(t, http.StatusUnauthorized, engineAnswers(t, held.URL, k), "round %d: an old key is dead", round)
			}
		}
	}
	t.Logf("%d distinct keys handed out over 5 rounds", len(seen))
}

// TestStopOnOneReplicaWhileAnotherProbes stops, through replica B, an engine
// that replica A probes every 0.3 s: it stays stopped, and nobody fails or
// restarts it.
func TestStopOnOneReplicaWhileAnotherProbes(t *testing.T) {
	c := newCluster(t, 2, func(env map[string]string) {
		env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "0.3"
		engineEnv(env, "ENGINE_SHUTDOWN_DELAY_S", "1")
	})
	ctx := context.Background()
	// Engines until one's shard is held by r0; r1 stops it.
	var engine client.Provisioned
	for i := 0; ; i++ {
		require.Less(t, i, 40, "no engine landed on r0's shards")
		pr, err := c.platform(c.procs[1]).Provision(ctx, client.ProvisionRequest{UserID: fmt.Sprintf("u%d", i)})
		require.NoError(t, err)
		if c.holder(pr.EngineID) == c.procs[0] {
			engine = pr
			break
		}
	}
	uid := ""
	e, _ := c.row(engine.EngineID)
	uid = e.UserID
	require.Eventually(t, func() bool {
		got, err := c.platform(c.procs[1]).Get(ctx, uid)
		return err == nil && got.LastHealthAt != nil
	}, 15*time.Second, 20*time.Millisecond, "r0 probes the engine")
	_, err := c.platform(c.procs[1]).Stop(ctx, uid)
	require.NoError(t, err)
	time.Sleep(3 * time.Second) // ten probe intervals
	got, _ := c.row(engine.EngineID)
	require.Equal(t, bap.StateStopped, got.Status)
	for _, a := range c.actions(engine.EngineID) {
		require.NotContains(t, []audit.Action{audit.HealthFailed, audit.EngineDied, audit.AutoRestartStart,
			audit.AutoRestartSuccess, audit.AutoRestartFailed}, a, "trail %v", c.actions(engine.EngineID))
	}
}

// TestProbesAreDividedAmongReplicas counts, at the engines, the health
// probes of a fleet watched by two and then three replicas: one per
// interval per engine, not one per replica.
func TestProbesAreDividedAmongReplicas(t *testing.T) {
	const interval = 0.5
	c := newCluster(t, 2, func(env map[string]string) {
		env["ORCH_HEALTH_CHECK_INTERVAL_S"] = fmt.Sprint(interval)
	})
	ctx := context.Background()
	var urls []string
	for i := range 8 {
		pr, err := c.platform(c.procs[i%2]).Provision(ctx, client.ProvisionRequest{UserID: fmt.Sprintf("p%d", i)})
		require.NoError(t, err)
		urls = append(urls, pr.URL)
	}
	measure := func(replicas int) {
		t.Helper()
		// Wait until every shard is held by one of the live replicas.
		require.Eventually(t, func() bool {
			list, err := c.store.Replicas(ctx, replicaTTL)
			require.NoError(t, err)
			alive, shards := 0, 0
			for _, r := range list {
				if r.Alive {
					alive++
					shards += r.Shards
				}
			}
			return alive == replicas && shards == replica.Shards
		}, 10*time.Second, 50*time.Millisecond)
		time.Sleep(time.Second)
		const window = 6 * time.Second
		before := healthChecks(t, urls)
		time.Sleep(window)
		after := healthChecks(t, urls)
		want := window.Seconds() / interval
		for i := range urls {
			got := float64(after[i]-before[i]) - 1 // our own read
			t.Logf("%d replicas: engine %d answered %.0f probes in %s (one per interval: %.0f)", replicas, i, got, window, want)
			// One prober: about want (fewer when a loaded machine delays
			// probes past their interval). Two or three would be 2× or 3×.
			require.LessOrEqual(t, got, 1.4*want, "engine %d probed by more than one of %d replicas", i, replicas)
			require.GreaterOrEqual(t, got, 0.25*want, "engine %d is probed with %d replicas", i, replicas)
		}
	}
	measure(2)
	c.start("r2")
	measure(3)
}

// healthChecks reads each engine's count of answered health checks.
func healthChecks(t *testing.T, urls []string) []int {
	t.Helper()
	out := make([]int, len(urls))
	for i, u := range urls {
		resp, err := http.Get(u + "/health")
		require.NoError(t, err)
		var body struct {
			HealthChecks int `json:"health_checks"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		resp.Body.Close()
		out[i] = body.HealthChecks
	}
	return out
}

// TestQuotaAndMaxRunningAcrossReplicas races provisions and starts through
// two replicas: max_engines and max_running stay exact.
func TestQuotaAndMaxRunningAcrossReplicas(t *testing.T) {
	c := newCluster(t, 2, func(env map[string]string) { env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "30" })
	ctx := context.Background()
	admin := adminClient(c.procs[0].url, c.env)
	_, err := admin.UpdatePolicy(ctx, c.prod.ProductID, client.Policy{"max_engines": 5})
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	created, refused := 0, 0
	for i := range 16 {
		wg.Go(func() {
			_, err := c.platform(c.procs[i%2]).Provision(ctx, client.ProvisionRequest{UserID: fmt.Sprintf("q%d", i)})
			mu.Lock()
			defer mu.Unlock()
			switch client.ErrorCode(err) {
			case "":
				created++
			case client.CodeQuotaExceeded:
				refused++
			default:
				t.Errorf("provision q%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	require.Equal(t, 5, created, "max_engines is exact across replicas")
	require.Equal(t, 11, refused)

	// Stop all five; with max_running 2, racing starts through both
	// replicas bring exactly two back.
	list, err := c.platform(c.procs[0]).List(ctx, client.ListOptions{})
	require.NoError(t, err)
	for _, e := range list.Engines {
		_, err := c.platform(c.procs[1]).Stop(ctx, e.UserID)
		require.NoError(t, err)
	}
	_, err = admin.UpdatePolicy(ctx, c.prod.ProductID, client.Policy{"max_engines": 5, "max_running": 2})
	require.NoError(t, err)
	started := map[string]bool{} // a start through both replicas joins: one engine
	for i, e := range list.Engines {
		for _, p := range c.procs {
			wg.Go(func() {
				_, err := c.platform(p).Start(ctx, e.UserID)
				mu.Lock()
				defer mu.Unlock()
				switch client.ErrorCode(err) {
				case "":
					started[e.UserID] = true
				case client.CodeQuotaExceeded, client.CodeEngineAlreadyRunning:
				default:
					t.Errorf("start %s (%d): %v", e.UserID, i, err)
				}
			})
		}
	}
	wg.Wait()
	counts, err := c.store.CountByStatus(ctx, c.prod.ProductID)
	require.NoError(t, err)
	require.Equal(t, 2, counts[bap.StateRunning], "max_running is exact across replicas: %v", counts)
	require.Equal(t, 3, counts[bap.StateStopped])
	require.Len(t, started, 2)
}

// TestFrozenReplicaCommitsNothingStale freezes a replica (SIGSTOP) past its
// TTL while it rotates a key (the new instance is booting) and while it
// probes engines: the other replica takes its shards and its operation
// (restoring the key the database holds) and stops an engine the frozen one
// was probing. When the frozen replica runs again, its rotation cannot
// commit, its probes of the stopped engine count for nothing, and it
// rejoins with a share of the shards.
func TestFrozenReplicaCommitsNothingStale(t *testing.T) {
	c := newCluster(t, 2, func(env map[string]string) {
		env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "0.3"
		engineEnv(env, "ENGINE_WARMUP_S", "2")
	})
	ctx := context.Background()
	a, b := c.procs[0], c.procs[1]
	aID := c.replicaID(a)
	frank, err := c.platform(b).Provision(ctx, client.ProvisionRequest{UserID: "frank"})
	require.NoError(t, err)
	// grace: an engine of A's shards, which B stops while A is frozen.
	var grace client.Provisioned
	for i := 0; ; i++ {
		require.Less(t, i, 40, "no engine landed on A's shards")
		pr, err := c.platform(b).Provision(ctx, client.ProvisionRequest{UserID: fmt.Sprintf("grace%d", i)})
		require.NoError(t, err)
		if c.holder(pr.EngineID) == a {
			grace = pr
			break
		}
	}
	graceRow, _ := c.row(grace.EngineID)
	require.Eventually(t, func() bool {
		e, _ := c.row(grace.EngineID)
		return e.LastHealthAt != nil
	}, 5*time.Second, 20*time.Millisecond, "A probes grace")

	oldPid := pidOf(t, c.env, frank.EngineID)
	rotated := make(chan error, 1)
	go func() {
		_, err := c.platform(a).RotateKey(ctx, "frank")
		rotated <- err
	}()
	// Freeze A once its new instance of frank was spawned and its start
	// call returned (the engine's directory lock is free again): A is
	// waiting for it to become healthy, between backend calls. Frozen
	// inside the call, A would hold the lock B's takeover waits for.
	dir := filepath.Join(c.env["ORCH_DATA_ROOT"], frank.EngineID)
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "engine.pid"))
		if err != nil {
			return false
		}
		var pf struct {
			Pid    int  `json:"pid"`
			Exited bool `json:"exited"`
		}
		return json.Unmarshal(b, &pf) == nil && !pf.Exited && fmt.Sprint(pf.Pid) != oldPid && dirUnlocked(dir)
	}, 10*time.Second, 2*time.Millisecond)
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGSTOP))
	frozen := time.Now()

	// B takes every shard and A's rotation, and stops grace.
	require.Eventually(t, func() bool {
		list, err := c.store.Replicas(ctx, replicaTTL)
		require.NoError(t, err)
		for _, r := range list {
			if (r.ID == aID && r.Alive) || (r.ID != aID && r.Shards != replica.Shards) {
				return false
			}
		}
		return true
	}, takeoverBound, 20*time.Millisecond, "B holds every shard")
	e, _ := c.settled(frank.EngineID, takeoverBound, "the frozen replica's rotation")
	require.Equal(t, bap.StateRunning, e.Status)
	_, err = c.platform(b).Stop(ctx, graceRow.UserID)
	require.NoError(t, err)
	frankTrail, graceTrail := c.actions(frank.EngineID), c.actions(grace.EngineID)
	t.Logf("frozen for %s; frank %v; grace %v", time.Since(frozen).Round(time.Millisecond), frankTrail, graceTrail)

	require.NoError(t, a.cmd.Process.Signal(syscall.SIGCONT))
	err = <-rotated
	require.Equal(t, client.CodeEngineBusy, client.ErrorCode(err), "A's rotation lost its claim: %v", err)
	// A rejoins: alive again, with a share of the shards.
	require.Eventually(t, func() bool {
		list, err := c.store.Replicas(ctx, replicaTTL)
		require.NoError(t, err)
		for _, r := range list {
			if r.ID == aID {
				return r.Alive && r.Shards > 0 && r.Shards < replica.Shards
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "A rejoins")
	time.Sleep(2 * time.Second) // A probes its shards again

	require.Equal(t, frankTrail, c.actions(frank.EngineID), "A committed nothing on frank")
	require.Equal(t, graceTrail, c.actions(grace.EngineID), "A committed nothing on grace")
	adm, err := c.platform(a).Admit(ctx, "frank", client.AdmitOptions{})
	require.NoError(t, err)
	require.Equal(t, frank.APIKey, adm.Engine.APIKey, "the database kept the key the engine has")
	require.Equal(t, http.StatusOK, engineAnswers(t, adm.Engine.URL, adm.Engine.APIKey))
	g, _ := c.row(grace.EngineID)
	require.Equal(t, bap.StateStopped, g.Status)
	require.Zero(t, g.HealthFailures, "A's stale probes of grace counted for nothing")
}

// TestSingleOrchestratorRestartFinishesWithin5s: with the default TTL and
// reconcile grace, a kill -9 of the only orchestrator mid-provision and
// mid-destroy, then a restart, leaves no engine in provisioning or
// destroying for more than 5 s after the restart.
func TestSingleOrchestratorRestartFinishesWithin5s(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			env := baseEnv(t, st.url(t))
			delete(env, "ORCH_RECONCILE_GRACE_S")
			engineEnv(env, "ENGINE_WARMUP_S", "1", "ENGINE_SHUTDOWN_DELAY_S", "1")
			killEnginesUnder(t, env["ORCH_DATA_ROOT"])
			ctx := context.Background()
			o := startChild(t, env)
			prod, pc := registerAcme(t, o.url, env)
			doomed, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "doomed"})
			require.NoError(t, err)

			go func() { _, _ = pc.Provision(ctx, client.ProvisionRequest{UserID: "fresh"}) }()
			go func() { _, _ = pc.Destroy(ctx, "doomed") }()
			require.Eventually(t, func() bool {
				d, err := pc.Get(ctx, "doomed")
				f, ferr := pc.Get(ctx, "fresh")
				return err == nil && d.Status == "destroying" && ferr == nil && f.Status == "provisioning"
			}, 10*time.Second, 5*time.Millisecond)
			o.kill(t)

			restarted := time.Now()
			o = startChild(t, env)
			pc = client.New(o.url, client.WithPlatformKey(prod.PlatformAPIKey))
			require.Eventually(t, func() bool {
				_, derr := pc.Get(ctx, "doomed")
				f, ferr := pc.Get(ctx, "fresh")
				return client.ErrorCode(derr) == client.CodeEngineNotFound && ferr == nil && f.Status != "provisioning"
			}, 5*time.Second, 10*time.Millisecond, "nothing stays provisioning or destroying")
			t.Logf("settled %s after the restart", time.Since(restarted).Round(time.Millisecond))
			require.Zero(t, engineAnswers(t, doomed.URL, doomed.APIKey))
		})
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// tail is the end of a log file, for failure messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return strings.Join(out, "\n")
}

// enginePids lists the live engine processes whose data lives under
// dataRoot (their SQLITE_DB_PATH), whoever started them.
func enginePids(dataRoot string) []int {
	procs, _ := os.ReadDir("/proc")
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || zombie(pid) {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", p.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if strings.HasPrefix(kv, "SQLITE_DB_PATH="+dataRoot+"/") {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// engineOfPid is the engine id an engine process serves ("" if unknown).
func engineOfPid(pid int) string {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(env), "\x00") {
		if id, ok := strings.CutPrefix(kv, "BAP_ENGINE_ID="); ok {
			return id
		}
	}
	return ""
}

// killEnginesUnder kills, when the test ends, every engine process serving
// data under dataRoot, found by its environment: also those whose data dir
// is already gone or whose orchestrator was killed.
func killEnginesUnder(t *testing.T, dataRoot string) {
	t.Cleanup(func() {
		for range 3 {
			pids := enginePids(dataRoot)
			if len(pids) == 0 {
				return
			}
			for _, pid := range pids {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) && len(enginePids(dataRoot)) > 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
}

// dirUnlocked reports whether no process holds the subprocess backend's
// operation lock (an flock) on an engine's data directory.
func dirUnlocked(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return false
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return true
}
