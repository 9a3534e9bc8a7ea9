package client

import (
	"context"
	"net/http"
	"net/url"
)

// RegisterProduct creates a product (admin key) and returns its platform
// key, which is shown only here. Errors: INVALID_ADMIN_KEY,
// PRODUCT_SLUG_EXISTS, VALIDATION_ERROR.
func (c *Client) RegisterProduct(ctx context.Context, req ProductRequest) (Product, error) {
	return call[Product](ctx, c, http.MethodPost, "/products/register", nil, authAdmin, req)
}

// UpdatePolicy replaces a product's policy (admin key) and returns it as
// stored. A nil policy is sent as {} (no limits). Errors:
// INVALID_ADMIN_KEY, PRODUCT_NOT_FOUND, VALIDATION_ERROR.
func (c *Client) UpdatePolicy(ctx context.Context, productID string, p Policy) (Policy, error) {
	if p == nil {
		p = Policy{}
	}
	var out struct {
		Policy Policy `json:"policy"`
	}
	in := struct {
		Policy Policy `json:"policy"`
	}{p}
	err := c.do(ctx, http.MethodPut, "/products/"+url.PathEscape(productID)+"/policy", nil, authAdmin, in, &out)
	return out.Policy, err
}

// RotatePlatformKey gives a product a new platform key (admin key), shown
// only here; the previous key keeps working until PreviousKeyExpiresAt.
// Errors: INVALID_ADMIN_KEY, PRODUCT_NOT_FOUND.
func (c *Client) RotatePlatformKey(ctx context.Context, productID string) (PlatformKeyRotated, error) {
	return call[PlatformKeyRotated](ctx, c, http.MethodPost, "/products/"+url.PathEscape(productID)+"/rotate-platform-key", nil, authAdmin, nil)
}

// Replicas lists the orchestrator replicas sharing the database, with the
// shards each holds (admin key). Errors: INVALID_ADMIN_KEY.
func (c *Client) Replicas(ctx context.Context) (ReplicaList, error) {
	return call[ReplicaList](ctx, c, http.MethodGet, "/replicas", nil, authAdmin, nil)
}

func rolloutsPath(product string, rest ...string) string {
	p := "/products/" + url.PathEscape(product) + "/rollouts"
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// CreateRollout starts a rollout of the product's engines (admin key;
// product is its id or slug). Errors: ROLLOUT_IN_PROGRESS,
// PRODUCT_NOT_FOUND, VALIDATION_ERROR.
func (c *Client) CreateRollout(ctx context.Context, product string, req RolloutRequest) (Rollout, error) {
	return call[Rollout](ctx, c, http.MethodPost, rolloutsPath(product), nil, authAdmin, req)
}

// Rollouts lists the product's rollouts, newest first (admin key).
func (c *Client) Rollouts(ctx context.Context, product string) (RolloutList, error) {
	return call[RolloutList](ctx, c, http.MethodGet, rolloutsPath(product), nil, authAdmin, nil)
}

// Rollout returns one rollout (admin key). Errors: ROLLOUT_NOT_FOUND.
func (c *Client) Rollout(ctx context.Context, product, rolloutID string) (Rollout, error) {
	return call[Rollout](ctx, c, http.MethodGet, rolloutsPath(product, rolloutID), nil, authAdmin, nil)
}

// RaiseRollout raises a rollout's percent (never lowers: VALIDATION_ERROR).
func (c *Client) RaiseRollout(ctx context.Context, product, rolloutID string, percent int) (Rollout, error) {
	in := struct {
		Percent int `json:"percent"`
	}{percent}
	return call[Rollout](ctx, c, http.MethodPatch, rolloutsPath(product, rolloutID), nil, authAdmin, in)
}

// RolloutAction pauses, resumes or aborts a rollout (action is "pause",
// "resume" or "abort").
func (c *Client) RolloutAction(ctx context.Context, product, rolloutID, action string) (Rollout, error) {
	return call[Rollout](ctx, c, http.MethodPost, rolloutsPath(product, rolloutID, action), nil, authAdmin, nil)
}
