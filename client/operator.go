package client

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Products lists every product with its engines counted by state (admin
// key). Errors: INVALID_ADMIN_KEY.
func (c *Client) Products(ctx context.Context) (ProductList, error) {
	return call[ProductList](ctx, c, http.MethodGet, "/products", nil, authAdmin, nil)
}

// Product returns one product by id or slug (admin key). Errors:
// INVALID_ADMIN_KEY, PRODUCT_NOT_FOUND.
func (c *Client) Product(ctx context.Context, product string) (ProductInfo, error) {
	return call[ProductInfo](ctx, c, http.MethodGet, "/products/"+url.PathEscape(product), nil, authAdmin, nil)
}

// FleetEngines returns one page of the engines of every product (admin
// key), ordered by creation. Errors: INVALID_ADMIN_KEY, PRODUCT_NOT_FOUND
// (opts.Product names none), VALIDATION_ERROR.
func (c *Client) FleetEngines(ctx context.Context, opts FleetOptions) (FleetEngineList, error) {
	q := url.Values{}
	for k, v := range map[string]string{"product": opts.Product, "status": opts.Status, "user_id": opts.UserID} {
		if v != "" {
			q.Set(k, v)
		}
	}
	setPage(q, opts.Limit, opts.Offset)
	return call[FleetEngineList](ctx, c, http.MethodGet, "/fleet/engines", q, authAdmin, nil)
}

// Logs returns the engine's own output (platform key) as text: the last
// lines, and with opts.Follow what it writes next until ctx ends or the
// caller closes the reader (an HTTP client with a Timeout cuts a followed
// log at that timeout). Errors: ENGINE_NOT_FOUND, VALIDATION_ERROR,
// BACKEND_UNAVAILABLE.
func (c *Client) Logs(ctx context.Context, userID string, opts LogOptions) (io.ReadCloser, error) {
	q := url.Values{}
	switch {
	case opts.Tail < 0:
		q.Set("tail", "0")
	case opts.Tail > 0:
		q.Set("tail", strconv.Itoa(opts.Tail))
	}
	if opts.Follow {
		q.Set("follow", "true")
	}
	resp, err := c.send(ctx, http.MethodGet, enginePath(userID, "logs"), q, authPlatform, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
