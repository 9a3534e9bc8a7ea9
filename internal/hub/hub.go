// Package hub fans published values out to subscribers, in process. It is
// the one fan-out the module has: the stores' change feed (registry.Change)
// and the backends' instance events (backend.Event) are both a Hub.
//
// A subscriber is either a function, called for each value before Publish
// returns (the change feed needs that: a write is reported before the
// method that made it returns), or a stream, a channel fed from a queue of
// its own, so that a slow reader neither blocks the publisher nor loses
// values (backend events).
//
// hub is a utility leaf: it imports nothing of the module, so that leaves
// such as backend may use it.
package hub

import (
	"context"
	"sync"
)

// Hub fans values of type T out to its subscribers. The zero value is ready
// to use.
type Hub[T any] struct {
	mu   sync.RWMutex
	next int
	subs map[int]func(T)
}

// Subscribe adds fn, to be called with every value published from now on,
// in order. fn must be quick and must not call back into the Hub. The
// returned function removes it.
func (h *Hub[T]) Subscribe(fn func(T)) (unsubscribe func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[int]func(T){}
	}
	id := h.next
	h.next++
	h.subs[id] = fn
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs, id)
	}
}

// Publish calls every subscribed function with each value, in order, and
// returns when they have.
func (h *Hub[T]) Publish(values ...T) {
	if len(values) == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, fn := range h.subs {
		for _, v := range values {
			fn(v)
		}
	}
}

// Stream delivers the values published from now on, on a channel of its own
// with an unbounded queue behind it, until ctx ends or stop is closed; the
// channel is then closed.
func (h *Hub[T]) Stream(ctx context.Context, stop <-chan struct{}) <-chan T {
	var (
		mu     sync.Mutex
		queue  []T
		signal = make(chan struct{}, 1)
	)
	unsubscribe := h.Subscribe(func(v T) {
		mu.Lock()
		queue = append(queue, v)
		mu.Unlock()
		select {
		case signal <- struct{}{}:
		default:
		}
	})
	out := make(chan T)
	go func() {
		defer close(out)
		defer unsubscribe()
		for {
			mu.Lock()
			if len(queue) == 0 {
				mu.Unlock()
				select {
				case <-signal:
					continue
				case <-ctx.Done():
					return
				case <-stop:
					return
				}
			}
			v := queue[0]
			var zero T
			queue[0] = zero
			queue = queue[1:]
			mu.Unlock()
			select {
			case out <- v:
			case <-ctx.Done():
				return
			case <-stop:
				return
			}
		}
	}()
	return out
}
