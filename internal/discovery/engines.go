package discovery

import (
	"sync"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// maxCachedEngines bounds the engine cache; past it the cache is emptied
// and refills with the engines in use.
const maxCachedEngines = 100_000

// engineCache keeps the running engines that admits found, so that the next
// admit of the same engine needs no database round trip. It is used only
// while the store's change feed is live (registry.Watcher): every change to
// an engine's status, address or keys, by this process or another, drops
// the engine before anyone can be admitted to it again, and losing the feed
// empties the cache and turns it off until the feed is back.
//
// A read that raced with a change must not refill the cache with what it
// read before the change: gen counts the changes seen, and put only keeps a
// row read entirely after the last one (the caller takes gen before it
// reads).
type engineCache struct {
	ttl time.Duration

	mu     sync.RWMutex
	live   bool
	gen    uint64
	byUser map[userKey]cachedEngine
	byID   map[string]userKey
}

type userKey struct{ productID, userID string }

type cachedEngine struct {
	e     bap.Engine
	until time.Time
}

func newEngineCache(ttl time.Duration) *engineCache {
	return &engineCache{ttl: ttl, byUser: map[userKey]cachedEngine{}, byID: map[string]userKey{}}
}

// get returns the cached running engine of the product's user.
func (c *engineCache) get(productID, userID string, now time.Time) (bap.Engine, bool) {
	c.mu.RLock()
	ce, ok := c.byUser[userKey{productID, userID}]
	live := c.live
	c.mu.RUnlock()
	if !ok || !live || !now.Before(ce.until) {
		return bap.Engine{}, false
	}
	return ce.e, true
}

// generation is the count of changes seen, to give put; ok is false when
// the cache is off.
func (c *engineCache) generation() (gen uint64, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen, c.live
}

// put keeps e if it is running and no change was seen since gen.
func (c *engineCache) put(gen uint64, e bap.Engine, now time.Time) {
	if e.Status != bap.StateRunning {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || c.gen != gen {
		return
	}
	if len(c.byUser) >= maxCachedEngines {
		clear(c.byUser)
		clear(c.byID)
	}
	k := userKey{e.ProductID, e.UserID}
	if old, ok := c.byUser[k]; ok && old.e.ID != e.ID {
		delete(c.byID, old.e.ID)
	}
	c.byUser[k] = cachedEngine{e: e, until: now.Add(c.ttl)}
	c.byID[e.ID] = k
}

// change applies a report of the store's change feed.
func (c *engineCache) change(ch registry.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	switch ch.Kind {
	case registry.ChangeEngine:
		if k, ok := c.byID[ch.ID]; ok {
			delete(c.byUser, k)
			delete(c.byID, ch.ID)
		}
	case registry.ChangesLive, registry.ChangesLost:
		clear(c.byUser)
		clear(c.byID)
		c.live = ch.Kind == registry.ChangesLive
	}
}

// unchangedSince reports whether no change was seen since gen.
func (c *engineCache) unchangedSince(gen uint64) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen == gen
}
