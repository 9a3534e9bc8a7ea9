package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// Auth headers (SPEC §2).
const (
	HeaderPlatformKey = "X-Platform-Key"
	HeaderAdminKey    = "X-Admin-Key"
)

// authPlatform authenticates the calling product: the SHA-256 of
// X-Platform-Key is looked up among current keys and previous keys still in
// their grace period.
func (s *server) authPlatform(r *http.Request) (bap.Product, error) {
	key := r.Header.Get(HeaderPlatformKey)
	if key == "" {
		return bap.Product{}, bap.Errorf(bap.CodeInvalidPlatformKey, msgInvalidPlatformKey)
	}
	h := secret.Hash(key)
	p, err := s.store.GetProductByKeyHash(r.Context(), h, bap.Timestamp(s.now()))
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Product{}, bap.Errorf(bap.CodeInvalidPlatformKey, msgInvalidPlatformKey)
	}
	if err != nil {
		return bap.Product{}, fmt.Errorf("authenticate product: %w", err)
	}
	// The store matched by hash; confirm in constant time that it is one of
	// the product's hashes, so a store bug can never admit another key.
	if !secret.Equal(h, p.APIKeyHash) && (p.PrevAPIKeyHash == "" || !secret.Equal(h, p.PrevAPIKeyHash)) {
		return bap.Product{}, bap.Errorf(bap.CodeInvalidPlatformKey, msgInvalidPlatformKey)
	}
	setProduct(r.Context(), p.Slug)
	return p, nil
}

// authAdmin checks X-Admin-Key against ORCH_ADMIN_KEY in constant time.
func (s *server) authAdmin(r *http.Request) error {
	key := r.Header.Get(HeaderAdminKey)
	if key == "" || !secret.Equal(key, s.adminKey) {
		return bap.Errorf(bap.CodeInvalidAdminKey, msgInvalidAdminKey)
	}
	setProduct(r.Context(), "admin")
	return nil
}

// authMetrics lets a Prometheus scraper in with the admin key, or with
// Authorization: Bearer <ORCH_METRICS_TOKEN> when that is set, so it need
// not hold the admin key. A wrong token is INVALID_ADMIN_KEY, as on every
// admin route.
func (s *server) authMetrics(r *http.Request) error {
	if s.metricsToken != "" {
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok != "" {
			if secret.Equal(strings.TrimSpace(tok), s.metricsToken) {
				setProduct(r.Context(), "metrics")
				return nil
			}
			return bap.Errorf(bap.CodeInvalidAdminKey, msgInvalidAdminKey)
		}
	}
	return s.authAdmin(r)
}
