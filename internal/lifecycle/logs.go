package lifecycle

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
)

// Logs returns e's own output as its backend keeps it: the last tail lines
// (0: all), and with follow what it writes next until ctx ends. An engine
// whose instance is gone (a failed provision, a destroy in progress) has an
// empty log. It is a read: no claim, no lock, any state.
// BACKEND_UNAVAILABLE, BACKEND_ERROR.
func (m *Manager) Logs(ctx context.Context, e bap.Engine, tail int, follow bool) (io.ReadCloser, error) {
	rc, err := m.backend.Logs(ctx, e.ID, backend.LogOptions{Tail: tail, Follow: follow})
	if errors.Is(err, backend.ErrNotFound) {
		return io.NopCloser(strings.NewReader("")), nil
	}
	if err != nil {
		return nil, opErr(err, m.cfg.BootTimeout)
	}
	return rc, nil
}
