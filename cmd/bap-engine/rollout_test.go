package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
	"github.com/september/bap-engine/internal/replica"
)

// versions maps each of the product's engines (by user) to its version.
func versions(t *testing.T, pc *client.Client) map[string]string {
	t.Helper()
	list, err := pc.List(context.Background(), client.ListOptions{Limit: 1000})
	require.NoError(t, err)
	out := map[string]string{}
	for _, e := range list.Engines {
		out[e.UserID] = e.EngineVersion
	}
	return out
}

func usersOn(vs map[string]string, version string) []string {
	var out []string
	for u, v := range vs {
		if v == version {
			out = append(out, u)
		}
	}
	return out
}

// awaitRollout waits until the rollout is in state and returns it.
func awaitRollout(t *testing.T, ac *client.Client, id, state string) client.Rollout {
	t.Helper()
	var ro client.Rollout
	require.Eventually(t, func() bool {
		var err error
		ro, err = ac.Rollout(context.Background(), "acme", id)
		require.NoError(t, err)
		return ro.State == state
	}, 60*time.Second, 20*time.Millisecond, "rollout %s reaches %s", id, state)
	return ro
}

// provisionV1 provisions n engines on v1, user-0 to user-<n-1>, each
// remembering its user's name in its brain.
func provisionV1(t *testing.T, pc *client.Client, n int) map[string]client.Provisioned {
	t.Helper()
	keys := map[string]client.Provisioned{}
	for i := range n {
		u := fmt.Sprintf("user-%d", i)
		e, err := pc.Provision(context.Background(), client.ProvisionRequest{UserID: u, EngineVersion: "v1"})
		require.NoError(t, err)
		keys[u] = e
		remember(t, e.URL, e.APIKey, u)
	}
	return keys
}

