package api

import (
	"cmp"
	"context"
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
	req, err := readRequest(s, w, r, decodeRegister)
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
	id, err := s.productID(r)
	if err != nil {
		return err
	}
	pol, err := readRequest(s, w, r, decodePolicyUpdate)
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
	id, err := s.productID(r)
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

// productID reads the product named in the path ({product_id} or
// {product}) and returns its id: the id itself, or the product whose slug it
// is. A name that is neither is 404 PRODUCT_NOT_FOUND.
func (s *server) productID(r *http.Request) (string, error) {
	p, err := s.productNamed(r.Context(), cmp.Or(r.PathValue("product_id"), r.PathValue("product")))
	return p.ID, err
}

// productNamed returns the product whose id or slug is name: a UUID is
// looked up as an id first (a slug may be shaped like one), anything a slug
// may be as a slug.
func (s *server) productNamed(ctx context.Context, name string) (bap.Product, error) {
	err := registry.ErrNotFound
	var p bap.Product
	if u, perr := uuid.Parse(name); perr == nil && len(name) == 36 {
		p, err = s.store.GetProduct(ctx, u.String())
	}
	if errors.Is(err, registry.ErrNotFound) && slugPattern.MatchString(name) {
		p, err = s.store.GetProductBySlug(ctx, name)
	}
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Product{}, bap.Errorf(bap.CodeProductNotFound, msgProductNotFound)
	}
	if err != nil {
		return bap.Product{}, fmt.Errorf("read product: %w", err)
	}
	return p, nil
}

// policyMap is the policy as an audit metadata value.
func policyMap(p bap.Policy) map[string]any {
	m := map[string]any{}
	_ = json.Unmarshal(p.JSON(), &m)
	return m
}

// productInfo is a product as GET /products and GET /products/{product}
// show it: never its key or key hash.
type productInfo struct {
	ProductID       string          `json:"product_id"`
	Slug            string          `json:"slug"`
	DisplayName     string          `json:"display_name"`
	Policy          json.RawMessage `json:"policy"`
	CreatedAt       string          `json:"created_at"`
	EnginesByStatus map[string]int  `json:"engines_by_status"`
}

type productsResponse struct {
	Products []productInfo `json:"products"`
	Total    int           `json:"total"`
}

func toProductInfo(p bap.Product, counts map[bap.State]int) productInfo {
	by := make(map[string]int, len(bap.States))
	for _, st := range bap.States {
		by[string(st)] = counts[st]
	}
	return productInfo{
		ProductID: p.ID, Slug: p.Slug, DisplayName: p.DisplayName, Policy: p.Policy.JSON(),
		CreatedAt: bap.FormatTime(p.CreatedAt), EnginesByStatus: by,
	}
}

// listProducts: GET /products (admin key), ordered by slug, each with its
// engines counted by state (every state named, 0 when none).
func (s *server) listProducts(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	ps, err := s.store.ListProducts(r.Context())
	if err != nil {
		return fmt.Errorf("list products: %w", err)
	}
	counts, err := s.store.CountByProductStatus(r.Context())
	if err != nil {
		return fmt.Errorf("count engines: %w", err)
	}
	out := productsResponse{Products: make([]productInfo, 0, len(ps)), Total: len(ps)}
	for _, p := range ps {
		out.Products = append(out.Products, toProductInfo(p, counts[p.Slug]))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// getProduct: GET /products/{product} (admin key), by id or slug.
func (s *server) getProduct(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	p, err := s.productNamed(r.Context(), r.PathValue("product"))
	if err != nil {
		return err
	}
	counts, err := s.store.CountByStatus(r.Context(), p.ID)
	if err != nil {
		return fmt.Errorf("count engines: %w", err)
	}
	writeJSON(w, http.StatusOK, toProductInfo(p, counts))
	return nil
}
