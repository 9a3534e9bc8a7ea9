package subprocess

import (
	"path/filepath"
	"syscall"
	"time"
)

// current returns the engine's live process, or nil. It adopts a process
// left by an earlier orchestrator when the pid file's identity checks out.
func (b *Backend) current(engineID string) *proc {
	b.mu.Lock()
	p := b.procs[engineID]
	b.mu.Unlock()
	if p != nil {
		if p.alive() {
			return p
		}
		// An adopted process that is gone is dropped; a gone child's record
		// stays for its exit code. Either way the pid file may name a newer
		// process (spawned by another orchestrator instance).
		if !p.child {
			b.forget(engineID, p)
		}
	}
	var pf pidFile
	if err := readJSON(filepath.Join(b.dir(engineID), pidFileName), &pf); err != nil || pf.Exited ||
		!isEngine(pf.Pid, pf.StartTicks, engineID) {
		return b.adoptStray(engineID)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if known := b.procs[engineID]; known != nil && known.pid == pf.Pid && known.startTicks == pf.StartTicks {
		return known
	}
	p = newProc(engineID, pf.Pid, pf.StartTicks, false, b.hub.Publish)
	b.procs[engineID] = p
	b.startPollerLocked()
	return p
}

// strayScanAge is how long one scan of /proc for unrecorded engine
// processes is reused (List looks at every engine at once).
const strayScanAge = time.Second

// adoptStray adopts a live process of the engine that no pid file names (its
// orchestrator died between spawning it and recording it) and records it,
// so that stopping or destroying the engine ends it too. Extra ones, which
// nothing should ever leave, are killed. It returns nil when there is none.
func (b *Backend) adoptStray(engineID string) *proc {
	b.scanMu.Lock()
	if time.Since(b.scannedAt) > strayScanAge {
		b.scanned, b.scannedAt = engineProcs(b.cfg.DataRoot), time.Now()
	}
	pids := b.scanned[engineID]
	b.scanMu.Unlock()
	var found *proc
	for _, pid := range pids {
		st, err := readProcStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' || !isEngine(pid, st.startTicks, engineID) {
			continue
		}
		if found != nil {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			continue
		}
		found = newProc(engineID, pid, st.startTicks, false, b.hub.Publish)
	}
	if found == nil {
		return nil
	}
	// Without a data dir (destroyed under it) there is nothing to record it
	// in; the process is still returned, for the destroy to end it.
	b.fileMu(engineID).Lock()
	_ = writeJSON(filepath.Join(b.dir(engineID), pidFileName),
		pidFile{Pid: found.pid, StartTicks: found.startTicks, StartedAt: time.Now().UTC()})
	b.fileMu(engineID).Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.procs[engineID] = found
	b.startPollerLocked()
	return found
}

// forget drops p from the table if it is still the engine's entry.
func (b *Backend) forget(engineID string, p *proc) {
	b.mu.Lock()
	if b.procs[engineID] == p {
		delete(b.procs, engineID)
	}
	b.mu.Unlock()
}

// startPollerLocked starts the goroutine that watches adopted processes,
// once. Caller holds b.mu.
func (b *Backend) startPollerLocked() {
	if b.polling {
		return
	}
	select {
	case <-b.closed:
		return
	default:
	}
	b.polling = true
	b.poller.Add(1)
	go b.poll()
}

// poll reports adopted processes that disappear without being asked to.
func (b *Backend) poll() {
	defer b.poller.Done()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-b.closed:
			return
		case <-t.C:
		}
		b.mu.Lock()
		var adopted []*proc
		for _, p := range b.procs {
			if !p.child && !p.exited() {
				adopted = append(adopted, p)
			}
		}
		b.mu.Unlock()
		for _, p := range adopted {
			// alive re-verifies the identity and reports a disappearance.
			if !p.alive() {
				b.forget(p.engineID, p)
			}
		}
	}
}

// markExited records an exit in the pid file, unless the file already
// describes another process or the Backend is closed (its files may belong
// to another orchestrator instance by then).
func (b *Backend) markExited(engineID string, p *proc, code int) {
	select {
	case <-b.closed:
		return
	default:
	}
	b.fileMu(engineID).Lock()
	defer b.fileMu(engineID).Unlock()
	path := filepath.Join(b.dir(engineID), pidFileName)
	var pf pidFile
	if err := readJSON(path, &pf); err != nil || pf.Pid != p.pid || pf.StartTicks != p.startTicks || pf.Exited {
		return
	}
	now := time.Now().UTC()
	pf.Exited, pf.ExitCode, pf.ExitedAt = true, code, &now
	// The data dir may be gone (Destroy); the record is then moot.
	_ = writeJSON(path, pf)
}
