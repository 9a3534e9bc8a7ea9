package kubetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/september/bap-engine/internal/pdeath"

	"k8s.io/client-go/rest"
)

// ErrNoBinaries means kube-apiserver or etcd is not built: tests skip (fail
// under CI=true).
var ErrNoBinaries = errors.New("kubetest: kube-apiserver and etcd not found")

// dirPrefix names the control planes' directories in /dev/shm; the owner
// file in each lets a later run remove the ones a killed run left.
const dirPrefix = "bap-kubetest-"

// ControlPlane is a running etcd and kube-apiserver owned by this process.
type ControlPlane struct {
	binDir string
	dir    string // /dev/shm/bap-kubetest-*: etcd data, certs, keys, logs
	host   string // https://127.0.0.1:port
	token  string // admin bearer token (system:masters)
	caData []byte // the apiserver's self-signed serving certificate chain

	// Started is how long the apiserver took from exec to answering /readyz.
	Started time.Duration

	mu    sync.Mutex
	procs []*proc
}

type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// BinDir returns where the binaries are looked for.
func BinDir() string {
	if d := os.Getenv(EnvBinDir); d != "" {
		return d
	}
	cache := os.Getenv("BAP_CACHE_DIR")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "/root"
		}
		cache = filepath.Join(home, ".cache", "bap-engine")
	}
	return filepath.Join(cache, "controlplane", Version)
}

// Start starts a new etcd and kube-apiserver and waits until the apiserver
// is ready. Close stops them. Most tests want Config (one per binary).
func Start() (*ControlPlane, error) {
	bin := BinDir()
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%w in %s: build them once with scripts/controlplane.sh "+
				"(minutes the first time; cached afterwards), or point %s at a directory holding both", ErrNoBinaries, bin, EnvBinDir)
		}
	}
	// Orphaned control planes' processes died with their test binary
	// (Pdeathsig): only their directories are left to remove.
	dir, err := pdeath.ScratchDir(dirPrefix, nil)
	if err != nil {
		return nil, fmt.Errorf("kubetest: create directory: %w", err)
	}
	cp := &ControlPlane{binDir: bin, dir: dir}
	if err := cp.start(); err != nil {
		_ = cp.Close()
		return nil, err
	}
	return cp, nil
}

