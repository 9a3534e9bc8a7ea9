package loadtest_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/secret"
)

// The burst benchmark's knobs.
const (
	envBurstN       = "BAP_BURST_N"       // comma-separated burst sizes (default 200,1000)
	envBurstStores  = "BAP_BURST_STORES"  // comma-separated: sqlite, postgres (default both)
	envBurstProfile = "BAP_BURST_PROFILE" // a directory: profiles of serve and PostgreSQL's wait events go there
	envBurstLimit   = "BAP_BURST_LIMIT"   // ORCH_MAX_CONCURRENT_PROVISIONS for serve (default: its own)
)

// BenchmarkProvisionBurst sends N concurrent first admits ({"auto_provision":
// true, "auto_wake": true}), one per new user, to a real `bap-engine serve`
// built from this tree (subprocess backend, reference engines), on SQLite
// and on PostgreSQL, and measures beside it the floor: N reference engines
// spawned directly and waited on until /health is ok. It checks that every
// admit got its own engine (N rows, N processes) and reports the wall time,
// p50, p99 and max of the admits, the floor, their ratio, and the CPU of
// the orchestrator and of the database.
//
//	go test -run '^$' -bench ProvisionBurst -benchtime 1x -timeout 60m ./internal/loadtest/
//
// BAP_BURST_PROFILE=<dir> also writes serve's CPU, block and mutex profiles
// and the PostgreSQL wait events sampled during the burst.
func BenchmarkProvisionBurst(b *testing.B) {
	bin := buildOrchestrator(b)
	sizes := []int{200, 1000}
	if v := os.Getenv(envBurstN); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			require.NoError(b, err, envBurstN)
			sizes = append(sizes, n)
		}
	}
	stores := []string{"sqlite", "postgres"}
	if v := os.Getenv(envBurstStores); v != "" {
		stores = strings.Split(v, ",")
	}
	for _, st := range stores {
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/%d", st, n), func(b *testing.B) {
				for range b.N {
					floor := burstFloor(b, bin, n)
					r := burstOrchestrator(b, bin, st, n)
					ratio := r.wall.Seconds() / floor.Seconds()
					b.ReportMetric(r.wall.Seconds(), "wall_s")
					b.ReportMetric(r.p50.Seconds(), "p50_s")
					b.ReportMetric(r.p99.Seconds(), "p99_s")
					b.ReportMetric(r.max.Seconds(), "max_s")
					b.ReportMetric(floor.Seconds(), "floor_s")
					b.ReportMetric(ratio, "ratio")
					b.ReportMetric(r.serveCPU.Seconds(), "serve_cpu_s")
					b.ReportMetric(r.dbCPU.Seconds(), "db_cpu_s")
					b.Logf("| %s | %d | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f | %d | %d | %.1f s | %s |",
						st, n, r.wall.Seconds(), r.p50.Seconds(), r.p99.Seconds(), r.max.Seconds(), floor.Seconds(),
						ratio, r.rows, r.procs, r.serveCPU.Seconds(), dbCPU(st, r.dbCPU))
				}
			})
		}
	}
}

func dbCPU(store string, d time.Duration) string {
	if store == "sqlite" {
		return "(in serve)"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// buildOrchestrator builds cmd/bap-engine into a temporary directory.
func buildOrchestrator(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "bap-engine")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bap-engine")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	require.NoError(b, err, "go build: %s", out)
	return bin
}

// burstFloor spawns n reference engines at once and returns how long until
// every one answered /health with ok; it stops them afterwards.
func burstFloor(b *testing.B, bin string, n int) time.Duration {
	b.Helper()
	lo, _ := backendtest.PortRange(b, n)
	root := b.TempDir()
	sum := sha256.Sum256([]byte("floor-key"))
	hash := hex.EncodeToString(sum[:])
	cmds := make([]*exec.Cmd, n)
	defer stopAll(cmds)
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		dir := filepath.Join(root, strconv.Itoa(i))
		require.NoError(b, os.MkdirAll(dir, 0o700))
		cmd := exec.Command(bin, "engine")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
			"PORT=" + strconv.Itoa(lo+i), "ENGINE_KEY_HASH=" + hash, "ENGINE_LISTEN_HOST=127.0.0.1",
			"SQLITE_DB_PATH=" + filepath.Join(dir, "brain.sqlite")}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		require.NoError(b, cmd.Start())
		cmds[i] = cmd
		wg.Go(func() { errs <- waitOK(fmt.Sprintf("http://127.0.0.1:%d/health", lo+i), 3*time.Minute) })
	}
	wg.Wait()
	took := time.Since(began)
	close(errs)
	for err := range errs {
		require.NoError(b, err)
	}
	return took
}

