package api_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/storetest"
)

// samplePath fills a route's path parameters.
func samplePath(p string) string {
	p = strings.ReplaceAll(p, "{user_id}", "someone")
	p = strings.ReplaceAll(p, "{product}", "some-product")
	return strings.ReplaceAll(p, "{product_id}", "00000000-0000-4000-8000-000000000000")
}

func TestEveryRouteRequiresItsKey(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		_, p := h.product("keyed", "")
		checked := 0
		for _, rt := range api.Routes() {
			path := samplePath(rt.Path)
			body := ""
			if rt.Method == http.MethodPost || rt.Method == http.MethodPut {
				body = `{}`
			}
			switch rt.Auth {
			case "platform", "self":
				for name, hdr := range map[string]map[string]string{
					"missing":   nil,
					"wrong":     {api.HeaderPlatformKey: "pk-sept-wrong"},
					"admin key": {api.HeaderAdminKey: h.adminKey},
				} {
					r := h.do(rt.Method, path, body, hdr)
					require.Equal(t, http.StatusUnauthorized, r.status, "%s %s with %s key: %s", rt.Method, path, name, r.body)
					checkGolden(t, "invalid_platform_key", r)
				}
			case "admin", "metrics":
				for name, hdr := range map[string]map[string]string{
					"missing":      nil,
					"wrong":        {api.HeaderAdminKey: h.adminKey + "x"},
					"platform key": {api.HeaderPlatformKey: p.PlatformAPIKey},
				} {
					r := h.do(rt.Method, path, body, hdr)
					require.Equal(t, http.StatusUnauthorized, r.status, "%s %s with %s key: %s", rt.Method, path, name, r.body)
					checkGolden(t, "invalid_admin_key", r)
				}
			case "none":
				r := h.do(rt.Method, path, "", nil)
				require.Equal(t, http.StatusOK, r.status, "%s %s needs no key", rt.Method, path)
			default:
				t.Fatalf("route %s %s has unknown auth %q", rt.Method, rt.Path, rt.Auth)
			}
			checked++
		}
		require.Equal(t, 33, checked, "every route of SPEC §2 and the additive ones")
		require.Equal(t, 0, h.engineCount(p.ProductID))
		require.Equal(t, 1, h.auditTotal(p.ProductID), "only the registration: rejected requests leave nothing")
	})
}

func TestUnknownRouteAndWrongMethod(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t), options{})
	r := h.do(http.MethodGet, "/nowhere", "", nil)
	require.Equal(t, http.StatusNotFound, r.status)
	checkGolden(t, "not_found_route", r)

	r = h.do(http.MethodGet, "/engines/a/b/c", "", nil)
	require.Equal(t, http.StatusNotFound, r.status)
	require.Equal(t, bap.CodeNotFound, r.json(t)["error"].(map[string]any)["code"])

	r = h.do(http.MethodGet, "/engines/provision", "", nil)
	require.Equal(t, http.StatusUnauthorized, r.status, "GET /engines/{user_id} with user_id=provision")

	r = h.do(http.MethodPut, "/engines/provision", "{}", nil)
	require.Equal(t, http.StatusMethodNotAllowed, r.status)
	checkGolden(t, "method_not_allowed", r)
	require.NotEmpty(t, r.header.Get("Allow"))

	r = h.do(http.MethodPatch, "/health", "", nil)
	require.Equal(t, http.StatusMethodNotAllowed, r.status)
	require.Equal(t, "GET, HEAD", r.header.Get("Allow"))

	// Paths the mux would redirect to a cleaned form are unknown routes, not
	// redirects, and still carry the envelope.
	r = h.do(http.MethodGet, "/status/../health", "", nil)
	require.Equal(t, http.StatusNotFound, r.status, "%s", r.body)
	require.Empty(t, r.header.Get("Location"))
	require.Equal(t, bap.CodeNotFound, r.json(t)["error"].(map[string]any)["code"])
}

