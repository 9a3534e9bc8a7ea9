package api_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry/registrytest"
)

func TestFleetStatusHealth(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		c, p := h.product("fleet", "")
		other, po := h.product("other", "")

		st, err := c.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, client.FleetStatus{
			ByStatus: map[string]int{"provisioning": 0, "running": 0, "sleeping": 0, "stopped": 0, "failed": 0, "destroying": 0},
			Health:   client.HealthOK,
		}, st)

		add := func(productID string, n int, state bap.State) {
			for range n {
				registrytest.NewEngine(t, h.store, productID, "u-"+fmt.Sprint(time.Now().UnixNano()), registrytest.WithStatus(state))
			}
		}
		add(p.ProductID, 6, bap.StateRunning)
		add(p.ProductID, 1, bap.StateSleeping)
		add(p.ProductID, 1, bap.StateFailed)
		add(po.ProductID, 5, bap.StateFailed) // another product's failures do not count
		st, err = c.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, 8, st.Total)
		require.Equal(t, 6, st.ByStatus["running"])
		require.Equal(t, 1, st.ByStatus["sleeping"])
		require.Equal(t, 1, st.UnhealthyCount)
		require.Equal(t, client.HealthDegraded, st.Health, "1 of 8 failed")

		add(p.ProductID, 1, bap.StateFailed)
		add(p.ProductID, 1, bap.StateStopped)
		st, err = c.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, 10, st.Total)
		require.Equal(t, client.HealthDegraded, st.Health, "2 of 10 failed is under 25 %")

		add(p.ProductID, 1, bap.StateFailed) // 3 of 11: over 25 %
		st, err = c.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, client.HealthCritical, st.Health)
		require.Equal(t, 3, st.UnhealthyCount)

		ost, err := other.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, client.FleetStatus{
			Total:          5,
			ByStatus:       map[string]int{"provisioning": 0, "running": 0, "sleeping": 0, "stopped": 0, "failed": 5, "destroying": 0},
			Health:         client.HealthCritical,
			UnhealthyCount: 5,
		}, ost)
	})
}

func TestFleetMetricsFromAudit(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		c, p := h.product("measured", "")
		m, err := c.Metrics(ctx)
		require.NoError(t, err)
		require.Equal(t, client.FleetMetrics{}, m)

		h.provision(c, "a")
		h.provision(c, "b")
		_, err = c.Destroy(ctx, "a")
		require.NoError(t, err)
		// Older history: outside the last hour, inside the totals.
		old := h.clock.Now().Add(-2 * time.Hour)
		require.NoError(t, h.store.AppendAudit(ctx,
			audit.Entry{Timestamp: old, ProductID: p.ProductID, Action: audit.Provision, Actor: "measured", DurationMS: ptr(int64(90000))},
			audit.Entry{Timestamp: old, ProductID: p.ProductID, Action: audit.HealthFailed, Actor: audit.ActorSystem},
		))
		now := h.clock.Now().Add(-time.Minute)
		require.NoError(t, h.store.AppendAudit(ctx,
			audit.Entry{Timestamp: now, ProductID: p.ProductID, Action: audit.HealthFailed, Actor: audit.ActorSystem},
			audit.Entry{Timestamp: now, ProductID: p.ProductID, Action: audit.AutoRestartStart, Actor: audit.ActorSystem},
			audit.Entry{Timestamp: now, ProductID: p.ProductID, Action: audit.AutoRestartStart, Actor: audit.ActorSystem},
		))

		m, err = c.Metrics(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, m.Provisions1h)
		require.Equal(t, 3, m.TotalProvisions)
		require.Equal(t, 1, m.TotalDestroys)
		require.Equal(t, 1, m.Crashes1h)
		require.Equal(t, 2, m.Restarts1h)
		require.Less(t, m.AvgBootMS, float64(90000), "the average is over the last hour only")
	})
}

func ptr[T any](v T) *T { return &v }

func TestPrometheusEndpoint(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		c, _ := h.product("scraped", "")
		h.provision(c, "secret-user-name")
		_, err := c.Admit(ctx, "secret-user-name", client.AdmitOptions{})
		require.NoError(t, err)

		text, err := h.admin.PrometheusMetrics(ctx)
		require.NoError(t, err)
		require.Contains(t, text, `bap_engine_engines{product="scraped",state="running"} 1`)
		require.Contains(t, text, `bap_engine_engines{product="scraped",state="failed"} 0`)
		require.Contains(t, text, `bap_engine_admit_duration_seconds_count{product="scraped",result="admitted"} 1`)
		require.Contains(t, text, `bap_engine_operation_duration_seconds_count{operation="provision",outcome="ok",product="scraped"} 1`)
		require.Contains(t, text, `bap_engine_boot_duration_seconds_count{product="scraped"} 1`)
		require.Contains(t, text, `route="POST /engines/{user_id}/admit"`)
		require.NotContains(t, text, "secret-user-name", "never labelled by user")

		_, err = c.PrometheusMetrics(ctx)
		apiError(t, err, 401, client.CodeInvalidAdminKey)
	})
}

