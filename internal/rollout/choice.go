package rollout

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// rank orders a rollout's engines: sha256 of the rollout id and the user
// id, so the order is stable and a raised percent extends the same set.
func rank(rolloutID, userID string) string {
	sum := sha256.Sum256([]byte(rolloutID + "\x00" + userID))
	return hex.EncodeToString(sum[:])
}

// chosen returns the engines a rollout covers: the first ceil(percent·N/100)
// of the product's N engines in rank order.
func chosen(r bap.Rollout, engines []bap.Engine) []bap.Engine {
	sorted := slices.Clone(engines)
	ranks := make(map[string]string, len(sorted))
	for _, e := range sorted {
		ranks[e.ID] = rank(r.ID, e.UserID)
	}
	slices.SortFunc(sorted, func(a, b bap.Engine) int { return cmp.Compare(ranks[a.ID], ranks[b.ID]) })
	n := (r.Percent*len(sorted) + 99) / 100
	return sorted[:n]
}

// plan is a rollout's chosen engines with their outcomes.
type plan struct {
	chosen   []bap.Engine
	outcomes map[string]bap.RolloutEngine
	counts   Counts
}

func (s *Service) plan(ctx context.Context, r bap.Rollout) (plan, error) {
	engines, _, err := s.store.ListEngines(ctx, registry.EngineFilter{ProductID: r.ProductID})
	if err != nil {
		return plan{}, registry.PublicErr("list engines", err)
	}
	recorded, err := s.store.RolloutEngines(ctx, r.ID)
	if err != nil {
		return plan{}, registry.PublicErr("read rollout engines", err)
	}
	pl := plan{chosen: chosen(r, engines), outcomes: map[string]bap.RolloutEngine{}}
	for _, o := range recorded {
		pl.outcomes[o.EngineID] = o
	}
	for _, e := range pl.chosen {
		switch pl.outcomes[e.ID].Outcome {
		case bap.OutcomeUpgraded:
			pl.counts.Upgraded++
		case bap.OutcomeRolledBack:
			pl.counts.RolledBack++
		case bap.OutcomeSkipped:
			pl.counts.Skipped++
		default:
			pl.counts.Pending++
		}
	}
	return pl, nil
}

func (s *Service) view(ctx context.Context, r bap.Rollout) (View, error) {
	pl, err := s.plan(ctx, r)
	if err != nil {
		return View{}, err
	}
	return View{Rollout: r, Counts: pl.counts}, nil
}
