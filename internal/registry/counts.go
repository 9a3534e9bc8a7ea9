package registry

import (
	"context"

	"github.com/september/bap-engine/internal/bap"
)

// StateNames are bap.States as the strings metrics label them with.
func StateNames() []string {
	out := make([]string, len(bap.States))
	for i, st := range bap.States {
		out[i] = string(st)
	}
	return out
}

// EngineCounts is store's CountByProductStatus keyed by state name, the
// shape metrics.Config.Engines wants.
func EngineCounts(store Store) func(context.Context) (map[string]map[string]int, error) {
	return func(ctx context.Context) (map[string]map[string]int, error) {
		counts, err := store.CountByProductStatus(ctx)
		if err != nil {
			return nil, err
		}
		out := make(map[string]map[string]int, len(counts))
		for slug, byState := range counts {
			m := make(map[string]int, len(byState))
			for st, n := range byState {
				m[string(st)] = n
			}
			out[slug] = m
		}
		return out, nil
	}
}