func TestValidationLeavesNothingBehind(t *testing.T) {
	eachHarness(t, options{maxBody: 4096}, func(t *testing.T, h *harness) {
		_, p := h.product("strict", "")
		key := map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey}
		cases := []struct {
			golden, method, path, body string
		}{
			{"validation_malformed_json", http.MethodPost, "/engines/provision", `{"user_id": "u1"`},
			{"validation_not_an_object", http.MethodPost, "/engines/provision", `["u1"]`},
			{"validation_empty_body", http.MethodPost, "/engines/provision", ``},
			{"validation_null_body", http.MethodPost, "/engines/provision", `null`},
			{"validation_trailing_data", http.MethodPost, "/engines/provision", `{"user_id":"u1"} {}`},
			{"validation_missing_user_id", http.MethodPost, "/engines/provision", `{"engine_version":"x:1"}`},
			{"validation_user_id_type", http.MethodPost, "/engines/provision", `{"user_id": 42}`},
			{"validation_user_id_chars", http.MethodPost, "/engines/provision", `{"user_id": "a/b"}`},
			{"validation_user_id_dot", http.MethodPost, "/engines/provision", `{"user_id": ".hidden"}`},
			{"validation_user_id_empty", http.MethodPost, "/engines/provision", `{"user_id": ""}`},
			{"validation_user_id_long", http.MethodPost, "/engines/provision", `{"user_id": "` + strings.Repeat("a", 129) + `"}`},
			{"validation_engine_version_type", http.MethodPost, "/engines/provision", `{"user_id": "u1", "engine_version": ["x"]}`},
			{"validation_engine_version_value", http.MethodPost, "/engines/provision", `{"user_id": "u1", "engine_version": "bad image; rm -rf"}`},
			{"validation_admit_bool_type", http.MethodPost, "/engines/u1/admit", `{"auto_provision": "true"}`},
			{"validation_admit_null", http.MethodPost, "/engines/u1/admit", `{"auto_wake": null}`},
			{"validation_admit_malformed", http.MethodPost, "/engines/u1/admit", `{"auto_provision": tru}`},
			{"validation_path_user_id", http.MethodPost, "/engines/..%2Fetc/admit", `{"auto_provision": true}`},
			{"validation_path_user_id_get", http.MethodGet, "/engines/bad%20id", ``},
			{"validation_path_user_id_start", http.MethodPost, "/engines/%2Eprofile/start", ``},
			{"validation_path_user_id_delete", http.MethodDelete, "/engines/a%2Fb", ``},
			{"validation_list_status", http.MethodGet, "/engines?status=zombie", ``},
			{"validation_list_limit_zero", http.MethodGet, "/engines?limit=0", ``},
			{"validation_list_limit_big", http.MethodGet, "/engines?limit=1001", ``},
			{"validation_list_limit_text", http.MethodGet, "/engines?limit=ten", ``},
			{"validation_list_offset", http.MethodGet, "/engines?offset=-1", ``},
			{"validation_audit_limit", http.MethodGet, "/engines/u1/audit?limit=5000", ``},
		}
		for _, tc := range cases {
			r := h.do(tc.method, tc.path, tc.body, key)
			require.Equal(t, http.StatusUnprocessableEntity, r.status, "%s: %s", tc.golden, r.body)
			checkGolden(t, tc.golden, r)
		}

		big := `{"user_id":"u1","pad":"` + strings.Repeat("x", 5000) + `"}`
		for _, path := range []string{"/engines/provision", "/engines/u1/admit"} {
			r := h.do(http.MethodPost, path, big, key)
			require.Equal(t, http.StatusRequestEntityTooLarge, r.status, "%s: %s", path, r.body)
			checkGolden(t, "payload_too_large", r)
		}
		// Too large without a key is still 401 first.
		r := h.do(http.MethodPost, "/engines/u1/admit", big, nil)
		require.Equal(t, http.StatusUnauthorized, r.status)
		// A bad admit with a wrong key is 401, not 422.
		r = h.do(http.MethodPost, "/engines/u1/admit", `{"auto_provision": 1}`, map[string]string{api.HeaderPlatformKey: "pk-sept-nope"})
		require.Equal(t, http.StatusUnauthorized, r.status)
		r = h.do(http.MethodPost, "/engines/bad%20id/admit", ``, map[string]string{api.HeaderPlatformKey: "pk-sept-nope"})
		require.Equal(t, http.StatusUnauthorized, r.status)

		require.Equal(t, 0, h.engineCount(p.ProductID), "no engine row from a rejected request")
		require.Equal(t, 1, h.auditTotal(p.ProductID), "no audit row from a rejected request")
		require.Zero(t, h.fake.Calls(backendtest.MethodCreate), "no instance from a rejected request")
		ports, err := h.store.ListPortAllocations(t.Context())
		require.NoError(t, err)
		require.Empty(t, ports, "no port from a rejected request")

		// Unknown fields are ignored; an empty admit body is all defaults.
		r = h.do(http.MethodPost, "/engines/provision", `{"user_id":"u1","color":"blue","nested":{"a":[1]}}`, key)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		h.remember(r.json(t)["api_key"].(string))
		r = h.do(http.MethodPost, "/engines/u1/admit", ``, key)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, true, r.json(t)["admitted"])
	})
}

