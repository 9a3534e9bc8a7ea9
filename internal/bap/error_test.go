package bap_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
)

func TestErrorKeepsItsCause(t *testing.T) {
	plain := bap.Errorf(bap.CodeEngineNotFound, "Engine %s not found.", "e1")
	assert.Equal(t, "ENGINE_NOT_FOUND: Engine e1 not found.", plain.Error())
	assert.Nil(t, plain.Unwrap())

	cause := fmt.Errorf("read engine: %w", io.ErrUnexpectedEOF)
	err := fmt.Errorf("admit: %w", bap.Errorf(bap.CodeBackendError, "The engine backend failed.").Wrap(cause))
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "the cause stays in the chain")
	e, ok := bap.AsError(err)
	require.True(t, ok)
	assert.Equal(t, bap.CodeBackendError, e.Code)
	assert.Equal(t, "The engine backend failed.", e.Message, "the message shown to callers has no cause")
	assert.Equal(t, "BACKEND_ERROR: The engine backend failed. (read engine: unexpected EOF)", e.Error(), "logs see the cause")
	assert.Equal(t, bap.CodeBackendError, bap.ErrorCode(err))
	assert.Equal(t, bap.CodeInternal, bap.ErrorCode(errors.New("x")))
	assert.Equal(t, "", bap.ErrorCode(nil))
}
