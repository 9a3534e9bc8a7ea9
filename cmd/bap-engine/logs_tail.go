package main

import (
	"context"
	"io"

	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
)

// maxLogTailBytes bounds the log tail the dashboard shows.
const maxLogTailBytes = 256 << 10

// engineLogTail is the last lines of an engine's own output, for the
// dashboard's engine page.
func engineLogTail(ctx context.Context, store registry.Store, lm *lifecycle.Manager, engineID string, lines int) (string, error) {
	e, err := store.GetEngine(ctx, engineID)
	if err != nil {
		return "", err
	}
	rc, err := lm.Logs(ctx, e, lines, false)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxLogTailBytes))
	return string(b), err
}