// TestRolloutUpgradesItsShareAndPausesItself drives rollouts of a 10-engine
// product on a real orchestrator with reference engines: 20 % upgrades
// exactly 2 engines, raising it to 50 % exactly 5 including those 2; a
// rollout to a version the engines refuse pauses itself after its first
// rolled-back upgrade and leaves every engine on a version it runs; a
// rollout to 100 % pins the product's image for new engines.
func TestRolloutUpgradesItsShareAndPausesItself(t *testing.T) {
	eachUpgradeEnv(t, func(t *testing.T, env map[string]string) {
		ctx := context.Background()
		o := startServe(t, env)
		ac := adminClient(o.url, env)
		prod, pc := registerAcme(t, o.url, env)
		keys := provisionV1(t, pc, 10)

		ro, err := ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v2", Percent: 20})
		require.NoError(t, err)
		require.Equal(t, 2, ro.MaxParallel, "default")
		require.Equal(t, 1, ro.MaxFailures, "default")
		_, err = ac.CreateRollout(ctx, prod.ProductID, client.RolloutRequest{EngineVersion: "v3", Percent: 10})
		require.Equal(t, client.CodeRolloutInProgress, client.ErrorCode(err), "one rollout at a time")
		ro = awaitRollout(t, ac, ro.RolloutID, "done")
		require.Equal(t, client.RolloutCounts{Upgraded: 2}, ro.Counts)
		first := usersOn(versions(t, pc), "v2")
		require.Len(t, first, 2, "exactly ceil(20%% of 10)")
		for _, u := range first {
			require.Equal(t, "v2", versionOf(t, keys[u].URL))
			counter, notes := brainOf(t, keys[u].URL, keys[u].APIKey)
			require.Equal(t, 1, counter)
			require.Equal(t, []string{u}, notes, "brain kept")
		}

		_, err = ac.RaiseRollout(ctx, "acme", ro.RolloutID, 10)
		require.Equal(t, client.CodeValidation, client.ErrorCode(err), "never lower")
		ro, err = ac.RaiseRollout(ctx, "acme", ro.RolloutID, 50)
		require.NoError(t, err)
		require.Equal(t, 50, ro.Percent)
		ro = awaitRollout(t, ac, ro.RolloutID, "done")
		require.Equal(t, client.RolloutCounts{Upgraded: 5}, ro.Counts)
		second := usersOn(versions(t, pc), "v2")
		require.Len(t, second, 5, "exactly 50%% of 10")
		require.Subset(t, second, first, "raising the percent extends the same set")

		// A version the engines refuse: the first rolled-back upgrade
		// pauses the rollout (max_failures 1, one at a time).
		bad, err := ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v-bad", Percent: 100, MaxParallel: 1})
		require.NoError(t, err)
		bad = awaitRollout(t, ac, bad.RolloutID, "paused")
		require.Equal(t, 1, bad.Counts.RolledBack)
		require.Zero(t, bad.Counts.Upgraded)
		require.Contains(t, bad.Reason, "max_failures")
		vs := versions(t, pc)
		require.Len(t, usersOn(vs, "v2"), 5)
		require.Len(t, usersOn(vs, "v1"), 5)
		for u, v := range vs {
			require.Equal(t, v, versionOf(t, keys[u].URL), "%s runs the version its row names", u)
			counter, _ := brainOf(t, keys[u].URL, keys[u].APIKey)
			require.Equal(t, 1, counter, "%s's brain intact", u)
		}
		_, err = ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v3", Percent: 10})
		require.Equal(t, client.CodeRolloutInProgress, client.ErrorCode(err), "a paused rollout is under way")
		time.Sleep(300 * time.Millisecond)
		again, err := ac.Rollout(ctx, "acme", bad.RolloutID)
		require.NoError(t, err)
		require.Equal(t, bad.Counts, again.Counts, "a paused rollout starts nothing")
		aborted, err := ac.RolloutAction(ctx, "acme", bad.RolloutID, "abort")
		require.NoError(t, err)
		require.Equal(t, "aborted", aborted.State)
		_, err = ac.RolloutAction(ctx, "acme", bad.RolloutID, "resume")
		require.Equal(t, client.CodeValidation, client.ErrorCode(err))

		// To 100 %: every engine, then new engines get the version.
		all, err := ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v2", Percent: 100, MaxParallel: 3})
		require.NoError(t, err)
		all = awaitRollout(t, ac, all.RolloutID, "done")
		require.Equal(t, client.RolloutCounts{Upgraded: 10}, all.Counts)
		require.Len(t, usersOn(versions(t, pc), "v2"), 10)
		fresh, err := pc.Provision(ctx, client.ProvisionRequest{UserID: "newcomer"})
		require.NoError(t, err)
		require.Equal(t, "v2", versionOf(t, fresh.URL), "policy.engine_version pins the product's image")

		list, err := ac.Rollouts(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, 3, list.Total)
		require.Equal(t, all.RolloutID, list.Rollouts[0].RolloutID, "newest first")
		_, err = ac.Rollout(ctx, "acme", "00000000-0000-0000-0000-000000000000")
		require.Equal(t, client.CodeRolloutNotFound, client.ErrorCode(err))
		_, err = ac.Rollouts(ctx, "nope")
		require.Equal(t, client.CodeProductNotFound, client.ErrorCode(err))
		// The CLI reads the same rollouts.
		cliEnv := map[string]string{"BAP_URL": o.url, "BAP_ADMIN_KEY": env["ORCH_ADMIN_KEY"]}
		stdout, stderr, err := cliRun(t, cliEnv, "rollouts", "ls", "acme", "-o", "json")
		require.NoError(t, err, stderr)
		var listed client.RolloutList
		require.NoError(t, json.Unmarshal([]byte(stdout), &listed), stdout)
		require.Equal(t, list, listed)
		stdout, stderr, err = cliRun(t, cliEnv, "rollouts", "get", "acme", bad.RolloutID)
		require.NoError(t, err, stderr)
		require.Contains(t, stdout, "aborted")
		require.Contains(t, stdout, "1 rolled back")
		_, stderr, err = cliRun(t, cliEnv, "rollouts", "resume", "acme", bad.RolloutID)
		require.Error(t, err, "resuming an aborted rollout fails")
		require.Contains(t, stderr, "VALIDATION_ERROR")

		var apiErr *client.Error
		_, err = ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v9", Percent: 101})
		require.ErrorAs(t, err, &apiErr)
		require.Equal(t, http.StatusUnprocessableEntity, apiErr.Status)
	})
}

