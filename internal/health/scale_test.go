package health_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/registry/storetest"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
)

// listenersEnv makes the test binary serve "<n>,<hanging>" loopback
// listeners instead of running tests: the first <hanging> accept and never
// answer, the others answer /health with ok and count the probes they
// answered. It prints one port per line, then "ready"; for every line read
// on stdin it prints the number of probes answered so far; it exits when
// its stdin closes.
const listenersEnv = "BAP_HEALTH_TEST_LISTENERS"

func serveListeners() int {
	var n, hang int
	if _, err := fmt.Sscanf(os.Getenv(listenersEnv), "%d,%d", &n, &hang); err != nil {
		fmt.Fprintln(os.Stderr, "listeners:", err)
		return 2
	}
	if err := raiseNoFile(); err != nil {
		fmt.Fprintln(os.Stderr, "listeners:", err)
		return 2
	}
	var answered atomic.Int64
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answered.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
	out := bufio.NewWriter(os.Stdout)
	var held sync.Map
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "listeners:", err)
			return 2
		}
		if i < hang {
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					held.Store(conn, true) // never read, never answered
				}
			}()
		} else {
			srv := &http.Server{Handler: ok, IdleTimeout: 120 * time.Second}
			go func() { _ = srv.Serve(ln) }()
		}
		fmt.Fprintln(out, ln.Addr().(*net.TCPAddr).Port)
	}
	fmt.Fprintln(out, "ready")
	if err := out.Flush(); err != nil {
		return 2
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Fprintln(out, answered.Load())
		if err := out.Flush(); err != nil {
			return 2
		}
	}
	return 0
}

// wantNoFile is a comfortable open-files limit for the fleet.
const wantNoFile = 1 << 16

// raiseNoFile lifts the open-files limit to wantNoFile where the process
// may raise its hard limit (root), else the soft limit to the hard one,
// and fails when that is not enough.
func raiseNoFile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if l.Max < wantNoFile {
		up := syscall.Rlimit{Cur: wantNoFile, Max: wantNoFile}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) == nil {
			return nil
		}
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("setrlimit: %w", err)
	}
	// A listener per engine, plus the connections open at once: probes in
	// flight, hanging ones and the idle connections the prober keeps.
	if need := uint64(fleetSize + 4000); l.Cur < need {
		return fmt.Errorf("open-files limit %d is too low for %d engines (need %d)", l.Cur, fleetSize, need)
	}
	return nil
}

// listeners is the listener helper process.
type listeners struct {
	ports []int
	in    io.Writer
	out   *bufio.Scanner
}

// answered asks the helper how many probes its engines answered so far.
func (l *listeners) answered(b *testing.B) int64 {
	b.Helper()
	_, err := fmt.Fprintln(l.in, "count")
	require.NoError(b, err)
	require.True(b, l.out.Scan(), "listener helper ended")
	n, err := strconv.ParseInt(l.out.Text(), 10, 64)
	require.NoError(b, err)
	return n
}

// startListeners runs the listener helper process and returns its ports.
func startListeners(b *testing.B, n, hang int) []int {
	return startListenerHelper(b, n, hang).ports
}

