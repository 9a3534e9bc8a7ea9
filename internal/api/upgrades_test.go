package api_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/api"
)

func TestUpgradeRoute(t *testing.T) {
	eachHarness(t, options{bootTimeout: 500 * time.Millisecond}, func(t *testing.T, h *harness) {
		c, p := h.product("upgrades", "")
		ctx := t.Context()
		prov := h.provision(c, "alice")

		up, err := c.Upgrade(ctx, "alice", "september-engine:2.4.0")
		require.NoError(t, err)
		require.Equal(t, client.Upgraded{EngineID: prov.EngineID, UserID: "alice", Status: "running", URL: prov.URL,
			EngineVersion: "september-engine:2.4.0", PreviousVersion: "september-engine:test"}, up)
		got, err := c.Get(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, "september-engine:2.4.0", got.EngineVersion)
		require.Nil(t, got.Operation)

		h.fake.RefuseImage("september-engine:broken")
		_, err = c.Upgrade(ctx, "alice", "september-engine:broken")
		e := checkGoldenErrRet(t, h, "upgrade_failed", err, http.StatusBadGateway, client.CodeUpgradeFailed)
		require.Contains(t, e.Message, "refused", "the engine's reason")
		got, err = c.Get(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, "september-engine:2.4.0", got.EngineVersion, "rolled back")
		require.Equal(t, "running", got.Status)

		key := map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey}
		for _, body := range []string{``, `{}`, `{"engine_version":""}`, `{"engine_version":7}`, `{"engine_version":"has space"}`, `[]`} {
			r := h.do(http.MethodPost, "/engines/alice/upgrade", body, key)
			require.Equal(t, http.StatusUnprocessableEntity, r.status, "body %q: %s", body, r.body)
		}
		_, err = c.Upgrade(ctx, "nobody", "v2")
		apiError(t, err, http.StatusNotFound, client.CodeEngineNotFound)
		// Another product's engine is as absent as none.
		other, _ := h.product("other", "")
		_, err = other.Upgrade(ctx, "alice", "v2")
		apiError(t, err, http.StatusNotFound, client.CodeEngineNotFound)
	})
}

// rolloutDone waits for the product's rollout to be done and returns it.
func rolloutDone(t *testing.T, h *harness, product, rolloutID string) client.Rollout {
	t.Helper()
	var ro client.Rollout
	require.Eventually(t, func() bool {
		var err error
		ro, err = h.admin.Rollout(t.Context(), product, rolloutID)
		require.NoError(t, err)
		return ro.State == "done"
	}, 10*time.Second, 10*time.Millisecond)
	return ro
}

func TestRolloutRoutes(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("fleet", "")
		ctx := t.Context()
		for i := range 4 {
			h.provision(c, fmt.Sprintf("u%d", i))
		}

		ro, err := h.admin.CreateRollout(ctx, "fleet", client.RolloutRequest{EngineVersion: "september-engine:2.4.0", Percent: 50})
		require.NoError(t, err)
		require.Equal(t, "running", ro.State)
		require.Equal(t, 2, ro.MaxParallel)
		require.Equal(t, 1, ro.MaxFailures)
		_, err = h.admin.CreateRollout(ctx, p.ProductID, client.RolloutRequest{EngineVersion: "v3", Percent: 10})
		checkGoldenErr(t, h, "rollout_in_progress", err, http.StatusConflict, client.CodeRolloutInProgress)

		ro = rolloutDone(t, h, "fleet", ro.RolloutID)
		require.Equal(t, client.RolloutCounts{Upgraded: 2}, ro.Counts)

		_, err = h.admin.RaiseRollout(ctx, "fleet", ro.RolloutID, 25)
		apiError(t, err, http.StatusUnprocessableEntity, client.CodeValidation)
		ro, err = h.admin.RaiseRollout(ctx, p.ProductID, ro.RolloutID, 100)
		require.NoError(t, err)
		require.Equal(t, 100, ro.Percent)
		paused, err := h.admin.RolloutAction(ctx, "fleet", ro.RolloutID, "pause")
		require.NoError(t, err)
		if paused.State == "paused" {
			resumed, err := h.admin.RolloutAction(ctx, "fleet", ro.RolloutID, "resume")
			require.NoError(t, err)
			require.Equal(t, "running", resumed.State)
		}
		ro = rolloutDone(t, h, "fleet", ro.RolloutID)
		require.Equal(t, client.RolloutCounts{Upgraded: 4}, ro.Counts)
		_, err = h.admin.RolloutAction(ctx, "fleet", ro.RolloutID, "abort")
		apiError(t, err, http.StatusUnprocessableEntity, client.CodeValidation)

		list, err := h.admin.Rollouts(ctx, "fleet")
		require.NoError(t, err)
		require.Equal(t, 1, list.Total)
		_, err = h.admin.Rollout(ctx, "fleet", "5b4c4d2e-0000-4000-8000-000000000000")
		checkGoldenErr(t, h, "rollout_not_found", err, http.StatusNotFound, client.CodeRolloutNotFound)
		_, err = h.admin.Rollout(ctx, "fleet", "not-a-uuid")
		apiError(t, err, http.StatusNotFound, client.CodeRolloutNotFound)
		_, err = h.admin.Rollouts(ctx, "nope")
		apiError(t, err, http.StatusNotFound, client.CodeProductNotFound)
		// Another product's rollout is as absent as none.
		h.product("elsewhere", "")
		_, err = h.admin.Rollout(ctx, "elsewhere", ro.RolloutID)
		apiError(t, err, http.StatusNotFound, client.CodeRolloutNotFound)

		admin := map[string]string{api.HeaderAdminKey: h.adminKey}
		for _, body := range []string{
			``, `{}`, `{"percent":10}`, `{"engine_version":"v2"}`, `{"engine_version":"v2","percent":0}`,
			`{"engine_version":"v2","percent":101}`, `{"engine_version":"v2","percent":1.5}`,
			`{"engine_version":"v2","percent":10,"max_parallel":0}`, `{"engine_version":"v2","percent":10,"max_failures":-1}`,
			`{"engine_version":"has space","percent":10}`, `{"engine_version":"v2","percent":"10"}`,
		} {
			r := h.do(http.MethodPost, "/products/fleet/rollouts", body, admin)
			require.Equal(t, http.StatusUnprocessableEntity, r.status, "body %q: %s", body, r.body)
		}
		r := h.do(http.MethodPatch, "/products/fleet/rollouts/"+ro.RolloutID, `{"percent":"x"}`, admin)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		list, err = h.admin.Rollouts(ctx, "fleet")
		require.NoError(t, err)
		require.Equal(t, 1, list.Total, "rejected requests make no rollout")
	})
}
