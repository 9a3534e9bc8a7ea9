package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Timing of the live stream.
const (
	// pingEvery keeps an idle stream's connection (and proxies) awake, and
	// is how soon a stream notices that its client left.
	pingEvery = 15 * time.Second
	// retryMS is how soon a browser reconnects a dropped stream.
	retryMS = 3000
	// resolveTimeout bounds the reads that turn one change into an event.
	resolveTimeout = 5 * time.Second
	// subscriberBuffer is how many events a slow stream may lag behind;
	// beyond it events are dropped, and the next one refreshes the page
	// anyway.
	subscriberBuffer = 64
)

// liveEvent is one server-sent event, with who may receive it.
type liveEvent struct {
	name string // "engine" or "fleet"
	data string // JSON
	// productID or slug names the product it concerns; neither set: only
	// admins receive it, unless everyone does.
	productID, slug string
	everyone        bool
}

// subscriber is one open stream.
type subscriber struct {
	productID, slug string // "" for an admin, who receives everything
	ch              chan liveEvent
}

func (s *subscriber) wants(ev liveEvent) bool {
	if s.productID == "" || ev.everyone {
		return true
	}
	return (ev.productID != "" && ev.productID == s.productID) || (ev.slug != "" && ev.slug == s.slug)
}

// feed turns the store's changes into events for the open streams. It runs
// only while someone watches: the first subscriber starts it, the last one
// to leave stops it.
type feed struct {
	base  context.Context
	store registry.Store
	poll  time.Duration
	log   *slog.Logger

	mu   sync.Mutex
	subs map[*subscriber]struct{}
	// live: every change is reported from now on (the store's watch is
	// delivering); a stream is greeted with "hello" only then, so that a
	// page which saw it misses no change after it.
	live bool
	stop context.CancelFunc
	done chan struct{}
}

// helloEvent greets a stream once the feed is live, and again after the
// store's feed was lost and came back (changes in between may have gone
// unreported, so pages refresh).
var helloEvent = liveEvent{name: "hello", data: "{}", everyone: true}

func newFeed(base context.Context, store registry.Store, poll time.Duration, log *slog.Logger) *feed {
	return &feed{base: base, store: store, poll: poll, log: log, subs: map[*subscriber]struct{}{}}
}

// subscribe opens a stream for a viewer (productID "" for an admin); the
// returned function closes it.
func (f *feed) subscribe(productID, slug string) (*subscriber, func()) {
	s := &subscriber{productID: productID, slug: slug, ch: make(chan liveEvent, subscriberBuffer)}
	f.mu.Lock()
	f.subs[s] = struct{}{}
	if f.live {
		s.ch <- helloEvent
	}
	if f.stop == nil {
		ctx, cancel := context.WithCancel(f.base)
		f.stop, f.done = cancel, make(chan struct{})
		go f.run(ctx, f.done)
	}
	f.mu.Unlock()
	return s, func() {
		f.mu.Lock()
		delete(f.subs, s)
		var done chan struct{}
		if len(f.subs) == 0 && f.stop != nil {
			f.stop()
			done = f.done
			f.stop, f.done, f.live = nil, nil, false
		}
		f.mu.Unlock()
		if done != nil {
			<-done
		}
	}
}

// setLive records whether the feed reports every change; turning live
// greets every stream.
func (f *feed) setLive(live bool) {
	f.mu.Lock()
	was := f.live
	f.live = live
	f.mu.Unlock()
	if live && !was {
		f.broadcast(helloEvent)
	}
}

// broadcast hands ev to every stream that may see it, never waiting for a
// slow one.
func (f *feed) broadcast(ev liveEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		if s.wants(ev) {
			select {
			case s.ch <- ev:
			default:
			}
		}
	}
}

// pending collects the ids of changed engines between two passes of run;
// the watch callback only records, since it must not call the store.
type pending struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	live *bool // the last ChangesLive (true) or ChangesLost (false) not yet taken
	wake chan struct{}
}

