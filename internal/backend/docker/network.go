package docker

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/moby/moby/client"

	"github.com/september/bap-engine/internal/backend"
)

// ensureNetwork creates the engine network unless it exists.
//
// Daemons before API 1.44 accept two networks of one name, after which
// attaching by name fails as ambiguous for good. So a creator that then sees
// another network of the name removes its own: the last to finish always
// sees the earlier ones, so two never remain. Should racers remove each
// other's at once, the next round (or the next Create, which calls this
// again when the network is missing) creates it anew.
func (b *Backend) ensureNetwork(ctx context.Context) error {
	// Within one process, creators take turns, so no transient duplicate
	// makes a concurrent create or start fail as ambiguous.
	unlock := lockNetwork(b.cli.DaemonHost() + " " + b.cfg.Network)
	defer unlock()
	for round := range networkRounds {
		if round > 0 {
			if err := sleepCtx(ctx, time.Duration(10+mrand.IntN(90))*time.Millisecond); err != nil {
				return fmt.Errorf("create network %s: %w", b.cfg.Network, err)
			}
		}
		exists, err := b.createNetwork(ctx)
		if err != nil || exists {
			return err
		}
	}
	return fmt.Errorf("create network %s: %w: it keeps being created and removed concurrently", b.cfg.Network, backend.ErrConflict)
}

// networkRounds bounds ensureNetwork's create/check rounds.
const networkRounds = 4

// networkLocks serializes network creation per daemon and name in this
// process.
var networkLocks sync.Map // string → *sync.Mutex

func lockNetwork(key string) (unlock func()) {
	v, _ := networkLocks.LoadOrStore(key, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// createNetwork is one round of ensureNetwork: true when the network exists
// (found, or made and unique).
func (b *Backend) createNetwork(ctx context.Context) (bool, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	_, err := b.cli.NetworkInspect(cctx, b.cfg.Network, client.NetworkInspectOptions{})
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(classify(err), backend.ErrNotFound):
		return false, wrap(err, "inspect network %s", b.cfg.Network)
	}
	res, err := b.cli.NetworkCreate(cctx, b.cfg.Network, client.NetworkCreateOptions{
		Driver: "bridge",
		Labels: map[string]string{backend.LabelManaged: "true"},
	})
	switch {
	case errors.Is(classify(err), backend.ErrConflict):
		return true, nil // a daemon that refuses duplicates: someone else made it
	case err != nil:
		return false, wrap(err, "create network %s", b.cfg.Network)
	}
	list, err := b.cli.NetworkList(cctx, client.NetworkListOptions{Filters: make(client.Filters).Add("name", b.cfg.Network)})
	if err != nil {
		return false, wrap(err, "list networks named %s", b.cfg.Network)
	}
	for _, n := range list.Items {
		if n.Name == b.cfg.Network && n.ID != res.ID { // the name filter matches substrings
			_, err := b.cli.NetworkRemove(cctx, res.ID, client.NetworkRemoveOptions{})
			if err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
				return false, wrap(err, "remove duplicate network %s", b.cfg.Network)
			}
			return false, nil
		}
	}
	return true, nil
}
