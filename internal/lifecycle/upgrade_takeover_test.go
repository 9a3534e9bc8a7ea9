package lifecycle_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
)

// TestInterruptedUpgradeIsFinishedOrRolledBack leaves an upgrade as a
// replica that died in each of its phases would have left it — the claim
// with its detail on the row, the instance and the brain half-way — and
// checks that reconciliation's takeover brings the engine to one version,
// running, with the brain it had before the upgrade.
func TestInterruptedUpgradeIsFinishedOrRolledBack(t *testing.T) {
	const newImage, badImage = "september-engine:next", "september-engine:refused"
	cases := []struct {
		name, phase, to string
		// made: the dead replica took the snapshot, removed the old
		// instance and created the new one (started: and started it, and
		// the new version wrote to the brain).
		made, started bool
		wantImage     string
		wantAction    audit.Action
	}{
		{name: "before the snapshot", phase: "snapshotting", to: newImage, wantImage: testImage, wantAction: audit.UpgradeRolledBack},
		{name: "creating", phase: "creating", to: newImage, made: true, wantImage: testImage, wantAction: audit.UpgradeRolledBack},
		{name: "new version answers", phase: "waiting_for_health", to: newImage, made: true, started: true, wantImage: newImage, wantAction: audit.Upgrade},
		{name: "new version refuses", phase: "waiting_for_health", to: badImage, made: true, started: true, wantImage: testImage, wantAction: audit.UpgradeRolledBack},
		{name: "rolling back", phase: "rolling_back", to: newImage, made: true, started: true, wantImage: testImage, wantAction: audit.UpgradeRolledBack},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := backendtest.NewFake()
			t.Cleanup(fake.Close)
			fake.RefuseImage(badImage)
			en := newEnv(t, fake, envOptions{bootTimeout: time.Second})
			ctx := context.Background()
			res, err := en.lm.Provision(ctx, en.product, "alice", "", "test")
			require.NoError(t, err)
			e := res.Engine
			require.Equal(t, 1, execute(t, e, res.APIKey, "before"))

			// What the dead replica did.
			require.NoError(t, fake.Stop(ctx, e.ID, time.Second))
			detail := map[string]any{"from": e.Image, "to": tc.to, "prev": "running", "phase": tc.phase}
			if tc.made {
				snap, err := fake.Snapshot(ctx, e.ID)
				require.NoError(t, err)
				detail["snapshot"] = snap
				require.NoError(t, fake.Remove(ctx, e.ID))
				_, err = fake.Create(ctx, backend.Spec{EngineID: e.ID, ProductID: e.ProductID, Image: tc.to, Port: e.Port, KeyHash: e.KeyHash})
				require.NoError(t, err)
				if tc.started {
					require.NoError(t, fake.Start(ctx, e.ID))
					if tc.to != badImage {
						// (A GET first: it retries the connection the old
						// server's close left stale, a POST would not.)
						require.Equal(t, 1, brainCounter(t, e, res.APIKey))
						require.Equal(t, 2, execute(t, e, res.APIKey, "written by the new version"))
					}
				}
			}
			raw, err := json.Marshal(detail)
			require.NoError(t, err)
			cur, err := en.store.GetEngine(ctx, e.ID)
			require.NoError(t, err)
			cur.Claim = bap.Claim{Op: bap.OpUpgrade, Owner: uuid.NewString(), Epoch: cur.Claim.Epoch + 1,
				StartedAt: ptrTime(bap.Now()), Detail: string(raw)}
			require.NoError(t, en.store.UpdateEngine(ctx, cur))

			_, err = en.lm.Reconcile(ctx)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				cur, err = en.store.GetEngine(ctx, e.ID)
				require.NoError(t, err)
				return !cur.Claim.Held()
			}, 10*time.Second, 10*time.Millisecond, "the dead replica's upgrade is taken over")
			require.Equal(t, bap.StateRunning, cur.Status)
			require.Equal(t, tc.wantImage, cur.Image)
			want := 1 // the brain as it was before the upgrade...
			if tc.wantImage == newImage && tc.started {
				want = 2 // ...or as the new version, which stays, left it
			}
			require.Equal(t, want, brainCounter(t, e, res.APIKey))
			actions := auditActions(t, en.store, e.ID)
			require.Equal(t, tc.wantAction, actions[len(actions)-1])
			require.NoError(t, en.lm.Close(ctx))
		})
	}
}

func ptrTime(t time.Time) *time.Time { return &t }