func (p *pending) add(c registry.Change) {
	p.mu.Lock()
	switch c.Kind {
	case registry.ChangeEngine:
		p.ids[c.ID] = struct{}{}
	case registry.ChangesLive, registry.ChangesLost:
		live := c.Kind == registry.ChangesLive
		p.live = &live
	default:
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pending) take() (ids []string, live *bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.ids {
		ids = append(ids, id)
	}
	clear(p.ids)
	live, p.live = p.live, nil
	return ids, live
}

// run watches the store's change feed (when it has one) and polls the
// counts per product and state, until ctx ends.
func (f *feed) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	p := &pending{ids: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { _ = f.store.WatchChanges(ctx, p.add) })
	t := time.NewTicker(f.poll)
	defer t.Stop()
	var last map[string]map[bap.State]int
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
			ids, live := p.take()
			for _, id := range ids {
				f.engineChanged(ctx, id)
			}
			if live != nil {
				f.setLive(*live)
				last = f.pollCounts(ctx, last)
			}
		case <-t.C:
			last = f.pollCounts(ctx, last)
		}
	}
}

// engineData is the data of an "engine" event.
type engineData struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// engineChanged sends the event of one changed engine to whoever may see
// it. A deleted engine's product is read from its last audit row (its
// destroy).
func (f *feed) engineChanged(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ev := liveEvent{name: "engine"}
	d := engineData{ID: id}
	e, err := f.store.GetEngine(ctx, id)
	switch {
	case err == nil:
		ev.productID, d.State = e.ProductID, string(e.Status)
	case errors.Is(err, registry.ErrNotFound):
		d.State = "destroyed"
		entries, _, aerr := f.store.ListAudit(ctx, registry.AuditFilter{EngineID: id, Limit: 1})
		if aerr == nil && len(entries) > 0 {
			ev.productID = entries[0].ProductID
		}
	default:
		if ctx.Err() == nil {
			f.log.Warn("dashboard live: read changed engine", "engine_id", id, "err", err)
		}
		return
	}
	b, _ := json.Marshal(d)
	ev.data = string(b)
	f.broadcast(ev)
}

// pollCounts reads the counts per product and state and sends a "fleet"
// event for each product whose counts changed since last (none on the
// first poll, which only takes the measure).
func (f *feed) pollCounts(ctx context.Context, last map[string]map[bap.State]int) map[string]map[bap.State]int {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	counts, err := f.store.CountByProductStatus(ctx)
	if err != nil {
		if ctx.Err() == nil {
			f.log.Warn("dashboard live: poll counts", "err", err)
		}
		return last
	}
	if last == nil {
		return counts
	}
	for slug, m := range counts {
		if !maps.Equal(nonZero(m), nonZero(last[slug])) {
			f.broadcast(liveEvent{name: "fleet", data: "{}", slug: slug})
		}
	}
	for slug := range last {
		if _, ok := counts[slug]; !ok {
			f.broadcast(liveEvent{name: "fleet", data: "{}", slug: slug})
		}
	}
	return counts
}

// nonZero drops zero counts, which stores may or may not report.
func nonZero(m map[bap.State]int) map[bap.State]int {
	out := map[bap.State]int{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// events: GET /ui/events, the live stream of the viewer's session. It ends
// when the client leaves, the session ends or the server shuts down.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	v, err := h.viewerOf(r)
	if err != nil || v == nil {
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, "Sign in first.", http.StatusUnauthorized)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no")
	// Each event gets its own write window: the stream outlives the
	// server's limits for as long as the browser reads it.
	st := api.NewStream(w, r)

	sub, unsubscribe := h.feed.subscribe(v.scope(), v.product.Slug)
	defer unsubscribe()
	if _, err := fmt.Fprintf(st, "retry: %d\n\n", retryMS); err != nil {
		return
	}
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case <-h.base.Done():
			return
		case <-v.sess.done:
			return
		case ev := <-sub.ch:
			_, err = fmt.Fprintf(st, "event: %s\ndata: %s\n\n", ev.name, ev.data)
		case <-ping.C:
			if pv, verr := h.viewerOf(r); verr == nil && pv == nil {
				return // a product session whose key stopped working
			}
			_, err = fmt.Fprint(st, ": ping\n\n")
		}
		if err != nil {
			return
		}
	}
}
