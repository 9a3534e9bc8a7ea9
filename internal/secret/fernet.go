package secret

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fernet/fernet-go"
)

// ErrInvalidToken is returned by Open and Rotate when a token is malformed,
// was tampered with, or was sealed under none of the configured keys.
var ErrInvalidToken = errors.New("fernet token is invalid or sealed under none of the master keys")

// Sealer encrypts and decrypts engine keys with Fernet under a list of master
// keys, like Python's MultiFernet: the first key seals, every key opens.
// Keys are parsed once, at construction; a Sealer is safe for concurrent use.
type Sealer struct {
	keys []*fernet.Key
}

// fernetKeyLen is the length of an encoded Fernet key without its one '='.
const fernetKeyLen = 43

// NewSealer parses masterKey, a comma-separated list of Fernet keys (URL-safe
// base64 of 32 bytes, as printed by NewFernetKey; whitespace around each key
// is ignored). Errors say which position is malformed, never what is in it.
func NewSealer(masterKey string) (*Sealer, error) {
	if strings.TrimSpace(masterKey) == "" {
		return nil, errors.New("master key is empty: generate one with `bap-engine keygen`")
	}
	parts := strings.Split(masterKey, ",")
	keys := make([]*fernet.Key, 0, len(parts))
	for i, p := range parts {
		k, ok := decodeFernetKey(strings.TrimSpace(p))
		if !ok {
			return nil, fmt.Errorf("master key %d of %d is malformed: want URL-safe base64 of 32 bytes, as printed by `bap-engine keygen`", i+1, len(parts))
		}
		keys = append(keys, k)
	}
	return &Sealer{keys: keys}, nil
}

// decodeFernetKey accepts what Python's Fernet(key) accepts in practice:
// base64 of 32 bytes in the URL-safe alphabet (or the standard one, which
// urlsafe_b64decode also takes), with or without its trailing '='.
func decodeFernetKey(s string) (*fernet.Key, bool) {
	s = strings.TrimSuffix(s, "=")
	if len(s) != fernetKeyLen {
		return nil, false
	}
	s = strings.Map(func(r rune) rune {
		switch r {
		case '+':
			return '-'
		case '/':
			return '_'
		}
		return r
	}, s)
	var k fernet.Key
	n, err := base64.RawURLEncoding.Decode(k[:], []byte(s))
	if err != nil || n != len(k) {
		return nil, false
	}
	return &k, true
}

// Seal encrypts plaintext under the first master key and returns the Fernet
// token (URL-safe base64 with padding, as Python writes it).
func (s *Sealer) Seal(plaintext string) (string, error) {
	tok, err := fernet.EncryptAndSign([]byte(plaintext), s.keys[0])
	if err != nil {
		return "", fmt.Errorf("seal with fernet: %w", err)
	}
	return string(tok), nil
}

// Open decrypts a token sealed under any of the master keys. Tokens do not
// expire (no TTL), as in the original implementation. It returns
// ErrInvalidToken when no key opens the token.
func (s *Sealer) Open(token string) (string, error) {
	msg := fernet.VerifyAndDecrypt([]byte(token), 0, s.keys)
	if msg == nil {
		return "", ErrInvalidToken
	}
	return string(msg), nil
}

// Rotate re-seals token under the first master key, keeping its timestamp as
// MultiFernet.rotate does. A token already sealed under the first key is
// returned unchanged with changed == false, so `bap-engine rekey` rewrites
// only what needs it. It returns ErrInvalidToken when no key opens the token.
func (s *Sealer) Rotate(token string) (rotated string, changed bool, err error) {
	tok := []byte(token)
	if fernet.VerifyAndDecrypt(tok, 0, s.keys[:1]) != nil {
		return token, false, nil
	}
	msg := fernet.VerifyAndDecrypt(tok, 0, s.keys[1:])
	if msg == nil {
		return "", false, ErrInvalidToken
	}
	signedAt, err := tokenTime(token)
	if err != nil {
		return "", false, err
	}
	out, err := fernet.EncryptAndSignAtTime(msg, s.keys[0], signedAt)
	if err != nil {
		return "", false, fmt.Errorf("re-seal with fernet: %w", err)
	}
	return string(out), true, nil
}

// tokenTime reads the creation time stored in a token that has already been
// verified.
func tokenTime(token string) (time.Time, error) {
	b, err := base64.URLEncoding.DecodeString(token)
	if err != nil || len(b) < 9 {
		return time.Time{}, ErrInvalidToken
	}
	return time.Unix(int64(binary.BigEndian.Uint64(b[1:9])), 0), nil
}

// NewFernetKey returns a new random Fernet key in the form Python's
// Fernet.generate_key() prints: URL-safe base64 of 32 bytes with padding
// (44 characters). `bap-engine keygen` prints it.
func NewFernetKey() (string, error) {
	var k fernet.Key
	if err := k.Generate(); err != nil {
		return "", fmt.Errorf("generate fernet key: %w", err)
	}
	return k.Encode(), nil
}