func TestCrossProductIsolation(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		a, _ := h.product("alpha", "")
		b, pb := h.product("beta", "")
		ctx := t.Context()
		h.provision(a, "shared-user")

		_, err := b.Get(ctx, "shared-user")
		apiError(t, err, 404, client.CodeEngineNotFound)
		_, err = b.Start(ctx, "shared-user")
		apiError(t, err, 404, client.CodeEngineNotFound)
		_, err = b.Stop(ctx, "shared-user")
		apiError(t, err, 404, client.CodeEngineNotFound)
		_, err = b.RotateKey(ctx, "shared-user")
		apiError(t, err, 404, client.CodeEngineNotFound)
		_, err = b.Audit(ctx, "shared-user", client.AuditOptions{})
		apiError(t, err, 404, client.CodeEngineNotFound)
		_, err = b.Destroy(ctx, "shared-user")
		apiError(t, err, 404, client.CodeEngineNotFound)
		adm, err := b.Admit(ctx, "shared-user", client.AdmitOptions{})
		require.NoError(t, err)
		require.Equal(t, client.AdmitResult{Admitted: false, Reason: client.ReasonEngineNotFound}, adm)
		list, err := b.List(ctx, client.ListOptions{})
		require.NoError(t, err)
		require.Zero(t, list.Total)
		require.Empty(t, list.Engines)
		st, err := b.Status(ctx)
		require.NoError(t, err)
		require.Zero(t, st.Total)

		// The same user id is independent per product.
		own := h.provision(b, "shared-user")
		got, err := a.Get(ctx, "shared-user")
		require.NoError(t, err)
		require.NotEqual(t, own.EngineID, got.EngineID)
		require.Equal(t, 1, h.engineCount(pb.ProductID))
	})
}

func TestBackendAndBootErrors(t *testing.T) {
	eachHarness(t, options{bootTimeout: 300 * time.Millisecond, ports: 2}, func(t *testing.T, h *harness) {
		c, p := h.product("faulty", "")
		ctx := t.Context()

		// Failed provisions keep their rows (failed) and ports for the
		// operator; clear them so the two ports last the test.
		clear := func() {
			engines, _, err := h.store.ListEngines(ctx, registry.EngineFilter{ProductID: p.ProductID})
			require.NoError(t, err)
			for _, en := range engines {
				_, err := c.Destroy(ctx, en.UserID)
				require.NoError(t, err)
			}
		}

		h.fake.FailNext(backendtest.MethodCreate, fmt.Errorf("pull: %w", backend.ErrImageNotFound))
		_, err := c.Provision(ctx, client.ProvisionRequest{UserID: "img"})
		checkGoldenErr(t, h, "image_not_found", err, 502, client.CodeImageNotFound)
		clear()

		h.fake.FailNext(backendtest.MethodCreate, fmt.Errorf("dial docker.sock: %w", backend.ErrUnavailable))
		_, err = c.Provision(ctx, client.ProvisionRequest{UserID: "unavail"})
		checkGoldenErr(t, h, "backend_unavailable", err, 503, client.CodeBackendUnavailable)
		clear()

		h.fake.FailNext(backendtest.MethodCreate, errors.New("daemon said no: secret internals"))
		_, err = c.Provision(ctx, client.ProvisionRequest{UserID: "broken"})
		e := checkGoldenErrRet(t, h, "backend_error", err, 502, client.CodeBackendError)
		require.NotContains(t, e.Message, "secret internals", "internal causes never reach the caller")
		require.Contains(t, h.logs.String(), "secret internals", "but they are logged")
		clear()

		h.fake.SetBootDelay(time.Hour)
		_, err = c.Provision(ctx, client.ProvisionRequest{UserID: "slow"})
		checkGoldenErr(t, h, "boot_timeout", err, 504, client.CodeBootTimeout)
		h.fake.SetBootDelay(0)
		slow, err := c.Get(ctx, "slow")
		require.NoError(t, err)
		require.Equal(t, client.StateFailed, slow.Status)
		adm, err := c.Admit(ctx, "slow", client.AdmitOptions{AutoProvision: true, AutoWake: true})
		require.NoError(t, err)
		require.Equal(t, client.ReasonEngineUnhealthy, adm.Reason)

		h.provision(c, "second")
		_, err = c.Provision(ctx, client.ProvisionRequest{UserID: "third"})
		checkGoldenErr(t, h, "port_exhaustion", err, 503, client.CodePortExhaustion, normPorts)
		_, err = c.Get(ctx, "third")
		apiError(t, err, 404, client.CodeEngineNotFound)
		adm, err = c.Admit(ctx, "fourth", client.AdmitOptions{AutoProvision: true})
		apiError(t, err, 503, client.CodePortExhaustion)
		require.False(t, adm.Admitted)
		for _, u := range []string{"third", "fourth"} {
			_, n, err := h.store.ListAudit(ctx, registry.AuditFilter{ProductID: p.ProductID, UserID: u})
			require.NoError(t, err)
			require.Zero(t, n, "no audit row for the port-exhausted request of %s", u)
		}

		// A start that does not come up in time is a 504 too, and the
		// engine is left failed for the operator.
		_, err = c.Stop(ctx, "second")
		require.NoError(t, err)
		h.fake.SetBootDelay(time.Hour)
		_, err = c.Start(ctx, "second")
		apiError(t, err, 504, client.CodeBootTimeout)
		h.fake.SetBootDelay(0)
		second, err := c.Get(ctx, "second")
		require.NoError(t, err)
		require.Equal(t, client.StateFailed, second.Status)
		_, err = c.Start(ctx, "second")
		require.NoError(t, err, "an explicit start brings a failed engine back")
		require.Positive(t, h.auditCount(p.ProductID, audit.ProvisionFailed))
	})
}

