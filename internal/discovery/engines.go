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

// put keeps e if it is running and no change was seen since gen. A read
// that found the user's engine in another state, or none (e nil), drops
// what was kept: it is the newer word.
func (c *engineCache) put(gen uint64, productID, userID string, e *bap.Engine, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e == nil || e.Status != bap.StateRunning {
		c.drop(userKey{productID, userID})
		return
	}
	if !c.live || c.gen != gen {
		return
	}
	if len(c.byUser) >= maxCachedEngines {
		clear(c.byUser)
		clear(c.byID)
	}
	k := userKey{productID, userID}
	c.drop(k)
	c.byUser[k] = cachedEngine{e: *e, until: now.Add(c.ttl)}
	c.byID[e.ID] = k
}

// drop forgets the engine kept for k; c.mu must be held.
func (c *engineCache) drop(k userKey) {
	if old, ok := c.byUser[k]; ok {
		delete(c.byID, old.e.ID)
		delete(c.byUser, k)
	}
}

// change applies a report of the store's change feed.
func (c *engineCache) change(ch registry.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	switch ch.Kind {
	case registry.ChangeEngine:
		if k, ok := c.byID[ch.ID]; ok {
			c.drop(k)
		}
	case registry.ChangesLive, registry.ChangesLost:
		clear(c.byUser)
		clear(c.byID)
		c.live = ch.Kind == registry.ChangesLive
	}
}

// size is how many engines are kept.
func (c *engineCache) size() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.byUser)
}

// unchangedSince reports whether no change was seen since gen.
func (c *engineCache) unchangedSince(gen uint64) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen == gen
}
