package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/pgtest"
)

// TestTwoOrchestratorsShareChanges runs two serve processes on one
// PostgreSQL database, as a production deployment with several replicas
// does. A admits from its engine cache; a stop, a key rotation and a
// destroy made through B must apply to A's next admits as soon as
// PostgreSQL's notification arrives, never a cache TTL later. B provisions
// and wakes the engine, so that B's subprocess backend owns its process and
// A hears of the changes through the database only (not through the exit
// of a process of its own).
func TestTwoOrchestratorsShareChanges(t *testing.T) {
	env := baseEnv(t, pgtest.URL(t))
	env["ORCH_ADMIT_CACHE_S"] = "600" // only a notification can end an entry here
	// The production probe interval: a checker in one process does not know
	// of an operation in flight in the other, and at the tests' 0.2 s it
	// counts three failed probes while B stops or re-keys the engine.
	env["ORCH_HEALTH_CHECK_INTERVAL_S"] = "30"
	ctx := context.Background()
	a, b := startServe(t, env), startServe(t, env)
	prod, err := adminClient(a.url, env).RegisterProduct(ctx, client.ProductRequest{Slug: "acme", DisplayName: "Acme"})
	require.NoError(t, err)
	pa := client.New(a.url, client.WithPlatformKey(prod.PlatformAPIKey))
	pb := client.New(b.url, client.WithPlatformKey(prod.PlatformAPIKey))

	first, err := pb.Admit(ctx, "alice", client.AdmitOptions{AutoProvision: true})
	require.NoError(t, err)
	require.True(t, first.Admitted)
	// warmA fills A's cache with alice's running engine.
	warmA := func() {
		t.Helper()
		for range 3 {
			adm, err := pa.Admit(ctx, "alice", client.AdmitOptions{})
			require.NoError(t, err)
			require.True(t, adm.Admitted)
		}
	}
	warmA()

	// waitA admits through A until want holds, and says how long after the
	// change through B that took.
	waitA := func(what string, opts client.AdmitOptions, want func(client.AdmitResult) bool) client.AdmitResult {
		t.Helper()
		began := time.Now()
		var last client.AdmitResult
		require.Eventually(t, func() bool {
			var err error
			last, err = pa.Admit(ctx, "alice", opts)
			require.NoError(t, err)
			return want(last)
		}, 5*time.Second, time.Millisecond, "%s through B never applied to A's admits", what)
		t.Logf("%s through B applied to A's admits after %s", what, time.Since(began).Round(time.Microsecond))
		for range 3 {
			again, err := pa.Admit(ctx, "alice", opts)
			require.NoError(t, err)
			require.True(t, want(again), "%s through B applied to one admit of A's, not to the next: admitted %v, reason %q, engine %+v",
				what, again.Admitted, again.Reason, again.Engine)
		}
		return last
	}

	_, err = pb.Stop(ctx, "alice")
	require.NoError(t, err)
	waitA("a stop", client.AdmitOptions{}, func(r client.AdmitResult) bool {
		return !r.Admitted && r.Reason == "engine_stopped"
	})
	woken, err := pb.Admit(ctx, "alice", client.AdmitOptions{AutoWake: true})
	require.NoError(t, err)
	require.True(t, woken.Admitted)
	warmA()

	rot, err := pb.RotateKey(ctx, "alice")
	require.NoError(t, err)
	got := waitA("a key rotation", client.AdmitOptions{}, func(r client.AdmitResult) bool {
		return r.Admitted && r.Engine.APIKey == rot.APIKey
	})
	require.Equal(t, http.StatusOK, engineAnswers(t, got.Engine.URL, got.Engine.APIKey))
	require.Equal(t, http.StatusUnauthorized, engineAnswers(t, got.Engine.URL, woken.Engine.APIKey), "the old key is dead")
	warmA()

	_, err = pb.Destroy(ctx, "alice")
	require.NoError(t, err)
	waitA("a destroy", client.AdmitOptions{}, func(r client.AdmitResult) bool {
		return !r.Admitted && r.Reason == "engine_not_found"
	})
}
