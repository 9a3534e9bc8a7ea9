package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/september/bap-engine/internal/backend"
)

// lastLogBytes bounds the log of a Pod kept when the backend deletes it.
const lastLogBytes = 1 << 20

// Logs streams the engine Pod's log (pods/log). A Pod's log goes with the
// Pod, so when this process deletes one (stop, sleep, remove) it keeps the
// last MiB of it first, and Logs answers with that while the engine has no
// Pod: a stopped engine's log stays readable from the replica that stopped
// it until that replica restarts (durable logs are the cluster's log
// collection's job). ErrNotFound when there is neither.
func (b *Backend) Logs(ctx context.Context, engineID string, opts backend.LogOptions) (io.ReadCloser, error) {
	pod, err := b.getPod(ctx, engineID)
	if err != nil {
		return nil, err
	}
	if pod == nil || !b.ours(pod.Labels, engineID) || !everRan(pod) {
		b.mu.Lock()
		last, ok := b.lastLogs[engineID]
		b.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("logs of engine %s: %w: it has no pod", engineID, backend.ErrNotFound)
		}
		return io.NopCloser(bytes.NewReader(tailLines(last, opts.Tail))), nil
	}
	lo := &corev1.PodLogOptions{Container: containerName, Follow: opts.Follow}
	if opts.Tail > 0 {
		lo.TailLines = ptr(int64(opts.Tail))
	}
	rc, err := b.cs.CoreV1().Pods(b.cfg.Namespace).GetLogs(pod.Name, lo).Stream(ctx)
	if err != nil {
		return nil, wrap(err, "logs of pod %s", pod.Name)
	}
	return rc, nil
}

// keepLog saves the last MiB of a Pod's log before the Pod is deleted.
func (b *Backend) keepLog(ctx context.Context, pod *corev1.Pod) {
	if !everRan(pod) {
		return
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	rc, err := b.cs.CoreV1().Pods(b.cfg.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{
		Container: containerName, LimitBytes: ptr(int64(4 * lastLogBytes)),
	}).Stream(cctx)
	if err != nil {
		b.cfg.Logger.Debug("keep the log of a pod", "pod", pod.Name, "err", err)
		return
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	if len(data) > lastLogBytes {
		data = data[len(data)-lastLogBytes:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	b.mu.Lock()
	b.lastLogs[pod.Labels[backend.LabelEngineID]] = data
	b.mu.Unlock()
}

// tailLines is the last n lines of data (all when n <= 0).
func tailLines(data []byte, n int) []byte {
	if n <= 0 {
		return data
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), lastLogBytes)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// everRan reports whether the Pod's engine container was ever started.
func everRan(p *corev1.Pod) bool {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil {
			return true
		}
	}
	return false
}