// checkGoldenErrRet is checkGoldenErr returning the error.
func checkGoldenErrRet(t *testing.T, h *harness, name string, err error, status int, code string) *client.Error {
	t.Helper()
	checkGoldenErr(t, h, name, err, status, code)
	var e *client.Error
	require.ErrorAs(t, err, &e)
	return e
}

func TestEngineBusyAndInternal(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("odd", "")
		ctx := t.Context()

		// An engine another process is provisioning.
		registrytest.NewEngine(t, h.store, p.ProductID, "midway", registrytest.WithStatus(bap.StateProvisioning))
		_, err := c.Start(ctx, "midway")
		checkGoldenErr(t, h, "engine_busy", err, 409, client.CodeEngineBusy)

		// A row whose key token cannot be decrypted: an internal fault,
		// answered generically and logged with the request id.
		registrytest.NewEngine(t, h.store, p.ProductID, "corrupt")
		r := h.do(http.MethodGet, "/engines/corrupt", "", map[string]string{
			api.HeaderPlatformKey: p.PlatformAPIKey, api.HeaderRequestID: "req-internal-1",
		})
		require.Equal(t, http.StatusInternalServerError, r.status)
		checkGolden(t, "internal", r)
		require.Contains(t, h.logs.String(), `"request_id":"req-internal-1"`)
		require.Contains(t, h.logs.String(), "internal error")
	})
}

func TestRateLimitRetryAfter(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("limited", `{"rate_limit_rpm": 5}`)
		ctx := t.Context()
		h.provision(c, "u1")
		for i := range 5 {
			res, err := c.Admit(ctx, "u1", client.AdmitOptions{})
			require.NoError(t, err, "admit %d", i+1)
			require.True(t, res.Admitted)
		}
		r := h.do(http.MethodPost, "/engines/u1/admit", "", map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey})
		require.Equal(t, http.StatusTooManyRequests, r.status)
		checkGolden(t, "rate_limited", r)
		require.Equal(t, "60", r.header.Get("Retry-After"), "the clock stands still: the oldest slot frees in exactly 60 s")

		_, err := c.Admit(ctx, "u1", client.AdmitOptions{})
		e := apiError(t, err, 429, client.CodeRateLimited)
		require.Equal(t, 60*time.Second, e.RetryAfter)

		h.clock.Advance(59*time.Second + 500*time.Millisecond)
		_, err = c.Admit(ctx, "u1", client.AdmitOptions{})
		e = apiError(t, err, 429, client.CodeRateLimited)
		require.Equal(t, time.Second, e.RetryAfter, "half a second rounds up to one")

		h.clock.Advance(time.Second)
		res, err := c.Admit(ctx, "u1", client.AdmitOptions{})
		require.NoError(t, err)
		require.True(t, res.Admitted)
	})
}