func TestConcurrentAutoProvisionAdmits(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("crowd", "")
		const n = 100
		results, errs := registrytest.Concurrently(n, func(int) (client.AdmitResult, error) {
			return c.Admit(context.Background(), "newcomer", client.AdmitOptions{AutoProvision: true})
		})
		engineID, key := "", ""
		for i := range n {
			require.NoError(t, errs[i], "admit %d", i)
			require.True(t, results[i].Admitted, "admit %d: %+v", i, results[i])
			if engineID == "" {
				engineID, key = results[i].Engine.EngineID, results[i].Engine.APIKey
				h.remember(key)
			}
			require.Equal(t, engineID, results[i].Engine.EngineID)
			require.Equal(t, key, results[i].Engine.APIKey)
		}
		require.Equal(t, 1, h.engineCount(p.ProductID))
		require.Equal(t, 1, h.auditCount(p.ProductID, audit.Provision))
		require.Equal(t, 1, h.fake.Calls("Create"))
	})
}

func TestConcurrentProvisionsRespectMaxEngines(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		c, p := h.product("capped", `{"max_engines": 10}`)
		const n = 50
		keys, errs := registrytest.Concurrently(n, func(i int) (string, error) {
			res, err := c.Provision(context.Background(), client.ProvisionRequest{UserID: fmt.Sprintf("user-%02d", i)})
			return res.APIKey, err
		})
		h.remember(keys...)
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
				continue
			}
			apiError(t, err, 429, client.CodeQuotaExceeded)
		}
		require.Equal(t, 10, ok)
		require.Equal(t, 10, h.engineCount(p.ProductID))
		require.Equal(t, 10, h.auditCount(p.ProductID, audit.Provision))
		list, err := c.List(t.Context(), client.ListOptions{Status: client.StateRunning, Limit: 1000})
		require.NoError(t, err)
		require.Equal(t, 10, list.Total)
	})
}

func TestListPagination(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		c, p := h.product("paged", "")
		base := time.Now().Add(-time.Hour)
		var ids []string
		for i := range 7 {
			st := bap.StateRunning
			if i%3 == 0 {
				st = bap.StateStopped
			}
			e := registrytest.NewEngine(t, h.store, p.ProductID, fmt.Sprintf("u%d", i),
				registrytest.WithStatus(st), registrytest.WithCreatedAt(bap.Timestamp(base.Add(time.Duration(i)*time.Second))))
			ids = append(ids, e.ID)
		}
		all, err := c.List(ctx, client.ListOptions{})
		require.NoError(t, err)
		require.Equal(t, 7, all.Total)
		var got []string
		for _, e := range all.Engines {
			got = append(got, e.EngineID)
			require.Empty(t, e.APIKey)
		}
		require.Equal(t, ids, got, "ordered by created_at")

		pg, err := c.List(ctx, client.ListOptions{Limit: 2, Offset: 3})
		require.NoError(t, err)
		require.Equal(t, 7, pg.Total)
		require.Len(t, pg.Engines, 2)
		require.Equal(t, ids[3], pg.Engines[0].EngineID)

		stopped, err := c.List(ctx, client.ListOptions{Status: client.StateStopped})
		require.NoError(t, err)
		require.Equal(t, 3, stopped.Total)
		for _, e := range stopped.Engines {
			require.Equal(t, client.StateStopped, e.Status)
		}
		past, err := c.List(ctx, client.ListOptions{Offset: 100})
		require.NoError(t, err)
		require.Equal(t, 7, past.Total)
		require.Empty(t, past.Engines)
	})
}

// TestReplicasListsTheOrchestrators: GET /replicas (admin) shows every
// registered replica, its liveness and the shards it holds.
func TestReplicasListsTheOrchestrators(t *testing.T) {
	eachHarness(t, options{}, func(t *testing.T, h *harness) {
		ctx := t.Context()
		live := registrytest.NewReplica(t, h.store)
		_, took, err := h.store.AcquireLease(ctx, 7, live.ID, time.Hour)
		require.NoError(t, err)
		require.True(t, took)
		list, err := h.admin.Replicas(ctx)
		require.NoError(t, err)
		require.Len(t, list.Replicas, 1)
		got := list.Replicas[0]
		require.Equal(t, live.ID, got.ReplicaID)
		require.Equal(t, live.Host, got.Host)
		require.Equal(t, live.Pid, got.Pid)
		require.True(t, got.Alive)
		require.Equal(t, 1, got.Shards)

		_, err = h.platform("pk-sept-nope").Replicas(ctx)
		require.Equal(t, client.CodeInvalidAdminKey, client.ErrorCode(err))
	})
}
