package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Header names of the two keys.
const (
	HeaderPlatformKey = "X-Platform-Key"
	HeaderAdminKey    = "X-Admin-Key"
)

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// Client calls one bap-engine orchestrator.
type Client struct {
	base        string
	platformKey string
	adminKey    string
	hc          *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithPlatformKey sets the product key sent as X-Platform-Key on product
// routes.
func WithPlatformKey(key string) Option { return func(c *Client) { c.platformKey = key } }

// WithAdminKey sets the key sent as X-Admin-Key on admin routes.
func WithAdminKey(key string) Option { return func(c *Client) { c.adminKey = key } }

// WithHTTPClient replaces http.DefaultClient (for timeouts, transports).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// New returns a Client of the orchestrator at baseURL (e.g.
// "http://127.0.0.1:8000"; a trailing slash is ignored).
func New(baseURL string, opts ...Option) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), hc: http.DefaultClient}
	for _, o := range opts {
		o(c)
	}
	return c
}

// BaseURL is the orchestrator URL the client calls.
func (c *Client) BaseURL() string { return c.base }

type auth int

const (
	authNone auth = iota
	authPlatform
	authAdmin
)

// Provision creates the engine of req.UserID and waits until it is running.
// Errors: ENGINE_ALREADY_EXISTS, QUOTA_EXCEEDED, PORT_EXHAUSTION,
// BOOT_TIMEOUT, VALIDATION_ERROR.
func (c *Client) Provision(ctx context.Context, req ProvisionRequest) (Provisioned, error) {
	return call[Provisioned](ctx, c, http.MethodPost, "/engines/provision", nil, authPlatform, req)
}

// Destroy removes the user's engine and its data. Errors: ENGINE_NOT_FOUND.
func (c *Client) Destroy(ctx context.Context, userID string) (Destroyed, error) {
	return call[Destroyed](ctx, c, http.MethodDelete, enginePath(userID, ""), nil, authPlatform, nil)
}

// Start brings a stopped, sleeping or failed engine to running. Errors:
// ENGINE_NOT_FOUND, ENGINE_ALREADY_RUNNING, BOOT_TIMEOUT.
func (c *Client) Start(ctx context.Context, userID string) (Started, error) {
	return call[Started](ctx, c, http.MethodPost, enginePath(userID, "start"), nil, authPlatform, nil)
}

// Stop stops a running or sleeping engine; its data is kept. Errors:
// ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING.
func (c *Client) Stop(ctx context.Context, userID string) (Stopped, error) {
	return call[Stopped](ctx, c, http.MethodPost, enginePath(userID, "stop"), nil, authPlatform, nil)
}

// RotateKey gives a running engine a new key and returns it. Errors:
// ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING, BOOT_TIMEOUT.
func (c *Client) RotateKey(ctx context.Context, userID string) (KeyRotated, error) {
	return call[KeyRotated](ctx, c, http.MethodPost, enginePath(userID, "rotate-key"), nil, authPlatform, nil)
}

// Upgrade moves the user's engine to engineVersion on the same brain, key
// and URL; the brain is snapshotted first and the upgrade rolled back if
// the new version does not become healthy. It waits for the outcome (up to
// twice the boot timeout and more). Errors: ENGINE_NOT_FOUND, ENGINE_BUSY,
// ENGINE_NOT_RUNNING, UPGRADE_FAILED (rolled back; the message has the
// engine's reason), IMAGE_NOT_FOUND, VALIDATION_ERROR.
func (c *Client) Upgrade(ctx context.Context, userID, engineVersion string) (Upgraded, error) {
	in := struct {
		EngineVersion string `json:"engine_version"`
	}{engineVersion}
	return call[Upgraded](ctx, c, http.MethodPost, enginePath(userID, "upgrade"), nil, authPlatform, in)
}

// Get returns the user's engine with its key. Errors: ENGINE_NOT_FOUND.
func (c *Client) Get(ctx context.Context, userID string) (Engine, error) {
	return call[Engine](ctx, c, http.MethodGet, enginePath(userID, ""), nil, authPlatform, nil)
}

// Admit is the call to make on every user request: it returns the user's
// running engine, provisioning or waking it when opts allow, or the reason
// it is not admitted. Errors: RATE_LIMITED (with RetryAfter),
// QUOTA_EXCEEDED, PORT_EXHAUSTION, BOOT_TIMEOUT.
func (c *Client) Admit(ctx context.Context, userID string, opts AdmitOptions) (AdmitResult, error) {
	return call[AdmitResult](ctx, c, http.MethodPost, enginePath(userID, "admit"), nil, authPlatform, opts)
}

// List returns one page of the product's engines (without keys), ordered by
// creation. Errors: VALIDATION_ERROR for a bad filter.
func (c *Client) List(ctx context.Context, opts ListOptions) (EngineList, error) {
	q := url.Values{}
	if opts.Status != "" {
		q.Set("status", opts.Status)
	}
	setPage(q, opts.Limit, opts.Offset)
	return call[EngineList](ctx, c, http.MethodGet, "/engines", q, authPlatform, nil)
}

// Status returns the product's fleet health snapshot.
func (c *Client) Status(ctx context.Context) (FleetStatus, error) {
	return call[FleetStatus](ctx, c, http.MethodGet, "/status", nil, authPlatform, nil)
}

// Metrics returns the product's operational numbers (last hour, all time).
func (c *Client) Metrics(ctx context.Context) (FleetMetrics, error) {
	return call[FleetMetrics](ctx, c, http.MethodGet, "/metrics", nil, authPlatform, nil)
}

// Audit returns one page of the user's engine audit trail, newest first.
// Errors: ENGINE_NOT_FOUND.
func (c *Client) Audit(ctx context.Context, userID string, opts AuditOptions) (AuditPage, error) {
	q := url.Values{}
	setPage(q, opts.Limit, opts.Offset)
	return call[AuditPage](ctx, c, http.MethodGet, enginePath(userID, "audit"), q, authPlatform, nil)
}

// setPage adds a page's limit and offset to q; zero leaves the server's
// default.
func setPage(q url.Values, limit, offset int) {
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if offset != 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
}
