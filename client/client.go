package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
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
	var out Provisioned
	err := c.do(ctx, http.MethodPost, "/engines/provision", nil, authPlatform, req, &out)
	return out, err
}

// Destroy removes the user's engine and its data. Errors: ENGINE_NOT_FOUND.
func (c *Client) Destroy(ctx context.Context, userID string) (Destroyed, error) {
	var out Destroyed
	err := c.do(ctx, http.MethodDelete, enginePath(userID, ""), nil, authPlatform, nil, &out)
	return out, err
}

// Start brings a stopped, sleeping or failed engine to running. Errors:
// ENGINE_NOT_FOUND, ENGINE_ALREADY_RUNNING, BOOT_TIMEOUT.
func (c *Client) Start(ctx context.Context, userID string) (Started, error) {
	var out Started
	err := c.do(ctx, http.MethodPost, enginePath(userID, "start"), nil, authPlatform, nil, &out)
	return out, err
}

// Stop stops a running or sleeping engine; its data is kept. Errors:
// ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING.
func (c *Client) Stop(ctx context.Context, userID string) (Stopped, error) {
	var out Stopped
	err := c.do(ctx, http.MethodPost, enginePath(userID, "stop"), nil, authPlatform, nil, &out)
	return out, err
}

// RotateKey gives a running engine a new key and returns it. Errors:
// ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING, BOOT_TIMEOUT.
func (c *Client) RotateKey(ctx context.Context, userID string) (KeyRotated, error) {
	var out KeyRotated
	err := c.do(ctx, http.MethodPost, enginePath(userID, "rotate-key"), nil, authPlatform, nil, &out)
	return out, err
}

// Upgrade moves the user's engine to engineVersion on the same brain, key
// and URL; the brain is snapshotted first and the upgrade rolled back if
// the new version does not become healthy. It waits for the outcome (up to
// twice the boot timeout and more). Errors: ENGINE_NOT_FOUND, ENGINE_BUSY,
// ENGINE_NOT_RUNNING, UPGRADE_FAILED (rolled back; the message has the
// engine's reason), IMAGE_NOT_FOUND, VALIDATION_ERROR.
func (c *Client) Upgrade(ctx context.Context, userID, engineVersion string) (Upgraded, error) {
	var out Upgraded
	in := struct {
		EngineVersion string `json:"engine_version"`
	}{engineVersion}
	err := c.do(ctx, http.MethodPost, enginePath(userID, "upgrade"), nil, authPlatform, in, &out)
	return out, err
}

// Get returns the user's engine with its key. Errors: ENGINE_NOT_FOUND.
func (c *Client) Get(ctx context.Context, userID string) (Engine, error) {
	var out Engine
	err := c.do(ctx, http.MethodGet, enginePath(userID, ""), nil, authPlatform, nil, &out)
	return out, err
}

// Admit is the call to make on every user request: it returns the user's
// running engine, provisioning or waking it when opts allow, or the reason
// it is not admitted. Errors: RATE_LIMITED (with RetryAfter),
// QUOTA_EXCEEDED, PORT_EXHAUSTION, BOOT_TIMEOUT.
func (c *Client) Admit(ctx context.Context, userID string, opts AdmitOptions) (AdmitResult, error) {
	var out AdmitResult
	err := c.do(ctx, http.MethodPost, enginePath(userID, "admit"), nil, authPlatform, opts, &out)
	return out, err
}

// List returns one page of the product's engines (without keys), ordered by
// creation. Errors: VALIDATION_ERROR for a bad filter.
func (c *Client) List(ctx context.Context, opts ListOptions) (EngineList, error) {
	q := url.Values{}
	if opts.Status != "" {
		q.Set("status", opts.Status)
	}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Offset != 0 {
		q.Set("offset", strconv.Itoa(opts.Offset))
	}
	var out EngineList
	err := c.do(ctx, http.MethodGet, "/engines", q, authPlatform, nil, &out)
	return out, err
}

// Status returns the product's fleet health snapshot.
func (c *Client) Status(ctx context.Context) (FleetStatus, error) {
	var out FleetStatus
	err := c.do(ctx, http.MethodGet, "/status", nil, authPlatform, nil, &out)
	return out, err
}

// Metrics returns the product's operational numbers (last hour, all time).
func (c *Client) Metrics(ctx context.Context) (FleetMetrics, error) {
	var out FleetMetrics
	err := c.do(ctx, http.MethodGet, "/metrics", nil, authPlatform, nil, &out)
	return out, err
}

// Audit returns one page of the user's engine audit trail, newest first.
// Errors: ENGINE_NOT_FOUND.
func (c *Client) Audit(ctx context.Context, userID string, opts AuditOptions) (AuditPage, error) {
	q := url.Values{}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Offset != 0 {
		q.Set("offset", strconv.Itoa(opts.Offset))
	}
	var out AuditPage
	err := c.do(ctx, http.MethodGet, enginePath(userID, "audit"), q, authPlatform, nil, &out)
	return out, err
}

// RegisterProduct creates a product (admin key) and returns its platform
// key, which is shown only here. Errors: INVALID_ADMIN_KEY,
// PRODUCT_SLUG_EXISTS, VALIDATION_ERROR.
func (c *Client) RegisterProduct(ctx context.Context, req ProductRequest) (Product, error) {
	var out Product
	err := c.do(ctx, http.MethodPost, "/products/register", nil, authAdmin, req, &out)
	return out, err
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
	var out PlatformKeyRotated
	err := c.do(ctx, http.MethodPost, "/products/"+url.PathEscape(productID)+"/rotate-platform-key", nil, authAdmin, nil, &out)
	return out, err
}

