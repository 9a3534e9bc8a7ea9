package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// Key prefixes of the two kinds of API key (SPEC §4).
const (
	// PlatformKeyPrefix starts every product (platform) API key.
	PlatformKeyPrefix = "pk-sept-"
	// EngineKeyPrefix starts every engine API key.
	EngineKeyPrefix = "sk-sept-"
)

// keyBytes is the amount of randomness in an API key, as in Python's
// secrets.token_urlsafe(32).
const keyBytes = 32

// NewPlatformKey returns a fresh product key: "pk-sept-" followed by 32 random
// bytes in URL-safe base64 without padding.
func NewPlatformKey() (string, error) {
	return newKey(PlatformKeyPrefix)
}

// NewEngineKey returns a fresh engine key: "sk-sept-" followed by 32 random
// bytes in URL-safe base64 without padding.
func NewEngineKey() (string, error) {
	return newKey(EngineKeyPrefix)
}

func newKey(prefix string) (string, error) {
	var b [keyBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate %skey: %w", prefix, err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Hash returns the lowercase hex SHA-256 of key, the form in which keys are
// stored (api_key_hash, engine_key_hash, ENGINE_KEY_HASH).
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// Equal reports whether a and b are equal in time that depends on neither
// their contents nor their lengths: both are hashed first, so a wrong admin
// key of another length is not distinguishable by timing either.
func Equal(a, b string) bool {
	ha := sha256.Sum256([]byte(a))
	hb := sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// HashEqual reports, in constant time, whether hash is the stored form
// (lowercase hex SHA-256) of key.
func HashEqual(key, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(Hash(key)), []byte(hash)) == 1
}
