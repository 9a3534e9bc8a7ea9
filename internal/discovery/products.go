package discovery

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// maxProducts bounds the product cache; past it the cache is emptied and
// refills with the products in use.
const maxProducts = 4096

// lookup authenticates keyHash and finds the product's engine for userID.
// A product seen within ProductTTL whose running engine is in the engine
// cache costs no round trip; a product seen within ProductTTL costs one
// point-select of the engine; otherwise one query (AdmitLookup) does both.
// What it reads is cached unless a change was reported meanwhile.
func (s *Service) lookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	gen, cacheOn := s.engines.generation()
	if s.cfg.ProductTTL > 0 {
		if p, ok := s.products.get(keyHash, now); ok {
			if cacheOn {
				if e, ok := s.engines.get(p.ID, userID, now); ok {
					s.hits.Add(1)
					return p, &e, nil
				}
			}
			s.reads.Add(1)
			e, err := s.store.GetEngineByUser(ctx, p.ID, userID)
			if errors.Is(err, registry.ErrNotFound) {
				s.engines.put(gen, p.ID, userID, nil, now)
				return p, nil, nil
			}
			if err != nil {
				return bap.Product{}, nil, err
			}
			s.engines.put(gen, p.ID, userID, &e, now)
			return p, &e, nil
		}
	}
	s.reads.Add(1)
	p, e, err := s.store.AdmitLookup(ctx, keyHash, userID, now)
	if err != nil {
		return p, e, err
	}
	if s.cfg.ProductTTL > 0 {
		s.products.put(keyHash, p, now, s.cfg.ProductTTL, func() bool { return s.engines.unchangedSince(gen) })
	}
	s.engines.put(gen, p.ID, userID, e, now)
	return p, e, nil
}

// CacheStats describes the admit caches: whether the engine cache is on,
// how many engines it holds, and how many lookups were served from memory
// (Hits) or read the database (Reads) since New.
type CacheStats struct {
	Live        bool
	Engines     int
	Hits, Reads uint64
}

// CacheStats returns the admit caches' state.
func (s *Service) CacheStats() CacheStats {
	return CacheStats{Live: s.EngineCacheLive(), Engines: s.engines.size(), Hits: s.hits.Load(), Reads: s.reads.Load()}
}

// ForgetProduct drops a product from the admit cache; the API calls it after
// changing the product's policy or keys, so the change applies to this
// process's next admit even with a store that reports no changes.
func (s *Service) ForgetProduct(productID string) { s.products.forget(productID) }

// productCache maps platform key hashes to authenticated products.
type productCache struct {
	mu sync.RWMutex
	m  map[string]cachedProduct
}

type cachedProduct struct {
	p     bap.Product
	until time.Time
}

func newProductCache() *productCache { return &productCache{m: map[string]cachedProduct{}} }

func (c *productCache) get(keyHash string, now time.Time) (bap.Product, bool) {
	c.mu.RLock()
	cp, ok := c.m[keyHash]
	c.mu.RUnlock()
	if !ok || !now.Before(cp.until) {
		return bap.Product{}, false
	}
	return cp.p, true
}

// put caches p for ttl, and never past the end of the grace of a previous
// key that keyHash authenticated. unchanged is checked under the cache's
// lock: a change reported after the read that found p forgets it after
// taking that lock, so p is either refused here or forgotten then.
func (c *productCache) put(keyHash string, p bap.Product, now time.Time, ttl time.Duration, unchanged func() bool) {
	until := now.Add(ttl)
	if keyHash != p.APIKeyHash && p.PrevKeyExpiresAt != nil && p.PrevKeyExpiresAt.Before(until) {
		until = *p.PrevKeyExpiresAt
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !unchanged() {
		return
	}
	if len(c.m) >= maxProducts {
		clear(c.m)
	}
	c.m[keyHash] = cachedProduct{p: p, until: until}
}

func (c *productCache) forget(productID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h, cp := range c.m {
		if cp.p.ID == productID {
			delete(c.m, h)
		}
	}
}

func (c *productCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}
