package secret

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNewKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		prefix string
		gen    func() (string, error)
	}{
		{"platform", "pk-sept-", NewPlatformKey},
		{"engine", "sk-sept-", NewEngineKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			seen := map[string]bool{}
			for range 50 {
				k, err := tc.gen()
				require.NoError(t, err)
				require.True(t, strings.HasPrefix(k, tc.prefix), "key %q lacks prefix %q", k, tc.prefix)
				body := strings.TrimPrefix(k, tc.prefix)
				require.Len(t, body, 43, "32 bytes are 43 base64 characters without padding")
				require.NotContains(t, body, "=")
				require.NotContains(t, body, "+")
				require.NotContains(t, body, "/")
				raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
				require.NoError(t, err)
				require.Len(t, raw, 32)
				require.False(t, seen[k], "duplicate key generated")
				seen[k] = true
			}
		})
	}
}

func TestHash(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		// FIPS 180-2 test vector.
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	} {
		require.Equal(t, tc.want, Hash(tc.in), "Hash(%q)", tc.in)
	}
	// Vectors computed by Python's hashlib in the shared test data.
	vectors := loadPythonVectors(t)
	require.NotEmpty(t, vectors.SHA256)
	for _, v := range vectors.SHA256 {
		require.Equal(t, v.Hex, Hash(v.Input), "Hash(%q)", v.Input)
	}
}

func TestEqual(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"", "", true},
		{"admin-key-0123456789", "admin-key-0123456789", true},
		{"admin-key-0123456789", "admin-key-0123456788", false},
		{"admin-key-0123456789", "admin-key-012345678", false},
		{"admin-key-0123456789", "", false},
		{"", "x", false},
		{"a", "A", false},
	} {
		require.Equal(t, tc.want, Equal(tc.a, tc.b), "Equal(%q, %q)", tc.a, tc.b)
	}
}

func TestHashEqual(t *testing.T) {
	t.Parallel()
	key, err := NewEngineKey()
	require.NoError(t, err)
	other, err := NewEngineKey()
	require.NoError(t, err)
	h := Hash(key)

	require.True(t, HashEqual(key, h))
	require.False(t, HashEqual(other, h))
	require.False(t, HashEqual(key, ""))
	require.False(t, HashEqual(key, h[:63]))
	require.False(t, HashEqual(key, strings.ToUpper(h)), "stored hashes are lowercase hex")
	require.False(t, HashEqual(h, h), "the hash is not a key")
}