// waitOK polls url until it answers 200, as the orchestrator's boot
// detection does (25 ms apart, then backing off to 500 ms).
func waitOK(url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	delay := 25 * time.Millisecond
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy within %s", url, within)
		}
		time.Sleep(delay)
		delay = min(delay*3/2, 500*time.Millisecond)
	}
}

func stopAll(cmds []*exec.Cmd) {
	for _, c := range cmds {
		if c != nil && c.Process != nil {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
	}
	for _, c := range cmds {
		if c != nil && c.Process != nil {
			_ = c.Wait()
		}
	}
}

// burstResult is what one orchestrator burst measured.
type burstResult struct {
	wall, p50, p99, max time.Duration
	rows, procs         int
	serveCPU, dbCPU     time.Duration
}

var listeningRE = regexp.MustCompile(`listening on (http://\S+)`)

// burstOrchestrator runs serve on store and sends it n concurrent first
// admits.
func burstOrchestrator(b *testing.B, bin, store string, n int) burstResult {
	b.Helper()
	ctx := context.Background()
	lo, hi := backendtest.PortRange(b, n+10)
	dataRoot := b.TempDir()
	master, err := secret.NewFernetKey()
	require.NoError(b, err)
	env := map[string]string{
		"ORCH_MASTER_KEY":              master,
		"ORCH_ADMIN_KEY":               "burst-admin-key-0123456789",
		"ORCH_ENGINE_BACKEND":          "subprocess",
		"ORCH_SUBPROCESS_COMMAND":      bin + " engine",
		"ORCH_DATA_ROOT":               dataRoot,
		"ORCH_LISTEN_ADDR":             "127.0.0.1:0",
		"ORCH_PORT_MIN":                strconv.Itoa(lo),
		"ORCH_PORT_MAX":                strconv.Itoa(hi),
		"ORCH_BOOT_TIMEOUT_S":          "180",
		"ORCH_LOG_LEVEL":               "warn",
		"ORCH_DEPLOYMENT_ID":           fmt.Sprintf("burst-%d", time.Now().UnixNano()),
		"ORCH_HEALTH_CHECK_INTERVAL_S": "30",
	}
	if v := os.Getenv(envBurstLimit); v != "" {
		env["ORCH_MAX_CONCURRENT_PROVISIONS"] = v
	}
	var dbURL string
	switch store {
	case "sqlite":
		env["ORCH_DATABASE_URL"] = "sqlite://" + filepath.Join(b.TempDir(), "bap.db")
	case "postgres":
		dbURL = pgtest.URL(b)
		env["ORCH_DATABASE_URL"] = dbURL
	default:
		b.Fatalf("unknown store %q", store)
	}
	profileDir := os.Getenv(envBurstProfile)
	var pprofAddr string
	if profileDir != "" {
		pprofAddr = fmt.Sprintf("127.0.0.1:%d", backendtest.FreePort(b))
		env["ORCH_PPROF_ADDR"] = pprofAddr
	}
	cmd := exec.Command(bin, "serve")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "PATH="+os.Getenv("PATH"), "HOME="+os.Getenv("HOME"))
	stdout, err := cmd.StdoutPipe()
	require.NoError(b, err)
	cmd.Stderr = os.Stderr
	require.NoError(b, cmd.Start())
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		killEnginesUnder(dataRoot)
	}()
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	var base string
	select {
	case base = <-urls:
	case <-time.After(time.Minute):
		b.Fatal("serve did not start")
	}
	prod, err := client.New(base, client.WithAdminKey(env["ORCH_ADMIN_KEY"])).RegisterProduct(ctx,
		client.ProductRequest{Slug: "burst", DisplayName: "Burst"})
	require.NoError(b, err)

	hc := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
		MaxIdleConnsPerHost: n, MaxConnsPerHost: 0, DisableCompression: true}}
	defer hc.CloseIdleConnections()
	body := []byte(`{"auto_provision": true, "auto_wake": true}`)
	pgPort := 0
	if dbURL != "" {
		u, err := url.Parse(dbURL)
		require.NoError(b, err)
		pgPort, _ = strconv.Atoi(u.Port())
	}
	serveCPU0 := procCPU(cmd.Process.Pid)
	db0, _ := postgresCPU(pgPort)
	stopSampling := func() map[string]int { return nil }
	if profileDir != "" && dbURL != "" {
		stopSampling = sampleWaitEvents(b, dbURL)
	}
	var cpuProfile chan []byte
	if profileDir != "" {
		cpuProfile = make(chan []byte, 1)
		go func() { cpuProfile <- fetch(pprofAddr, "/debug/pprof/profile?seconds=20") }()
	}

	lat := make([]time.Duration, n)
	ids := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			began := time.Now()
			req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/engines/burst-%05d/admit", base, i), bytes.NewReader(body))
			req.Header.Set("X-Platform-Key", prod.PlatformAPIKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			data, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			lat[i] = time.Since(began)
			var out client.AdmitResult
			if err == nil {
				err = json.Unmarshal(data, &out)
			}
			switch {
			case err != nil:
				errs[i] = err
			case resp.StatusCode != http.StatusOK || !out.Admitted || out.Engine == nil:
				errs[i] = fmt.Errorf("admit %d: status %d: %s", i, resp.StatusCode, data)
			default:
				ids[i] = out.Engine.EngineID
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(began)
	serveCPU := procCPU(cmd.Process.Pid) - serveCPU0
	db1, _ := postgresCPU(pgPort)
	waits := stopSampling()
	for _, err := range errs {
		require.NoError(b, err)
	}
	slices.Sort(ids)
	require.Len(b, slices.Compact(ids), n, "every admit got its own engine")
	list, err := client.New(base, client.WithPlatformKey(prod.PlatformAPIKey)).List(ctx, client.ListOptions{Limit: 1})
	require.NoError(b, err)
	require.Equal(b, n, list.Total, "rows")
	procs := len(enginesUnder(dataRoot))
	require.Equal(b, n, procs, "engine processes")

	if profileDir != "" {
		require.NoError(b, os.MkdirAll(profileDir, 0o755))
		name := fmt.Sprintf("%s-%d", store, n)
		require.NoError(b, os.WriteFile(filepath.Join(profileDir, name+".block.pprof"), fetch(pprofAddr, "/debug/pprof/block"), 0o644))
		require.NoError(b, os.WriteFile(filepath.Join(profileDir, name+".mutex.pprof"), fetch(pprofAddr, "/debug/pprof/mutex"), 0o644))
		require.NoError(b, os.WriteFile(filepath.Join(profileDir, name+".cpu.pprof"), <-cpuProfile, 0o644))
		if waits != nil {
			var lines []string
			for k, v := range waits {
				lines = append(lines, fmt.Sprintf("%6d %s", v, k))
			}
			sort.Sort(sort.Reverse(sort.StringSlice(lines)))
			require.NoError(b, os.WriteFile(filepath.Join(profileDir, name+".waits.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644))
		}
	}
	slices.Sort(lat)
	return burstResult{
		wall: wall, p50: lat[n/2], p99: lat[min(n-1, n*99/100)], max: lat[n-1],
		rows: list.Total, procs: procs, serveCPU: serveCPU, dbCPU: db1 - db0,
	}
}

// sampleWaitEvents samples pg_stat_activity every 50 ms until the returned
// function is called, which returns the counts of (state, wait event) seen
// on the benchmark database's backends.
func sampleWaitEvents(b *testing.B, dbURL string) func() map[string]int {
	conn, err := pgx.Connect(context.Background(), dbURL)
	require.NoError(b, err)
	counts := map[string]int{}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			rows, err := conn.Query(context.Background(), `SELECT COALESCE(state, ''), COALESCE(wait_event_type, 'CPU'),
				COALESCE(wait_event, ''), count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1, 2, 3`)
			if err != nil {
				continue
			}
			for rows.Next() {
				var state, typ, ev string
				var n int
				if rows.Scan(&state, &typ, &ev, &n) == nil {
					counts[state+" "+typ+":"+ev] += n
				}
			}
			rows.Close()
		}
	}()
	return func() map[string]int {
		close(done)
		<-stopped
		_ = conn.Close(context.Background())
		return counts
	}
}

// fetch GETs a path of the profile listener.
func fetch(addr, path string) []byte {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return []byte(err.Error())
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return data
}

// procCPU is a process's user and system time.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * clockTick
}

// enginesUnder lists the live engine processes whose brain is under root.
func enginesUnder(root string) []int {
	entries, _ := os.ReadDir("/proc")
	prefix := []byte("SQLITE_DB_PATH=" + root + "/")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && bytes.Contains(data, prefix) {
			out = append(out, pid)
		}
	}
	return out
}

// killEnginesUnder kills every engine process whose brain is under root.
func killEnginesUnder(root string) {
	for range 3 {
		pids := enginesUnder(root)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
