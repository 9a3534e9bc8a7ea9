package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/storetest"
)

func TestRegisterProduct(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		admin := map[string]string{api.HeaderAdminKey: h.adminKey}

		r := h.do(http.MethodPost, "/products/register", `{"slug":"demo","display_name":"Demo","policy":{"max_engines":1000, "rate_limit_rpm":600, "tier":"gold"}}`, admin)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		body := r.json(t)
		require.Equal(t, []string{"platform_api_key", "product_id", "slug"}, keysOf(body))
		key := body["platform_api_key"].(string)
		h.remember(key)
		require.True(t, strings.HasPrefix(key, "pk-sept-"))
		require.Len(t, key, len("pk-sept-")+43, "32 random bytes, URL-safe base64 without padding")
		id := body["product_id"].(string)

		p, err := h.store.GetProduct(ctx, id)
		require.NoError(t, err)
		require.Equal(t, "demo", p.Slug)
		require.Equal(t, "Demo", p.DisplayName)
		require.NotContains(t, p.APIKeyHash, "pk-sept-", "only the hash is stored")
		require.JSONEq(t, `{"max_engines":1000,"rate_limit_rpm":600,"tier":"gold"}`, string(p.Policy.JSON()), "unknown keys are kept")
		entries, _, err := h.store.ListAudit(ctx, registry.AuditFilter{ProductID: id})
		require.NoError(t, err)
		require.Len(t, entries, 1)
		require.Equal(t, audit.PolicyRegister, entries[0].Action)
		require.Equal(t, audit.ActorAdmin, entries[0].Actor)

		// The key works.
		st, err := h.platform(key).Status(ctx)
		require.NoError(t, err)
		require.Equal(t, "ok", st.Health)

		r = h.do(http.MethodPost, "/products/register", `{"slug":"demo","display_name":"Again"}`, admin)
		require.Equal(t, http.StatusConflict, r.status)
		checkGolden(t, "product_slug_exists", r)

		bad := []struct{ golden, body string }{
			{"register_slug_missing", `{"display_name":"X"}`},
			{"register_slug_pattern", `{"slug":"Not OK","display_name":"X"}`},
			{"register_slug_pattern", `{"slug":"-lead","display_name":"X"}`},
			{"register_slug_pattern", `{"slug":"` + strings.Repeat("a", 64) + `","display_name":"X"}`},
			{"register_slug_type", `{"slug":7,"display_name":"X"}`},
			{"register_display_name_missing", `{"slug":"x1"}`},
			{"register_display_name_empty", `{"slug":"x1","display_name":"  "}`},
			{"register_display_name_type", `{"slug":"x1","display_name":true}`},
			{"register_policy_type", `{"slug":"x1","display_name":"X","policy":[1]}`},
			{"register_policy_value_type", `{"slug":"x1","display_name":"X","policy":{"max_engines":"ten"}}`},
			{"register_policy_negative", `{"slug":"x1","display_name":"X","policy":{"rate_limit_rpm":-1}}`},
			{"register_policy_fraction", `{"slug":"x1","display_name":"X","policy":{"max_running":1.5}}`},
			{"register_policy_cpus", `{"slug":"x1","display_name":"X","policy":{"engine_cpus":"two"}}`},
		}
		for _, tc := range bad {
			r := h.do(http.MethodPost, "/products/register", tc.body, admin)
			require.Equal(t, http.StatusUnprocessableEntity, r.status, "%s: %s", tc.body, r.body)
			checkGolden(t, tc.golden, r)
		}
		products, err := h.store.ListProducts(ctx)
		require.NoError(t, err)
		require.Len(t, products, 1, "rejected registrations leave no product")

		// policy is optional, and null means {}.
		p2, err := h.admin.RegisterProduct(ctx, client.ProductRequest{Slug: "x1", DisplayName: "X"})
		require.NoError(t, err)
		h.remember(p2.PlatformAPIKey)
		got, err := h.store.GetProduct(ctx, p2.ProductID)
		require.NoError(t, err)
		require.JSONEq(t, `{}`, string(got.Policy.JSON()))
	})
}

