package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/pdeath"

	"github.com/jackc/pgx/v5"
)

// binDirs are where PostgreSQL's server binaries are looked for, in order:
// version 15 first, as in CI, then any other installed version.
func binDirs() []string {
	dirs := []string{"/usr/lib/postgresql/15/bin"}
	others, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.Sort(others)
	slices.Reverse(others)
	return append(dirs, others...)
}

// errNoBinaries means no PostgreSQL server is installed: tests skip (fail
// under CI=true).
var errNoBinaries = errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/15/bin; " +
	"install postgresql-15 or set BAP_TEST_DATABASE_URL to a server the tests may create databases on")

// dirPrefix names the data directories of test servers; unique suffixes keep
// concurrent and crashed runs apart.
const dirPrefix = "bap-pgtest-"

// Server is a throwaway PostgreSQL cluster owned by the test binary: its data
// directory is in memory (/dev/shm), durability is off, it listens on
// 127.0.0.1 on a port that stays the same across Stop and Start.
type Server struct {
	bin  string
	dir  string // owned by us; holds data/, sock/, postgres.log
	port int
	cred *syscall.Credential // set when we are root: run as the postgres user

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited

	cluster *cluster // template and databases, created on first use
}

// startServer initialises a new cluster and starts it.
func startServer() (*Server, error) {
	bin := ""
	for _, d := range binDirs() {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			bin = d
			break
		}
	}
	if bin == "" {
		return nil, errNoBinaries
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root needs a postgres OS user to run the server as: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	dir, err := pdeath.ScratchDir(dirPrefix, stopStale)
	if err != nil {
		return nil, fmt.Errorf("pgtest: create data directory: %w", err)
	}
	s.dir = dir
	if err := s.init(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := s.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// init writes the owner file, makes the directory the server user's and runs
// initdb.
func (s *Server) init() error {
	if err := os.WriteFile(filepath.Join(s.dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Mkdir(filepath.Join(s.dir, "sock"), 0o755); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.cred != nil {
		for _, p := range []string{s.dir, filepath.Join(s.dir, "sock")} {
			if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return fmt.Errorf("pgtest: chown %s to postgres: %w", p, err)
			}
		}
	}
	cmd := s.command("initdb", "-D", filepath.Join(s.dir, "data"), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.port = port
	return nil
}

// command prepares one of the server binaries to run as the server user, in
// its own process group, with a clean environment.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	return cmd
}

// Port returns the TCP port the server listens on (127.0.0.1).
func (s *Server) Port() int { return s.port }

// Start starts the server (again, after Stop) on its port and data directory
// and waits until it accepts connections. Starting a running server is a
// no-op.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close()
	cmd := s.command("postgres", "-D", filepath.Join(s.dir, "data"),
		"-p", strconv.Itoa(s.port), "-k", filepath.Join(s.dir, "sock"),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "autovacuum=off", "-c", "timezone=UTC",
		// Shared memory segments in the data directory, not loose in /dev/shm:
		// they go with the directory even after a crash.
		"-c", "dynamic_shared_memory_type=mmap")
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary (SIGQUIT: immediate shutdown),
	// so a killed run leaves no server behind.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := pdeath.Start(cmd); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	exited := make(chan struct{})
	go watch(cmd, exited)
	s.cmd, s.exited = cmd, exited
	if err := s.waitReady(exited); err != nil {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		<-exited
		s.cmd = nil
		return err
	}
	return nil
}

// watch reaps the server process and closes exited when it is gone.
func watch(cmd *exec.Cmd, exited chan<- struct{}) {
	_ = cmd.Wait()
	close(exited)
}

// waitReady polls until the server accepts connections, it exits, or a
// minute passes.
func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.url("postgres"))
		if err == nil {
			err = conn.Close(ctx)
			cancel()
			return err
		}
		cancel()
		select {
		case <-exited:
			return fmt.Errorf("pgtest: postgres exited at start:\n%s", s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres not ready after a minute: %w\n%s", err, s.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop shuts the server down (fast shutdown: open sessions are ended) and
// waits for it to exit. Clients see the database as unavailable until Start.
// Stopping a stopped server is a no-op.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
	return nil
}

// close stops the server and removes its directory.
func (s *Server) close() error {
	if s.cluster != nil {
		s.cluster.close()
	}
	err := s.Stop()
	return errors.Join(err, os.RemoveAll(s.dir))
}

// url returns the URL of database db on this server.
func (s *Server) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// stopStale stops the server of the directory of a test binary that is
// gone (killed or crashed), if it still runs, before the directory goes.
func stopStale(dir string) {
	if pidFile, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid")); err == nil {
		first, _, _ := bytes.Cut(pidFile, []byte("\n"))
		if pid, err := strconv.Atoi(strings.TrimSpace(string(first))); err == nil && pdeath.Alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			for i := 0; i < 100 && pdeath.Alive(pid); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}