func (cp *ControlPlane) start() error {
	if err := os.WriteFile(filepath.Join(cp.dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	tok := make([]byte, 24)
	_, _ = rand.Read(tok)
	cp.token = hex.EncodeToString(tok)
	if err := os.WriteFile(filepath.Join(cp.dir, "tokens.csv"),
		[]byte(cp.token+`,kubetest-admin,kubetest-admin,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	if err := writeServiceAccountKey(cp.dir); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if err := cp.run("etcd",
		"--name=kubetest",
		"--data-dir="+filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn",
	); err != nil {
		return err
	}

	certDir := filepath.Join(cp.dir, "certs")
	cp.host = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	begin := time.Now()
	if err := cp.run("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(ports[2]),
		"--cert-dir="+certDir,
		"--token-auth-file="+filepath.Join(cp.dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(cp.dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(cp.dir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24",
		// No controller-manager makes the `default` ServiceAccount that this
		// plugin insists on for every pod.
		"--disable-admission-plugins=ServiceAccount",
		// Nothing serves the `kubernetes` Service's endpoints here.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=0",
	); err != nil {
		return err
	}
	if err := cp.waitReady(2 * time.Minute); err != nil {
		return err
	}
	cp.Started = time.Since(begin)
	ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
	if err != nil {
		return fmt.Errorf("kubetest: the apiserver's certificate: %w", err)
	}
	cp.caData = ca
	return nil
}

// run starts one of the binaries in its own process group, dying with this
// process, its output in <dir>/<name>.log.
func (cp *ControlPlane) run(name string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(cp.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(cp.binDir, name), args...)
	cmd.Dir = cp.dir
	// TMPDIR carries testmain's scratch directory, by which it finds
	// processes the tests left behind.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + cp.dir, "TMPDIR=" + os.TempDir()}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := pdeath.Start(cmd); err != nil {
		return fmt.Errorf("kubetest: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go watch(p)
	cp.mu.Lock()
	cp.procs = append(cp.procs, p)
	cp.mu.Unlock()
	return nil
}

// watch reaps a process and closes exited when it is gone.
func watch(p *proc) {
	_ = p.cmd.Wait()
	close(p.exited)
}

// waitReady polls /readyz until it answers ok, a process exits, or the
// timeout passes.
func (cp *ControlPlane) waitReady(timeout time.Duration) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, // the self-signed certificate is not written yet
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		req, _ := http.NewRequest(http.MethodGet, cp.host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.token)
		resp, err := client.Do(req)
		if err == nil {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(body.String()))
		} else {
			last = err.Error()
		}
		cp.mu.Lock()
		procs := cp.procs
		cp.mu.Unlock()
		for _, p := range procs {
			select {
			case <-p.exited:
				return fmt.Errorf("kubetest: %s exited at start:\n%s", p.name, cp.logTail(p.name))
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubetest: kube-apiserver not ready after %s (last: %s):\n%s", timeout, last, cp.logTail("kube-apiserver"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Config returns admin (system:masters) credentials for the API server.
func (cp *ControlPlane) Config() *rest.Config {
	return &rest.Config{
		Host:            cp.host,
		BearerToken:     cp.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: append([]byte(nil), cp.caData...)},
		// Tests create objects in bursts; the defaults (5 QPS) would make
		// them wait on the client, not the server.
		QPS:   1000,
		Burst: 2000,
	}
}

// Host returns the API server's URL (https://127.0.0.1:port).
func (cp *ControlPlane) Host() string { return cp.host }

// Kubeconfig writes a kubeconfig file for the admin credentials (for tools
// such as kubectl or helm) into dir and returns its path.
func (cp *ControlPlane) Kubeconfig(dir string) (string, error) {
	path := filepath.Join(dir, "kubeconfig")
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, cp.caData, 0o600); err != nil {
		return "", err
	}
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster: {server: %q, certificate-authority: %q}
users:
- name: admin
  user: {token: %q}
contexts:
- name: kubetest
  context: {cluster: kubetest, user: admin}
current-context: kubetest
`, cp.host, ca, cp.token)
	return path, os.WriteFile(path, []byte(doc), 0o600)
}

// PIDs returns the process ids of etcd and kube-apiserver.
func (cp *ControlPlane) PIDs() map[string]int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := map[string]int{}
	for _, p := range cp.procs {
		out[p.name] = p.cmd.Process.Pid
	}
	return out
}

// Dir returns the control plane's directory (removed by Close).
func (cp *ControlPlane) Dir() string { return cp.dir }

func (cp *ControlPlane) describe() string {
	pids := cp.PIDs()
	return fmt.Sprintf("kube-apiserver %s at %s (ready in %s, %d MiB resident; etcd %d MiB), etcd data in %s",
		Version, cp.host, cp.Started.Round(time.Millisecond), RSS(pids["kube-apiserver"])>>20, RSS(pids["etcd"])>>20, cp.dir)
}

// RSS returns a process's resident memory in bytes (0 if unknown).
func RSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Close kills the processes (the apiserver takes half a minute to stop
// gracefully, and everything it holds is thrown away) and removes the
// directory.
func (cp *ControlPlane) Close() error {
	cp.mu.Lock()
	procs := cp.procs
	cp.procs = nil
	cp.mu.Unlock()
	// The apiserver first, so that it does not log etcd's going.
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		_ = p.cmd.Process.Kill()
	}
	var errs []error
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("kubetest: %s (pid %d) still running 10s after SIGKILL", p.name, p.cmd.Process.Pid))
		}
	}
	errs = append(errs, os.RemoveAll(cp.dir))
	return errors.Join(errs...)
}

func (cp *ControlPlane) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(cp.dir, name+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// writeServiceAccountKey writes the key pair the apiserver signs and checks
// service-account tokens with.
func writeServiceAccountKey(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("kubetest: service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("kubetest: service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("kubetest: service-account key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	return nil
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kubetest: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
