package bap_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
)

func TestParseUserID(t *testing.T) {
	for _, ok := range []string{"u1", "alice@example.com", "org:team.member_1-x", strings.Repeat("a", bap.MaxUserIDLen)} {
		uid, err := bap.ParseUserID(ok)
		require.NoError(t, err, ok)
		assert.Equal(t, bap.UserID(ok), uid)
	}
	for _, bad := range []string{"", ".hidden", "a/b", "a b", "..", "a\x00", "é", strings.Repeat("a", bap.MaxUserIDLen+1)} {
		uid, err := bap.ParseUserID(bad)
		assert.Equal(t, bap.CodeValidation, bap.ErrorCode(err), "%q", bad)
		assert.Empty(t, uid)
	}
}
