package testclock_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/september/bap-engine/internal/testclock"
)

func TestFixedMovesOnlyWhenTold(t *testing.T) {
	t0 := time.Date(2026, 4, 27, 12, 0, 0, 0, time.UTC)
	c := testclock.Fixed(t0)
	assert.Equal(t, t0, c.Now())
	c.Advance(90 * time.Second)
	assert.Equal(t, t0.Add(90*time.Second), c.Now())
	c.Set(t0)
	assert.Equal(t, t0, c.Now())
}

func TestRunningFollowsRealTimeWithItsLead(t *testing.T) {
	c := testclock.Running()
	assert.WithinDuration(t, time.Now(), c.Now(), time.Second)
	c.Advance(time.Hour)
	assert.WithinDuration(t, time.Now().Add(time.Hour), c.Now(), time.Second)
	at := time.Now().Add(-24 * time.Hour)
	c.Set(at)
	assert.WithinDuration(t, at, c.Now(), time.Second)
	assert.True(t, c.Now().After(at) || c.Now().Equal(at), "and keeps running from there")
}
