package health_test

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry/storetest"
	"github.com/september/bap-engine/internal/requestid"
	"github.com/september/bap-engine/internal/testlog"
)

// records returns the JSON log records in logs whose msg is msg.
func records(logs *testlog.Buffer, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// TestHealthWorkLogsUnderAnID: marking an engine failed and each restart
// attempt log under an id of their own, as an API request's work does.
func TestHealthWorkLogsUnderAnID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{store: storetest.SQLite(t), bootTimeout: 2 * time.Second})
	sick, _ := e.provision(t, "sick")
	var logs testlog.Buffer
	cfg := fastConfig()
	cfg.Logger = slog.New(requestid.Handler(slog.NewJSONHandler(&logs, nil)))
	c := startChecker(t, e, cfg, true, false)

	require.Equal(t, 1, c.sweep(t).Probed, "a healthy first pass")
	e.fake.SetUnhealthy(sick.ID, true)
	marked := 0
	for range 3 {
		marked += c.sweep(t).MarkedFailed
	}
	require.Equal(t, 1, marked, "the third failed probe marks it failed")
	require.Eventually(t, func() bool { return len(records(&logs, "engine failed its health checks")) == 1 },
		10*time.Second, 10*time.Millisecond)
	mark := records(&logs, "engine failed its health checks")[0]
	require.Regexp(t, `^health-[0-9a-f]{16}$`, mark["request_id"])

	e.fake.SetUnhealthy(sick.ID, false)
	c.restartUntil(t, lifecycle.RestartSucceeded, 8)
	restarted := records(&logs, "engine restarted")
	require.Len(t, restarted, 1)
	require.Regexp(t, `^restart-[0-9a-f]{16}$`, restarted[0]["request_id"])
	require.NotEqual(t, mark["request_id"], restarted[0]["request_id"])
}
