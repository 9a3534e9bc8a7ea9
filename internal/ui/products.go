package ui

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// productsView is the body of the products page.
type productsView struct {
	Products []productRow
}

// productsPage: GET /ui/products.
func (h *Handler) productsPage(w http.ResponseWriter, r *http.Request, v *viewer) error {
	rows, err := h.productRows(r, v)
	if err != nil {
		return err
	}
	h.render(w, r, v, http.StatusOK, "products", "Products", productsView{Products: rows})
	return nil
}

// productView is the body of a product's page.
type productView struct {
	Product bap.Product
	Row     productRow
	// Policy is the policy as stored, indented; Draft what the editor
	// holds (a refused draft stays as typed).
	Policy string
	Draft  string
	// PolicyError is why the draft was refused, in the API's words.
	PolicyError *errorView
	// PrevKeyValidUntil is when the rotated-out platform key stops working
	// (nil when there is none still valid).
	PrevKeyValidUntil *time.Time
	// NewKey is the product's new platform key right after a rotation,
	// shown once.
	NewKey   string
	CanAdmin bool
	Grace    time.Duration
	// Rollouts is the product's rollouts, for an admin only.
	Rollouts rolloutsView
}

// productFor returns the product the path names (by id, or by slug), if the
// viewer may see it.
func (h *Handler) productFor(r *http.Request, v *viewer) (bap.Product, error) {
	ref := r.PathValue("product_id")
	p, err := h.store.GetProduct(r.Context(), ref)
	if errors.Is(err, registry.ErrNotFound) {
		products, lerr := h.store.ListProducts(r.Context())
		if lerr != nil {
			return bap.Product{}, fmt.Errorf("list products: %w", lerr)
		}
		for _, c := range products {
			if c.Slug == ref {
				p, err = c, nil
			}
		}
	}
	if errors.Is(err, registry.ErrNotFound) || (err == nil && !v.sees(p.ID)) {
		return bap.Product{}, errNotFound
	}
	if err != nil {
		return bap.Product{}, fmt.Errorf("read product: %w", err)
	}
	return p, nil
}

// productView assembles the page of p.
func (h *Handler) productView(r *http.Request, v *viewer, p bap.Product) (productView, error) {
	pv := productView{Product: p, CanAdmin: v.admin, Grace: h.grace}
	counts, err := h.store.CountByStatus(r.Context(), p.ID)
	if err != nil {
		return pv, fmt.Errorf("count engines: %w", err)
	}
	pv.Row = productRow{ID: p.ID, Slug: p.Slug, DisplayName: p.DisplayName, Created: p.CreatedAt}
	pv.Row.Counts, pv.Row.Total = counted(counts)
	pv.Row.Failed = counts[bap.StateFailed]
	pv.Row.Health = api.FleetHealth(pv.Row.Total, pv.Row.Failed)
	var buf bytes.Buffer
	if err := json.Indent(&buf, p.Policy.JSON(), "", "  "); err != nil {
		buf.Reset()
		buf.Write(p.Policy.JSON())
	}
	pv.Policy, pv.Draft = buf.String(), buf.String()
	if p.PrevAPIKeyHash != "" && p.PrevKeyExpiresAt != nil && p.PrevKeyExpiresAt.After(h.now()) {
		pv.PrevKeyValidUntil = p.PrevKeyExpiresAt
	}
	if v.admin {
		if pv.Rollouts, err = h.rolloutsOf(r, v, p); err != nil {
			return pv, fmt.Errorf("list rollouts: %w", err)
		}
	}
	return pv, nil
}

// productPage: GET /ui/products/{product_id}.
func (h *Handler) productPage(w http.ResponseWriter, r *http.Request, v *viewer) error {
	p, err := h.productFor(r, v)
	if err != nil {
		return err
	}
	pv, err := h.productView(r, v, p)
	if err != nil {
		return err
	}
	h.render(w, r, v, http.StatusOK, "product", "Product "+p.Slug, pv)
	return nil
}

// errAdminOnly refuses product administration to a product's own operator,
// as the API does (those routes take the admin key).
var errAdminOnly = errForbidden("Only an admin may change a product's policy or platform key.")

// updatePolicy: POST /ui/products/{product_id}/policy replaces the policy,
// validated as PUT /products/{product_id}/policy validates it.
func (h *Handler) updatePolicy(w http.ResponseWriter, r *http.Request, v *viewer) error {
	p, err := h.productFor(r, v)
	if err != nil {
		return err
	}
	if !v.admin {
		return errAdminOnly
	}
	draft := r.PostForm.Get("policy")
	pol, err := api.DecodePolicy([]byte(draft))
	if err != nil {
		pe, status, _ := api.PublicError(err)
		pv, verr := h.productView(r, v, p)
		if verr != nil {
			return verr
		}
		pv.Draft = draft
		pv.PolicyError = &errorView{Status: status, Code: pe.Code, Message: pe.Message}
		h.render(w, r, v, status, "product", "Product "+p.Slug, pv)
		return nil
	}
	meta := map[string]any{}
	_ = json.Unmarshal(pol.JSON(), &meta)
	_, err = h.store.UpdatePolicy(r.Context(), p.ID, pol, audit.Entry{
		ProductID: p.ID, Action: audit.PolicyUpdate, Actor: v.actor(),
		Metadata: map[string]any{"policy": meta},
	})
	if errors.Is(err, registry.ErrNotFound) {
		return errNotFound
	}
	if err != nil {
		return fmt.Errorf("update policy: %w", err)
	}
	h.disc.ForgetProduct(p.ID)
	h.log.Info("dashboard policy update", "who", v.name(), "product_id", p.ID)
	h.redirect(w, r, v, productURL(p.ID), "Policy saved.")
	return nil
}

// rotatePlatformKey: POST /ui/products/{product_id}/rotate-platform-key.
// The new key is on this answer only; the old one keeps working for the
// grace period, as with the API.
func (h *Handler) rotatePlatformKey(w http.ResponseWriter, r *http.Request, v *viewer) error {
	p, err := h.productFor(r, v)
	if err != nil {
		return err
	}
	if !v.admin {
		return errAdminOnly
	}
	key, err := secret.NewPlatformKey()
	if err != nil {
		return err
	}
	until := bap.Timestamp(h.now().Add(h.grace))
	err = h.store.RotateProductKey(r.Context(), p.ID, secret.Hash(key), until, audit.Entry{
		ProductID: p.ID, Action: audit.PlatformKeyRotated, Actor: v.actor(),
		Metadata: map[string]any{"grace_s": h.grace.Seconds(), "previous_key_expires_at": bap.FormatTime(until)},
	})
	if errors.Is(err, registry.ErrNotFound) {
		return errNotFound
	}
	if err != nil {
		return fmt.Errorf("rotate platform key: %w", err)
	}
	h.disc.ForgetProduct(p.ID)
	h.log.Info("dashboard platform key rotation", "who", v.name(), "product_id", p.ID)
	if p, err = h.store.GetProduct(r.Context(), p.ID); err != nil {
		return fmt.Errorf("read product: %w", err)
	}
	pv, err := h.productView(r, v, p)
	if err != nil {
		return err
	}
	pv.NewKey = key
	h.render(w, r, v, http.StatusOK, "product", "Product "+p.Slug, pv)
	return nil
}

// productURL is a product's page.
func productURL(id string) string { return Path + "/products/" + id }
