package registrytest

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// errBoom is what callbacks return to force a rollback.
var errBoom = errors.New("boom")

// requireTime checks that got is exactly want and in UTC, as both stores
// must return it.
func requireTime(t testing.TB, want, got time.Time, field string) {
	t.Helper()
	require.Truef(t, want.Equal(got), "%s: want %s, got %s", field,
		want.Format(time.RFC3339Nano), got.Format(time.RFC3339Nano))
	if !got.IsZero() {
		require.Equalf(t, time.UTC, got.Location(), "%s: location", field)
	}
}

// requireTimePtr checks nil-ness and, when set, exact equality.
func requireTimePtr(t testing.TB, want, got *time.Time, field string) {
	t.Helper()
	if want == nil {
		require.Nilf(t, got, "%s: want nil", field)
		return
	}
	require.NotNilf(t, got, "%s: want %s, got nil", field, want.Format(time.RFC3339Nano))
	requireTime(t, *want, *got, field)
}

// requireProduct checks every field of a product.
func requireProduct(t testing.TB, want, got bap.Product) {
	t.Helper()
	require.Equal(t, want.ID, got.ID, "ID")
	require.Equal(t, want.Slug, got.Slug, "Slug")
	require.Equal(t, want.DisplayName, got.DisplayName, "DisplayName")
	require.Equal(t, want.APIKeyHash, got.APIKeyHash, "APIKeyHash")
	require.Equal(t, want.PrevAPIKeyHash, got.PrevAPIKeyHash, "PrevAPIKeyHash")
	requireTimePtr(t, want.PrevKeyExpiresAt, got.PrevKeyExpiresAt, "PrevKeyExpiresAt")
	requirePolicy(t, want.Policy, got.Policy)
	requireTime(t, want.CreatedAt, got.CreatedAt, "CreatedAt")
}

// requirePolicy checks the whole policy object (unknown keys included) and
// the parsed fields.
func requirePolicy(t testing.TB, want, got bap.Policy) {
	t.Helper()
	require.JSONEq(t, string(want.JSON()), string(got.JSON()), "policy JSON")
	require.Equal(t, want.MaxEngines, got.MaxEngines, "MaxEngines")
	require.Equal(t, want.RateLimitRPM, got.RateLimitRPM, "RateLimitRPM")
	require.Equal(t, want.MaxRunning, got.MaxRunning, "MaxRunning")
	require.Equal(t, want.EngineMemoryMB, got.EngineMemoryMB, "EngineMemoryMB")
	require.Equal(t, want.EngineCPUs, got.EngineCPUs, "EngineCPUs")
}

// requireEngine checks every field of an engine; UpdatedAt too unless
// checkUpdated is false.
func requireEngine(t testing.TB, want, got bap.Engine, checkUpdated bool) {
	t.Helper()
	require.Equal(t, want.ID, got.ID, "ID")
	require.Equal(t, want.ProductID, got.ProductID, "ProductID")
	require.Equal(t, want.UserID, got.UserID, "UserID")
	require.Equal(t, want.Status, got.Status, "Status")
	require.Equal(t, want.Port, got.Port, "Port")
	require.Equal(t, want.KeyHash, got.KeyHash, "KeyHash")
	require.Equal(t, want.KeyEnc, got.KeyEnc, "KeyEnc")
	require.Equal(t, want.Image, got.Image, "Image")
	require.Equal(t, want.URL, got.URL, "URL")
	require.Equal(t, want.InstanceID, got.InstanceID, "InstanceID")
	require.Equal(t, want.BootDurationMS, got.BootDurationMS, "BootDurationMS")
	require.Equal(t, want.HealthFailures, got.HealthFailures, "HealthFailures")
	require.Equal(t, want.RestartAttempts, got.RestartAttempts, "RestartAttempts")
	requireTimePtr(t, want.NextRestartAt, got.NextRestartAt, "NextRestartAt")
	requireTimePtr(t, want.LastHealthAt, got.LastHealthAt, "LastHealthAt")
	requireTimePtr(t, want.LastActiveAt, got.LastActiveAt, "LastActiveAt")
	require.Equal(t, want.FailureReason, got.FailureReason, "FailureReason")
	require.Equal(t, want.Claim.Op, got.Claim.Op, "Claim.Op")
	require.Equal(t, want.Claim.Owner, got.Claim.Owner, "Claim.Owner")
	require.Equal(t, want.Claim.Epoch, got.Claim.Epoch, "Claim.Epoch")
	requireTimePtr(t, want.Claim.StartedAt, got.Claim.StartedAt, "Claim.StartedAt")
	requireTime(t, want.CreatedAt, got.CreatedAt, "CreatedAt")
	if checkUpdated {
		requireTime(t, want.UpdatedAt, got.UpdatedAt, "UpdatedAt")
	}
}

// engineIDs returns the ids of engines in order.
func engineIDs(es []bap.Engine) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

// auditActions returns the actions of entries in order.
func auditActions(es []audit.Entry) []audit.Action {
	out := make([]audit.Action, len(es))
	for i, e := range es {
		out[i] = e.Action
	}
	return out
}

// listAudit returns every entry matching f (no pagination) and checks that
// the total agrees with the rows.
func listAudit(t testing.TB, s registry.Store, f registry.AuditFilter) []audit.Entry {
	t.Helper()
	es, total, err := s.ListAudit(t.Context(), f)
	require.NoError(t, err)
	require.Len(t, es, total, "total of an unpaginated list")
	return es
}

// productAudit returns a product's audit entries, newest first.
func productAudit(t testing.TB, s registry.Store, productID string) []audit.Entry {
	t.Helper()
	return listAudit(t, s, registry.AuditFilter{ProductID: productID})
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T { return &v }
