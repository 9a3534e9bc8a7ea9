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
// A product seen within ProductTTL costs one point-select of the engine;
// otherwise one query (AdmitLookup) does both and the product is cached.
func (s *Service) lookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error) {
	if s.cfg.ProductTTL > 0 {
		if p, ok := s.products.get(keyHash, now); ok {
			e, err := s.store.GetEngineByUser(ctx, p.ID, userID)
			if errors.Is(err, registry.ErrNotFound) {
				return p, nil, nil
			}
			if err != nil {
				return bap.Product{}, nil, err
			}
			return p, &e, nil
		}
	}
	p, e, err := s.store.AdmitLookup(ctx, keyHash, userID, now)
	if err == nil && s.cfg.ProductTTL > 0 {
		s.products.put(keyHash, p, now, s.cfg.ProductTTL)
	}
	return p, e, err
}

// ForgetProduct drops a product from the admit cache; the API calls it after
// changing the product's policy or keys, so the change applies to this
// process's next admit.
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
// key that keyHash authenticated.
func (c *productCache) put(keyHash string, p bap.Product, now time.Time, ttl time.Duration) {
	until := now.Add(ttl)
	if keyHash != p.APIKeyHash && p.PrevKeyExpiresAt != nil && p.PrevKeyExpiresAt.Before(until) {
		until = *p.PrevKeyExpiresAt
	}
	c.mu.Lock()
	defer c.mu.Unlock()
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