// Replicas lists the orchestrator replicas sharing the database, with the
// shards each holds (admin key). Errors: INVALID_ADMIN_KEY.
func (c *Client) Replicas(ctx context.Context) (ReplicaList, error) {
	var out ReplicaList
	err := c.do(ctx, http.MethodGet, "/replicas", nil, authAdmin, nil, &out)
	return out, err
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
	var out Rollout
	err := c.do(ctx, http.MethodPost, rolloutsPath(product), nil, authAdmin, req, &out)
	return out, err
}

// Rollouts lists the product's rollouts, newest first (admin key).
func (c *Client) Rollouts(ctx context.Context, product string) (RolloutList, error) {
	var out RolloutList
	err := c.do(ctx, http.MethodGet, rolloutsPath(product), nil, authAdmin, nil, &out)
	return out, err
}

// Rollout returns one rollout (admin key). Errors: ROLLOUT_NOT_FOUND.
func (c *Client) Rollout(ctx context.Context, product, rolloutID string) (Rollout, error) {
	var out Rollout
	err := c.do(ctx, http.MethodGet, rolloutsPath(product, rolloutID), nil, authAdmin, nil, &out)
	return out, err
}

// RaiseRollout raises a rollout's percent (never lowers: VALIDATION_ERROR).
func (c *Client) RaiseRollout(ctx context.Context, product, rolloutID string, percent int) (Rollout, error) {
	var out Rollout
	in := struct {
		Percent int `json:"percent"`
	}{percent}
	err := c.do(ctx, http.MethodPatch, rolloutsPath(product, rolloutID), nil, authAdmin, in, &out)
	return out, err
}

// RolloutAction pauses, resumes or aborts a rollout (action is "pause",
// "resume" or "abort").
func (c *Client) RolloutAction(ctx context.Context, product, rolloutID, action string) (Rollout, error) {
	var out Rollout
	err := c.do(ctx, http.MethodPost, rolloutsPath(product, rolloutID, action), nil, authAdmin, nil, &out)
	return out, err
}

// Health reports whether the orchestrator and its database are up; a
// *Error with status 503 when they are not.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodGet, "/health", nil, authNone, nil, &out)
	return out, err
}

// Version returns the orchestrator's build (no key); it is answered even
// while the orchestrator waits for its database at start.
func (c *Client) Version(ctx context.Context) (Build, error) {
	var out Build
	err := c.do(ctx, http.MethodGet, "/version", nil, authNone, nil, &out)
	return out, err
}

// Livez is the liveness probe (no key): the process serves HTTP. It
// checks nothing else.
func (c *Client) Livez(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodGet, "/livez", nil, authNone, nil, &out)
	return out, err
}

// Readyz is the readiness probe (no key): the database and the engine
// backend are reachable; a *Error with status 503 (DATABASE_UNAVAILABLE or
// BACKEND_UNAVAILABLE) when they are not.
func (c *Client) Readyz(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodGet, "/readyz", nil, authNone, nil, &out)
	return out, err
}

// PrometheusMetrics returns the fleet-wide Prometheus text exposition
// (admin key).
func (c *Client) PrometheusMetrics(ctx context.Context) (string, error) {
	resp, err := c.send(ctx, http.MethodGet, "/metrics/prometheus", nil, authAdmin, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read /metrics/prometheus: %w", err)
	}
	return string(b), nil
}

// OpenAPI returns the server's OpenAPI 3.1 document.
func (c *Client) OpenAPI(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	err := c.do(ctx, http.MethodGet, "/openapi.json", nil, authNone, nil, &out)
	return out, err
}

// Products lists every product with its engines counted by state (admin
// key). Errors: INVALID_ADMIN_KEY.
func (c *Client) Products(ctx context.Context) (ProductList, error) {
	var out ProductList
	err := c.do(ctx, http.MethodGet, "/products", nil, authAdmin, nil, &out)
	return out, err
}

// Product returns one product by id or slug (admin key). Errors:
// INVALID_ADMIN_KEY, PRODUCT_NOT_FOUND.
func (c *Client) Product(ctx context.Context, product string) (ProductInfo, error) {
	var out ProductInfo
	err := c.do(ctx, http.MethodGet, "/products/"+url.PathEscape(product), nil, authAdmin, nil, &out)
	return out, err
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
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Offset != 0 {
		q.Set("offset", strconv.Itoa(opts.Offset))
	}
	var out FleetEngineList
	err := c.do(ctx, http.MethodGet, "/fleet/engines", q, authAdmin, nil, &out)
	return out, err
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

func enginePath(userID, action string) string {
	p := "/engines/" + url.PathEscape(userID)
	if action != "" {
		p += "/" + action
	}
	return p
}

// do sends a request with an optional JSON body and decodes a 2xx JSON
// answer into out.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, a auth, in, out any) error {
	resp, err := c.send(ctx, method, path, q, a, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s answer: %w", method, path, err)
	}
	return nil
}

// send performs the request and returns a 2xx response (body open), or the
// error answer as *Error.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, a auth, in any) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("build %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	switch a {
	case authPlatform:
		req.Header.Set(HeaderPlatformKey, c.platformKey)
	case authAdmin:
		req.Header.Set(HeaderAdminKey, c.adminKey)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

// decodeError turns a non-2xx answer into *Error.
func decodeError(resp *http.Response) *Error {
	e := &Error{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &env) == nil && env.Error != nil && env.Error.Code != "" {
		e.Code = env.Error.Code
		e.Message = env.Error.Message
		return e
	}
	e.Message = strings.TrimSpace(string(raw))
	if len(e.Message) > 200 {
		e.Message = e.Message[:200]
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > math.MaxInt64/int64(time.Second) {
			return time.Duration(math.MaxInt64)
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
