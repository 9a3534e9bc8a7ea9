package kubetest

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serveLogs answers GET /containerLogs/<namespace>/<pod>/<container> with
// tailLines, limitBytes and follow, as a kubelet does.
func (n *Node) serveLogs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 || parts[0] != n.cfg.Namespace {
		http.NotFound(w, r)
		return
	}
	n.mu.Lock()
	var p *podProc
	for _, q := range n.procs {
		if q.name == parts[1] && (p == nil || q.started.After(p.started)) {
			p = q
		}
	}
	n.mu.Unlock()
	if p == nil {
		http.Error(w, "container not found", http.StatusNotFound)
		return
	}
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	off := int64(len(data))
	if v := r.URL.Query().Get("tailLines"); v != "" {
		if k, err := strconv.Atoi(v); err == nil && k >= 0 {
			lines := strings.SplitAfter(string(data), "\n")
			if lines[len(lines)-1] == "" {
				lines = lines[:len(lines)-1]
			}
			if len(lines) > k {
				lines = lines[len(lines)-k:]
			}
			data = []byte(strings.Join(lines, ""))
		}
	}
	if v := r.URL.Query().Get("limitBytes"); v != "" {
		if k, err := strconv.Atoi(v); err == nil && k >= 0 && len(data) > k {
			data = data[:k]
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write(data)
	if r.URL.Query().Get("follow") != "true" {
		return
	}
	fl, _ := w.(http.Flusher)
	for {
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-n.stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
		f, err := os.Open(p.logPath)
		if err != nil {
			return
		}
		st, _ := f.Stat()
		if st != nil && st.Size() > off {
			buf := make([]byte, st.Size()-off)
			k, _ := f.ReadAt(buf, off)
			off += int64(k)
			_, _ = w.Write(buf[:k])
		}
		f.Close()
		if isDone(p.done) && (st == nil || st.Size() <= off) {
			return
		}
	}
}

// SetUnpullable makes Pods of image wait with ErrImagePull, as a kubelet
// does when the registry has no such image.
func (n *Node) SetUnpullable(image string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.unpullable[image] = true
}

// Kill sends SIGKILL to the engine of the named Pod, from outside, as a
// crash or the OOM killer would; the node then reports the Pod Failed.
func (n *Node) Kill(podName string) error {
	n.mu.Lock()
	var pid int
	for _, p := range n.procs {
		if p.name == podName && !isDone(p.done) {
			pid = p.pid
		}
	}
	n.mu.Unlock()
	if pid == 0 {
		return fmt.Errorf("kubetest: no running engine for pod %s", podName)
	}
	return syscall.Kill(-pid, syscall.SIGKILL)
}

// Running is how many engine processes the node runs now.
func (n *Node) Running() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, p := range n.procs {
		if !isDone(p.done) {
			c++
		}
	}
	return c
}

// Close stops the node and kills every engine it runs (SIGKILL), waiting
// for them to be gone. Pods keep their last status on the API server.
func (n *Node) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	procs := make([]*podProc, 0, len(n.procs))
	for _, p := range n.procs {
		procs = append(procs, p)
	}
	n.mu.Unlock()
	close(n.stop)
	n.queue.ShutDown()
	if n.srv != nil {
		n.srv.Close()
	}
	// No process starts once closed is set; kill those that run, then wait
	// for the workers and reapers.
	for _, p := range procs {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
	n.wg.Wait()
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