func TestQuotaExceeded(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, _ := h.product("small", `{"max_engines": 1}`)
		ctx := t.Context()
		h.provision(c, "u1")
		_, err := c.Provision(ctx, client.ProvisionRequest{UserID: "u2"})
		checkGoldenErr(t, h, "quota_exceeded", err, 429, client.CodeQuotaExceeded)
		_, err = c.Admit(ctx, "u3", client.AdmitOptions{AutoProvision: true})
		apiError(t, err, 429, client.CodeQuotaExceeded)
	})
}

func TestHealth(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		hl, err := h.admin.Health(t.Context())
		require.NoError(t, err)
		require.Equal(t, "ok", hl.Status)

		require.NoError(t, h.store.Close())
		r := h.do(http.MethodGet, "/health", "", nil)
		require.Equal(t, http.StatusServiceUnavailable, r.status)
		checkGolden(t, "database_unavailable", r)
	})
}

func TestStatusTableCoversEveryCode(t *testing.T) {
	t.Parallel()
	codes := map[string]string{ // bap code → the client's constant
		bap.CodeEngineNotFound:       client.CodeEngineNotFound,
		bap.CodeEngineAlreadyExists:  client.CodeEngineAlreadyExists,
		bap.CodeEngineAlreadyRunning: client.CodeEngineAlreadyRunning,
		bap.CodeEngineNotRunning:     client.CodeEngineNotRunning,
		bap.CodeEngineBusy:           client.CodeEngineBusy,
		bap.CodeQuotaExceeded:        client.CodeQuotaExceeded,
		bap.CodeRateLimited:          client.CodeRateLimited,
		bap.CodePortExhaustion:       client.CodePortExhaustion,
		bap.CodeBootTimeout:          client.CodeBootTimeout,
		bap.CodeImageNotFound:        client.CodeImageNotFound,
		bap.CodeBackendUnavailable:   client.CodeBackendUnavailable,
		bap.CodeBackendError:         client.CodeBackendError,
		bap.CodeDatabaseUnavailable:  client.CodeDatabaseUnavailable,
		bap.CodeInvalidPlatformKey:   client.CodeInvalidPlatformKey,
		bap.CodeInvalidAdminKey:      client.CodeInvalidAdminKey,
		bap.CodeProductSlugExists:    client.CodeProductSlugExists,
		bap.CodeProductNotFound:      client.CodeProductNotFound,
		bap.CodeValidation:           client.CodeValidation,
		bap.CodePayloadTooLarge:      client.CodePayloadTooLarge,
		bap.CodeNotFound:             client.CodeNotFound,
		bap.CodeMethodNotAllowed:     client.CodeMethodNotAllowed,
		bap.CodeInternal:             client.CodeInternal,
		bap.CodeUpgradeFailed:        client.CodeUpgradeFailed,
		bap.CodeRolloutInProgress:    client.CodeRolloutInProgress,
		bap.CodeRolloutNotFound:      client.CodeRolloutNotFound,
	}
	table := api.StatusOf()
	require.Len(t, table, len(codes))
	for code, clientCode := range codes {
		require.Equal(t, code, clientCode)
		require.Contains(t, table, code)
	}
	want := map[string]int{
		"ENGINE_NOT_FOUND": 404, "ENGINE_ALREADY_EXISTS": 409, "ENGINE_ALREADY_RUNNING": 409,
		"ENGINE_NOT_RUNNING": 409, "ENGINE_BUSY": 409, "QUOTA_EXCEEDED": 429, "RATE_LIMITED": 429,
		"PORT_EXHAUSTION": 503, "BOOT_TIMEOUT": 504, "IMAGE_NOT_FOUND": 502, "BACKEND_UNAVAILABLE": 503,
		"BACKEND_ERROR": 502, "DATABASE_UNAVAILABLE": 503, "INVALID_PLATFORM_KEY": 401,
		"INVALID_ADMIN_KEY": 401, "PRODUCT_SLUG_EXISTS": 409, "PRODUCT_NOT_FOUND": 404,
		"VALIDATION_ERROR": 422, "PAYLOAD_TOO_LARGE": 413, "NOT_FOUND": 404,
		"METHOD_NOT_ALLOWED": 405, "INTERNAL": 500,
		"UPGRADE_FAILED": 502, "ROLLOUT_IN_PROGRESS": 409, "ROLLOUT_NOT_FOUND": 404,
	}
	require.Equal(t, want, table)
}