func TestUpdatePolicy(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		c, p := h.product("tenant", `{"max_engines": 1}`)
		h.provision(c, "u1")
		_, err := c.Provision(ctx, client.ProvisionRequest{UserID: "u2"})
		apiError(t, err, 429, client.CodeQuotaExceeded)

		pol, err := h.admin.UpdatePolicy(ctx, p.ProductID, client.Policy{"max_engines": 5, "note": "raised"})
		require.NoError(t, err)
		require.Equal(t, client.Policy{"max_engines": float64(5), "note": "raised"}, pol)
		h.provision(c, "u2") // takes effect on the next request
		require.Equal(t, 1, h.auditCount(p.ProductID, audit.PolicyUpdate))

		// Tightening never destroys engines.
		_, err = h.admin.UpdatePolicy(ctx, p.ProductID, client.Policy{"max_engines": 0})
		require.NoError(t, err)
		require.Equal(t, 2, h.engineCount(p.ProductID))

		admin := map[string]string{api.HeaderAdminKey: h.adminKey}
		r := h.do(http.MethodPut, "/products/"+p.ProductID+"/policy", `{"policy":{"max_engines":"many"}}`, admin)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		checkGolden(t, "policy_value_type", r)
		r = h.do(http.MethodPut, "/products/"+p.ProductID+"/policy", `{}`, admin)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		checkGolden(t, "policy_missing", r)
		r = h.do(http.MethodPut, "/products/"+p.ProductID+"/policy", `{"policy":null}`, admin)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		r = h.do(http.MethodPut, "/products/"+p.ProductID+"/policy", `{"policy":"open"}`, admin)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		checkGolden(t, "policy_not_object", r)
		require.Equal(t, 2, h.auditCount(p.ProductID, audit.PolicyUpdate), "rejected updates are not audited")

		for _, id := range []string{"00000000-0000-4000-8000-000000000000", "not-a-uuid", "1'; DROP TABLE products;--"} {
			_, err := h.admin.UpdatePolicy(ctx, id, client.Policy{})
			checkGoldenErr(t, h, "product_not_found", err, 404, client.CodeProductNotFound)
		}

		// Upper-case ids name the same product.
		_, err = h.admin.UpdatePolicy(ctx, strings.ToUpper(p.ProductID), client.Policy{})
		require.NoError(t, err)
	})
}

func TestRotatePlatformKey(t *testing.T) {
	eachHarness(t, options{grace: 300 * time.Second}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		old, p := h.product("rotating", "")

		rot, err := h.admin.RotatePlatformKey(ctx, p.ProductID)
		require.NoError(t, err)
		h.remember(rot.PlatformAPIKey)
		require.Equal(t, p.ProductID, rot.ProductID)
		require.NotEqual(t, p.PlatformAPIKey, rot.PlatformAPIKey)
		require.True(t, strings.HasPrefix(rot.PlatformAPIKey, "pk-sept-"))
		require.Equal(t, h.clock.Now().Add(300*time.Second), rot.PreviousKeyExpiresAt.UTC())
		require.Equal(t, 1, h.auditCount(p.ProductID, audit.PlatformKeyRotated))

		fresh := h.platform(rot.PlatformAPIKey)
		_, err = fresh.Status(ctx)
		require.NoError(t, err)
		_, err = old.Status(ctx)
		require.NoError(t, err, "the old key works during the grace period")
		res, err := old.Admit(ctx, "u1", client.AdmitOptions{})
		require.NoError(t, err, "admit authenticates old keys too")
		require.False(t, res.Admitted)

		h.clock.Advance(301 * time.Second)
		_, err = old.Status(ctx)
		apiError(t, err, 401, client.CodeInvalidPlatformKey)
		_, err = old.Admit(ctx, "u1", client.AdmitOptions{})
		apiError(t, err, 401, client.CodeInvalidPlatformKey)
		_, err = fresh.Status(ctx)
		require.NoError(t, err)

		_, err = h.admin.RotatePlatformKey(ctx, "00000000-0000-4000-8000-000000000000")
		apiError(t, err, 404, client.CodeProductNotFound)
		_, err = client.New(h.srv.URL, client.WithAdminKey("nope")).RotatePlatformKey(ctx, p.ProductID)
		apiError(t, err, 401, client.CodeInvalidAdminKey)
		require.Equal(t, 1, h.auditCount(p.ProductID, audit.PlatformKeyRotated))
	})
}

func TestRotatePlatformKeyWithoutGrace(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t), options{})
	ctx := t.Context()
	old, p := h.product("nograce", "")
	rot, err := h.admin.RotatePlatformKey(ctx, p.ProductID)
	require.NoError(t, err)
	h.remember(rot.PlatformAPIKey)
	h.clock.Advance(time.Millisecond)
	_, err = old.Status(ctx)
	apiError(t, err, 401, client.CodeInvalidPlatformKey)
	_, err = h.platform(rot.PlatformAPIKey).Status(ctx)
	require.NoError(t, err)
}
