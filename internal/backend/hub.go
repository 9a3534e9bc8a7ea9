package backend

import (
	"context"
	"sync"
)

// Hub fans instance events out to every subscriber, for implementations of
// Backend.Events. Each subscriber has its own unbounded queue, so a slow
// reader neither blocks the publisher nor loses events.
type Hub struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

type subscriber struct {
	mu     sync.Mutex
	queue  []Event
	signal chan struct{}
}

// NewHub returns an empty Hub.
func NewHub() *Hub { return &Hub{subs: map[*subscriber]struct{}{}} }

// Subscribe delivers events published from now on until ctx or stop ends;
// the returned channel is then closed.
func (h *Hub) Subscribe(ctx context.Context, stop <-chan struct{}) <-chan Event {
	s := &subscriber{signal: make(chan struct{}, 1)}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	out := make(chan Event)
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

// Publish queues ev for every current subscriber.
func (h *Hub) Publish(ev Event) {
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
