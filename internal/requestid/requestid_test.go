package requestid_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/requestid"
)

func TestHandlerAddsTheContextsID(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(requestid.Handler(slog.NewJSONHandler(&buf, nil))).With("component", "lifecycle")
	ctx := requestid.With(context.Background(), "req-123")
	log.InfoContext(ctx, "engine started", "engine_id", "e1")
	log.WithGroup("g").WarnContext(context.Background(), "no id here")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 2)
	var first, second map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &first))
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &second))
	require.Equal(t, "req-123", first["request_id"])
	require.Equal(t, "lifecycle", first["component"])
	require.Equal(t, "e1", first["engine_id"])
	require.NotContains(t, second, "request_id")
	require.Equal(t, "req-123", requestid.From(context.WithoutCancel(ctx)), "detached work keeps the id")
	require.True(t, strings.HasPrefix(requestid.New("restart-"), "restart-"))
	require.NotEqual(t, requestid.New(""), requestid.New(""))
}
