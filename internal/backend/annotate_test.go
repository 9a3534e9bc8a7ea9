package backend_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/september/bap-engine/internal/backend"
)

func TestAnnotateAndSnapshotNames(t *testing.T) {
	cause := errors.New("no such container")
	err := backend.Annotate(cause, backend.ErrNotFound, "start container %s", "e1")
	assert.ErrorIs(t, err, backend.ErrNotFound)
	assert.ErrorIs(t, err, cause)
	assert.Equal(t, "start container e1: instance not found: no such container", err.Error())
	plain := backend.Annotate(cause, nil, "inspect %s", "e1")
	assert.ErrorIs(t, plain, cause)
	assert.NotErrorIs(t, plain, backend.ErrNotFound)
	assert.NoError(t, backend.Annotate(nil, backend.ErrNotFound, "x"))

	for _, n := range []int{1, 2, 17} {
		got, ok := backend.ParseSnapshotName(backend.SnapshotName(n))
		assert.True(t, ok)
		assert.Equal(t, n, got)
	}
	for _, bad := range []string{"snap-0", "snap--1", "snap-x", "snapshot-1", "engine-data"} {
		_, ok := backend.ParseSnapshotName(bad)
		assert.False(t, ok, bad)
	}
}
