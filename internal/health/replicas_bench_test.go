package health_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/replica"
	"github.com/september/bap-engine/internal/secret"
)

// benchReplicaEnv makes the test binary run as one replica of
// BenchmarkReplicas10k instead of running tests: it registers on the
// database at the URL the variable holds, takes its share of the shards and
// probes its engines every benchInterval until its stdin closes (or it is
// killed).
const benchReplicaEnv = "BAP_HEALTH_BENCH_REPLICA"

// The benchmark's probe interval and replica TTL.
const (
	benchInterval = 10 * time.Second
	benchTTL      = 3 * time.Second
)

func runBenchReplica() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "bench replica:", err)
		return 1
	}
	if err := raiseNoFile(); err != nil {
		return fail(err)
	}
	store, err := postgres.Open(ctx, os.Getenv(benchReplicaEnv))
	if err != nil {
		return fail(err)
	}
	defer store.Close()
	log := quietLogger()
	rep := replica.New(store, replica.Config{TTL: benchTTL, Host: fmt.Sprintf("bench-%d", os.Getpid()), Logger: log})
	if err := rep.Start(ctx); err != nil {
		return fail(err)
	}
	go func() { _ = rep.Run(ctx) }()
	key, err := secret.NewFernetKey()
	if err != nil {
		return fail(err)
	}
	sealer, err := secret.NewSealer(key)
	if err != nil {
		return fail(err)
	}
	fake := backendtest.NewFake()
	defer fake.Close()
	lm := lifecycle.New(store, fake, sealer, lifecycle.Config{Replica: rep, Logger: log})
	c := health.New(store, lm, health.Config{Interval: benchInterval, Timeout: 10 * time.Second,
		MaxFailures: 1000, Logger: log})
	if err := c.Run(ctx); err != nil {
		return fail(err)
	}
	rep.Deregister(context.Background())
	return 0
}

// benchReplica is one replica process of the benchmark.
type benchReplica struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startBenchReplica(b *testing.B, url string) *benchReplica {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), benchReplicaEnv+"="+url)
	stdin, err := cmd.StdinPipe()
	require.NoError(b, err)
	cmd.Stderr = os.Stderr
	require.NoError(b, cmd.Start())
	r := &benchReplica{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(r.done)
	}()
	b.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// cpu is the process's user and system time so far.
func (r *benchReplica) cpu(b *testing.B) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.cmd.Process.Pid))
	require.NoError(b, err)
	// Fields after the command name (which may hold spaces): state is 3rd,
	// utime the 14th, stime the 15th field of the line.
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest)
	utime, err := strconv.ParseInt(f[11], 10, 64)
	require.NoError(b, err)
	stime, err := strconv.ParseInt(f[12], 10, 64)
	require.NoError(b, err)
	const clockTick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(utime+stime) * clockTick
}

// waitDivided waits until the alive replicas hold all the shards between
// them and each holds some, and returns how long that took.
func waitDivided(b *testing.B, store registry.Store, alive int) time.Duration {
	b.Helper()
	began := time.Now()
	for {
		list, err := store.Replicas(context.Background(), benchTTL)
		require.NoError(b, err)
		n, shards := 0, 0
		spread := true
		for _, r := range list {
			if r.Alive {
				n++
				shards += r.Shards
				spread = spread && r.Shards > 0
			} else if r.Shards > 0 {
				spread = false
			}
		}
		if n == alive && shards == replica.Shards && spread {
			return time.Since(began)
		}
		require.Less(b, time.Since(began), time.Minute, "shards not divided among %d replicas: %+v", alive, list)
		time.Sleep(20 * time.Millisecond)
	}
}

// leaseChanges is the sum of the shard leases' epochs: it grows by one
// with every change of a shard's holder.
func leaseChanges(b *testing.B, store registry.Store) int64 {
	b.Helper()
	leases, err := store.Leases(context.Background())
	require.NoError(b, err)
	var n int64
	for _, l := range leases {
		n += l.Epoch
	}
	return n
}

// measureProbes counts, at the engines, the probes of intervals whole
// intervals once the schedule settled, and each replica's CPU meanwhile;
// no shard may change hands during the measurement.
func measureProbes(b *testing.B, l *listeners, store registry.Store, rs []*benchReplica, intervals int) (perInterval float64, cpu []time.Duration) {
	b.Helper()
	time.Sleep(benchInterval + time.Second) // every engine is in a schedule
	epochs := leaseChanges(b, store)
	count0 := l.answered(b)
	cpu0 := make([]time.Duration, len(rs))
	for i, r := range rs {
		cpu0[i] = r.cpu(b)
	}
	time.Sleep(time.Duration(intervals) * benchInterval)
	count := l.answered(b) - count0
	require.Equal(b, epochs, leaseChanges(b, store), "shards changed hands during the measurement")
	cpu = make([]time.Duration, len(rs))
	for i, r := range rs {
		cpu[i] = (r.cpu(b) - cpu0[i]) / time.Duration(intervals)
	}
	return float64(count) / float64(intervals), cpu
}

// BenchmarkReplicas10k probes a fleet of 10,000 loopback stand-in engines
// with one replica, then three (separate processes on one PostgreSQL
// database, 10 s interval), counting the probes at the engines: the fleet
// sees about 10,000 per interval either way. It reports each replica's CPU
// per interval, then kills (-9) one of the three and reports how long its
// shards took to move (TTL 3 s). Run with
//
//	go test -run '^$' -bench Replicas10k -benchtime 1x ./internal/health/
func BenchmarkReplicas10k(b *testing.B) {
	require.NoError(b, raiseNoFile())
	l := startListenerHelper(b, fleetSize, 0)
	url := pgtest.URL(b)
	store, err := postgres.Open(context.Background(), url)
	require.NoError(b, err)
	b.Cleanup(func() { _ = store.Close() })
	e := newEnv(b, envOptions{store: store})
	registerFleet(b, e, l.ports)
	for range b.N {
		first := startBenchReplica(b, url)
		waitDivided(b, store, 1)
		one, cpuOne := measureProbes(b, l, store, []*benchReplica{first}, 3)
		b.Logf("1 replica: %.0f probes per interval at the engines; CPU %s per interval", one, cpuOne[0])

		rs := []*benchReplica{first, startBenchReplica(b, url), startBenchReplica(b, url)}
		waitDivided(b, store, 3)
		three, cpuThree := measureProbes(b, l, store, rs, 3)
		b.Logf("3 replicas: %.0f probes per interval at the engines; CPU per interval %v", three, cpuThree)

		require.NoError(b, rs[1].cmd.Process.Signal(syscall.SIGKILL))
		<-rs[1].done
		moved := waitDivided(b, store, 2)
		b.Logf("kill -9 of one of 3: its shards moved after %s (TTL %s)", moved.Round(time.Millisecond), benchTTL)

		b.ReportMetric(one, "probes/interval_1")
		b.ReportMetric(three, "probes/interval_3")
		b.ReportMetric(cpuOne[0].Seconds(), "cpu_s/interval_1")
		var most time.Duration
		for _, c := range cpuThree {
			most = max(most, c)
		}
		b.ReportMetric(most.Seconds(), "max_replica_cpu_s/interval_3")
		b.ReportMetric(moved.Seconds(), "shard_move_s")
		for _, r := range []*benchReplica{rs[0], rs[2]} {
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			<-r.done
		}
	}
}