// TestRolloutSurvivesTheLeadersDeath runs a rollout on two replicas and
// SIGKILLs the one that runs it (the leader shard's holder) mid-way: the
// other takes the rollout over and finishes it, every engine ends on the
// new version with its brain, and no engine is left with a claim.
func TestRolloutSurvivesTheLeadersDeath(t *testing.T) {
	c := newCluster(t, 2, func(env map[string]string) {
		engineEnv(env, "ENGINE_WARMUP_S", "0.3")
	})
	ctx := context.Background()
	pc := c.platform(c.procs[0])
	keys := provisionV1(t, pc, 6)
	leader := c.holderOfShard(replica.LeaderShard)
	require.NotNil(t, leader)
	var other *replicaProc
	for _, p := range c.procs {
		if p != leader {
			other = p
		}
	}
	ac := adminClient(other.url, c.env)
	ro, err := ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v2", Percent: 100, MaxParallel: 1})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := ac.Rollout(ctx, "acme", ro.RolloutID)
		require.NoError(t, err)
		return got.Counts.Upgraded >= 2
	}, 60*time.Second, 20*time.Millisecond)
	c.kill(leader)
	t.Logf("killed the leader %s mid-rollout", leader.name)

	var got client.Rollout
	require.Eventually(t, func() bool {
		got, err = ac.Rollout(ctx, "acme", ro.RolloutID)
		require.NoError(t, err)
		return got.State == "done"
	}, takeoverBound+60*time.Second, 50*time.Millisecond, "the surviving replica finishes the rollout: %+v", got)
	require.Equal(t, client.RolloutCounts{Upgraded: 6}, got.Counts)
	for u, e := range keys {
		row, ok := c.settled(e.EngineID, takeoverBound, "rollout engine "+u)
		require.True(t, ok)
		require.Equal(t, "v2", row.Image)
		require.Equal(t, "v2", versionOf(t, e.URL), "%s runs v2", u)
		counter, notes := brainOf(t, e.URL, e.APIKey)
		require.Equal(t, 1, counter)
		require.Equal(t, []string{u}, notes)
	}
}

// holderOfShard is the live replica process holding shard.
func (c *cluster) holderOfShard(shard int) *replicaProc {
	c.t.Helper()
	leases, err := c.store.Leases(context.Background())
	require.NoError(c.t, err)
	for _, l := range leases {
		if l.Shard != shard || l.ReplicaID == "" {
			continue
		}
		for _, p := range c.procs {
			if c.replicaID(p) == l.ReplicaID {
				return p
			}
		}
	}
	return nil
}

// TestRolloutResumesAfterARestart SIGKILLs a lone orchestrator on SQLite
// mid-rollout: started again, it takes over the interrupted upgrade and
// finishes the rollout.
func TestRolloutResumesAfterARestart(t *testing.T) {
	env := upgradeEnv(t, stores()[0].url(t))
	engineEnv(env, "ENGINE_WARMUP_S", "0.3")
	ctx := context.Background()
	c := startChild(t, env)
	ac := adminClient(c.url, env)
	_, pc := registerAcme(t, c.url, env)
	keys := provisionV1(t, pc, 4)
	ro, err := ac.CreateRollout(ctx, "acme", client.RolloutRequest{EngineVersion: "v2", Percent: 100, MaxParallel: 1})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := ac.Rollout(ctx, "acme", ro.RolloutID)
		require.NoError(t, err)
		return got.Counts.Upgraded >= 1
	}, 30*time.Second, 10*time.Millisecond)
	c.kill(t)

	c = startChild(t, env)
	ac = adminClient(c.url, env)
	var got client.Rollout
	require.Eventually(t, func() bool {
		got, err = ac.Rollout(ctx, "acme", ro.RolloutID)
		require.NoError(t, err)
		return got.State == "done"
	}, 30*time.Second, 20*time.Millisecond, "the restarted orchestrator finishes the rollout: %+v", got)
	require.Equal(t, client.RolloutCounts{Upgraded: 4}, got.Counts)
	for u, e := range keys {
		require.Equal(t, "v2", versionOf(t, e.URL), "%s runs v2", u)
		counter, _ := brainOf(t, e.URL, e.APIKey)
		require.Equal(t, 1, counter, "%s's brain intact", u)
	}
}
