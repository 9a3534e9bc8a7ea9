package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progressLine reports a long client operation on stderr, naming its current
// phase (creating, waiting for health, snapshotting…). On a terminal it
// redraws one line with \r and the elapsed seconds; anywhere else (a pipe, a
// log file, CI) it prints one whole line per phase and a final line, never \r.
type progressLine struct {
	w    io.Writer
	what string
	tty  bool

	mu      sync.Mutex
	current string
	began   time.Time
	stop    chan struct{}
	stopped chan struct{}
}

// startProgress begins reporting what (e.g. "provision alice") in phase. A
// nil w reports nothing.
func startProgress(w io.Writer, what, phase string) *progressLine {
	p := &progressLine{w: w, what: what, tty: isTerminal(w), began: time.Now(),
		stop: make(chan struct{}), stopped: make(chan struct{})}
	if w == nil {
		close(p.stopped)
		return p
	}
	p.phase(phase)
	if !p.tty {
		close(p.stopped)
		return p
	}
	go func() {
		defer close(p.stopped)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.mu.Lock()
				p.draw()
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// phase moves the report to a new phase.
func (p *progressLine) phase(name string) {
	if p.w == nil || name == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if name == p.current {
		return
	}
	p.current = name
	if p.tty {
		p.draw()
		return
	}
	fmt.Fprintf(p.w, "%s: %s…\n", p.what, name)
}

// draw redraws the terminal line; p.mu is held.
func (p *progressLine) draw() {
	fmt.Fprintf(p.w, "\r\033[K%s: %s… %ds", p.what, p.current, int(time.Since(p.began).Seconds()))
}

// done ends the report with the outcome and the elapsed time.
func (p *progressLine) done(err error) {
	if p.w == nil {
		return
	}
	select {
	case <-p.stopped:
	default:
		close(p.stop)
		<-p.stopped
	}
	result := "done"
	if err != nil {
		result = "failed"
	}
	prefix := ""
	if p.tty {
		prefix = "\r\033[K"
	}
	fmt.Fprintf(p.w, "%s%s: %s in %s\n", prefix, p.what, result, time.Since(p.began).Round(100*time.Millisecond))
}
