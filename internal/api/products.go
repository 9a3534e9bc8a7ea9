package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

type registerResponse struct {
	ProductID      string `json:"product_id"`
	Slug           string `json:"slug"`
	PlatformAPIKey string `json:"platform_api_key"`
}

// registerProduct: POST /products/register. The plaintext key is answered
// once; only its hash is stored.
func (s *server) registerProduct(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	b, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	req, err := decodeRegister(b)
	if err != nil {
		return err
	}
	key, err := secret.NewPlatformKey()
	if err != nil {
		return err
	}
	p := bap.Product{
		ID:          uuid.NewString(),
		Slug:        req.Slug,
		DisplayName: req.DisplayName,
		APIKeyHash:  secret.Hash(key),
		Policy:      req.Policy,
		CreatedAt:   bap.Timestamp(s.now()),
	}
	err = s.store.CreateProduct(r.Context(), p, audit.Entry{
		ProductID: p.ID,
		Action:    audit.PolicyRegister,
		Actor:     audit.ActorAdmin,
		Metadata:  map[string]any{"slug": p.Slug, "display_name": p.DisplayName, "policy": policyMap(p.Policy)},
	})
	if errors.Is(err, registry.ErrConflict) {
		return bap.Errorf(bap.CodeProductSlugExists, "A product with slug %q already exists.", p.Slug)
	}
	if err != nil {
		return fmt.Errorf("create product: %w", err)
	}
	loggerFrom(r.Context(), s.log).Info("product registered", "product_id", p.ID, "slug", p.Slug)
	writeJSON(w, http.StatusOK, registerResponse{ProductID: p.ID, Slug: p.Slug, PlatformAPIKey: key})
	return nil
}

type policyResponse struct {
	Policy json.RawMessage `json:"policy"`
}

// updatePolicy: PUT /products/{product_id}/policy replaces the policy.
func (s *server) updatePolicy(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	id, err := productID(r)
	if err != nil {
		return err
	}
	b, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	pol, err := decodePolicyUpdate(b)
	if err != nil {
		return err
	}
	p, err := s.store.UpdatePolicy(r.Context(), id, pol, audit.Entry{
		ProductID: id,
		Action:    audit.PolicyUpdate,
		Actor:     audit.ActorAdmin,
		Metadata:  map[string]any{"policy": policyMap(pol)},
	})
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Errorf(bap.CodeProductNotFound, msgProductNotFound)
	}
	if err != nil {
		return fmt.Errorf("update policy: %w", err)
	}
	s.discovery.ForgetProduct(id)
	writeJSON(w, http.StatusOK, policyResponse{Policy: p.Policy.JSON()})
	return nil
}

type rotatePlatformKeyResponse struct {
	ProductID            string `json:"product_id"`
	PlatformAPIKey       string `json:"platform_api_key"`
	PreviousKeyExpiresAt string `json:"previous_key_expires_at"`
}

// rotatePlatformKey: POST /products/{product_id}/rotate-platform-key. The
// new key is answered once; the old one authenticates until the grace
// period ends.
func (s *server) rotatePlatformKey(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	id, err := productID(r)
	if err != nil {
		return err
	}
	key, err := secret.NewPlatformKey()
	if err != nil {
		return err
	}
	until := bap.Timestamp(s.now().Add(s.grace))
	err = s.store.RotateProductKey(r.Context(), id, secret.Hash(key), until, audit.Entry{
		ProductID: id,
		Action:    audit.PlatformKeyRotated,
		Actor:     audit.ActorAdmin,
		Metadata:  map[string]any{"grace_s": s.grace.Seconds(), "previous_key_expires_at": bap.FormatTime(until)},
	})
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Errorf(bap.CodeProductNotFound, msgProductNotFound)
	}
	if err != nil {
		return fmt.Errorf("rotate platform key: %w", err)
	}
	s.discovery.ForgetProduct(id)
	loggerFrom(r.Context(), s.log).Info("platform key rotated", "product_id", id)
	writeJSON(w, http.StatusOK, rotatePlatformKeyResponse{
		ProductID:            id,
		PlatformAPIKey:       key,
		PreviousKeyExpiresAt: bap.FormatTime(until),
	})
	return nil
}

// productID reads the {product_id} path parameter. Product ids are UUIDs;
// anything else names no product (404, never a database error).
func productID(r *http.Request) (string, error) {
	u, err := uuid.Parse(r.PathValue("product_id"))
	if err != nil {
		return "", bap.Errorf(bap.CodeProductNotFound, msgProductNotFound)
	}
	return u.String(), nil
}

// policyMap is the policy as an audit metadata value.
func policyMap(p bap.Policy) map[string]any {
	m := map[string]any{}
	_ = json.Unmarshal(p.JSON(), &m)
	return m
}
