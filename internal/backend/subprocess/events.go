package subprocess

import (
	"context"
	"sync"

	"github.com/september/bap-engine/internal/backend"
)

// hub fans events out to every subscriber. Each subscriber has its own
// unbounded queue, so a slow reader neither blocks the reaper nor loses
// events.
type hub struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

type subscriber struct {
	mu     sync.Mutex
	queue  []backend.Event
	signal chan struct{}
}

func newHub() *hub { return &hub{subs: map[*subscriber]struct{}{}} }

// subscribe delivers events published from now on until ctx or stop ends;
// the returned channel is then closed.
func (h *hub) subscribe(ctx context.Context, stop <-chan struct{}) <-chan backend.Event {
	s := &subscriber{signal: make(chan struct{}, 1)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	out := make(chan backend.Event)
	go func() {
		defer close(out)
		defer func() {
			h.mu.Lock()
			delete(h.subs, s)
			h.mu.Unlock()
		}()
		for {
			s.mu.Lock()
			if len(s.queue) > 0 {
				ev := s.queue[0]
				s.queue = s.queue[1:]
				s.mu.Unlock()
				select {
				case out <- ev:
					continue
				case <-ctx.Done():
					return
				case <-stop:
					return
				}
			}
			s.mu.Unlock()
			select {
			case <-s.signal:
			case <-ctx.Done():
				return
			case <-stop:
				return
			}
		}
	}()
	return out
}

// publish queues ev for every current subscriber.
func (h *hub) publish(ev backend.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		s.mu.Lock()
		s.queue = append(s.queue, ev)
		s.mu.Unlock()
		select {
		case s.signal <- struct{}{}:
		default:
		}
	}
}
