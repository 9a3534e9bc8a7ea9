package lifecycle

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Only a missing engine row is ENGINE_NOT_FOUND; a missing replica or
// product is not the caller's engine missing.
func TestStoreErrorsKeepWhatWasMissing(t *testing.T) {
	assert.Equal(t, bap.CodeEngineNotFound, bap.ErrorCode(engineErr("read engine", registry.ErrNotFound)))
	assert.Equal(t, bap.CodeInternal, bap.ErrorCode(storeErr("read replica", registry.ErrNotFound)))
	assert.Equal(t, bap.CodeInternal, bap.ErrorCode(productErr("read product", registry.ErrNotFound)))
	for _, err := range []error{
		engineErr("read engine", registry.ErrUnavailable),
		storeErr("count engines", registry.ErrUnavailable),
		opErr(registry.ErrUnavailable, 0),
	} {
		assert.Equal(t, bap.CodeDatabaseUnavailable, bap.ErrorCode(err))
		assert.True(t, errors.Is(err, registry.ErrUnavailable), "cause kept: %v", err)
	}
	for _, err := range []error{engineErr("update engine", errFenced), storeErr("x", registry.ErrFenced), opErr(errFenced, 0)} {
		assert.Equal(t, bap.CodeEngineBusy, bap.ErrorCode(err), "%v", err)
	}
	assert.Equal(t, "ENGINE_BUSY: The engine is changing state; retry shortly. (claim lost to another replica)", opErr(errFenced, 0).Error())
}