// startListenerHelper runs the listener helper process.
func startListenerHelper(b *testing.B, n, hang int) *listeners {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", listenersEnv, n, hang))
	stdin, err := cmd.StdinPipe()
	require.NoError(b, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(b, err)
	cmd.Stderr = os.Stderr
	require.NoError(b, cmd.Start())
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	l := &listeners{in: stdin, out: bufio.NewScanner(stdout)}
	for l.out.Scan() {
		line := l.out.Text()
		if line == "ready" {
			return l
		}
		p, err := strconv.Atoi(line)
		require.NoError(b, err)
		l.ports = append(l.ports, p)
	}
	b.Fatalf("listener helper ended early: %v", l.out.Err())
	return nil
}

// registerFleet inserts one running engine per port, in one transaction.
func registerFleet(b *testing.B, e *env, ports []int) {
	b.Helper()
	now := bap.Now()
	err := e.store.InTx(context.Background(), func(tx registry.Store) error {
		for i, p := range ports {
			en := bap.Engine{ID: uuid.NewString(), ProductID: e.product.ID, UserID: "u" + strconv.Itoa(i),
				Status: bap.StateRunning, Port: p, URL: "http://127.0.0.1:" + strconv.Itoa(p),
				Image: "september-engine:bench", LastActiveAt: &now, CreatedAt: now, UpdatedAt: now}
			if err := registrytest.StepsOf(tx).InsertEngine(context.Background(), en, registry.Quota{}); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(b, err)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatusKB reads a field (VmRSS, VmHWM) of /proc/self/status in KiB.
func procStatusKB(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb
		}
	}
	return 0
}

const (
	fleetSize    = 10_000
	fleetHanging = 100
)

// benchmarkSweep registers a 10,000-engine fleet (100 never answer) served
// by one helper process and measures one full sweep of a Checker with the
// production settings (30 s interval, 10 s timeout, 50 in flight): until
// every engine has one probe result. tick selects the Tick mode (one burst
// sweep as fast as the slots allow) instead of the per-engine schedule.
func benchmarkSweep(b *testing.B, tick bool) {
	require.NoError(b, raiseNoFile())
	began := time.Now()
	ports := startListeners(b, fleetSize, fleetHanging)
	require.Len(b, ports, fleetSize)
	listening := time.Since(began)
	for _, s := range storetest.Both {
		b.Run(s.Name, func(b *testing.B) {
			began := time.Now()
			e := newEnv(b, envOptions{store: s.Open(b)})
			registerFleet(b, e, ports)
			b.Logf("setup: %d listeners in %s, %d engines registered in %s",
				fleetSize, listening.Round(time.Millisecond), fleetSize, time.Since(began).Round(time.Millisecond))
			b.ResetTimer()
			for range b.N {
				sweepOnce(b, e, tick)
			}
		})
	}
}

func sweepOnce(b *testing.B, e *env, tick bool) {
	b.StopTimer()
	var (
		mu      sync.Mutex
		seen    = make(map[string]bool, fleetSize)
		healthy int
		okAt    time.Duration // when every answering engine had answered once
		failed  atomic.Int64
		allSeen = make(chan struct{})
		maxLag  atomic.Int64
		probes  atomic.Int64
		wall0   time.Time
	)
	cfg := health.Config{
		Interval:    30 * time.Second,
		Timeout:     10 * time.Second,
		MaxFailures: 1000, // measure probing, not transitions
		Logger:      quietLogger(),
		OnPass: func(st health.Stats) {
			if int64(st.MaxLag) > maxLag.Load() {
				maxLag.Store(int64(st.MaxLag))
			}
		},
	}
	var tickC chan time.Time
	if tick {
		tickC = make(chan time.Time)
		cfg.Tick = tickC
	}
	c := health.New(e.store, e.lm, cfg)
	health.SetOnResult(c, func(id string, ok bool) {
		probes.Add(1)
		if !ok {
			failed.Add(1)
		}
		mu.Lock()
		defer mu.Unlock()
		if !seen[id] {
			seen[id] = true
			if ok {
				healthy++
				if healthy == fleetSize-fleetHanging {
					okAt = time.Since(wall0)
				}
			}
			if len(seen) == fleetSize {
				close(allSeen)
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu0 := cpuTime()
	wall0 = time.Now()
	b.StartTimer()
	go func() { done <- c.Run(ctx) }()
	select {
	case <-allSeen:
	case <-time.After(5 * time.Minute):
		b.Fatal("sweep did not finish")
	}
	wall := time.Since(wall0)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	rss, hwm := procStatusKB("VmRSS"), procStatusKB("VmHWM")
	cancel()
	require.NoError(b, <-done)
	require.EqualValues(b, fleetHanging, failed.Load(), "exactly the hanging engines fail")
	b.ReportMetric(wall.Seconds(), "sweep_s")
	mu.Lock()
	b.ReportMetric(okAt.Seconds(), "answering_s")
	mu.Unlock()
	b.ReportMetric(float64(cpu.Microseconds())/float64(probes.Load()), "cpu_us/probe")
	b.ReportMetric(cpu.Seconds(), "cpu_s")
	b.ReportMetric(float64(probes.Load())/wall.Seconds(), "probes/s")
	b.ReportMetric(rss/1024, "rss_MB")
	b.ReportMetric(hwm/1024, "peak_rss_MB")
	b.ReportMetric(float64(maxLag.Load())/float64(time.Millisecond), "max_lag_ms")
	b.StartTimer()
}

// BenchmarkSweep10k: the production schedule spreads the fleet over the
// 30 s interval, so every answering engine has answered after about one
// interval (answering_s) and the last hanging one times out up to 10 s
// later (sweep_s; engines early in the interval are probed a second time
// meanwhile). max_lag_ms says how late probes started: far below the
// interval means the hanging engines delayed nobody. Run with
// go test -run '^$' -bench Sweep10k -benchtime 1x ./internal/health/
func BenchmarkSweep10k(b *testing.B) { benchmarkSweep(b, false) }

// BenchmarkSweep10kBurst: the same fleet swept in one burst (Tick mode), as
// fast as 50 slots allow; the 100 hanging engines alone hold the slots for
// 100 × 10 s / 50 = 20 s.
func BenchmarkSweep10kBurst(b *testing.B) { benchmarkSweep(b, true) }
