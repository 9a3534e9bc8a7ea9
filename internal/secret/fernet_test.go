package secret

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fernet/fernet-go"
	"github.com/stretchr/testify/require"
)

// pythonVectors is /shared/testdata/fernet-python.json: tokens and hashes
// made by the original implementation's libraries.
type pythonVectors struct {
	Key   string `json:"key"`
	Old   string `json:"old_key"`
	Cases []struct {
		Plaintext string `json:"plaintext"`
		Token     string `json:"token"`
	} `json:"cases"`
	OldKeyToken     string `json:"old_key_token"`
	OldKeyPlaintext string `json:"old_key_plaintext"`
	SHA256          []struct {
		Input string `json:"input"`
		Hex   string `json:"sha256_hex"`
	} `json:"sha256_hex_examples"`
}

// loadPythonVectors reads the shared test data, which lives beside the
// repository clone: <module root>/../shared/testdata/fernet-python.json.
func loadPythonVectors(t *testing.T) pythonVectors {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "no go.mod above the package directory")
		dir = parent
	}
	path := filepath.Join(dir, "..", "shared", "testdata", "fernet-python.json")
	raw, err := os.ReadFile(path)
	require.NoError(t, err, "the Python Fernet vectors must exist at %s (shared/ beside the clone)", path)
	var v pythonVectors
	require.NoError(t, json.Unmarshal(raw, &v), "parse %s", path)
	require.NotEmpty(t, v.Key, "%s: no key", path)
	require.NotEmpty(t, v.Old, "%s: no old_key", path)
	require.NotEmpty(t, v.Cases, "%s: no cases", path)
	require.NotEmpty(t, v.OldKeyToken, "%s: no old_key_token", path)
	return v
}

func newSealer(t testing.TB, keys ...string) *Sealer {
	t.Helper()
	s, err := NewSealer(strings.Join(keys, ","))
	require.NoError(t, err)
	return s
}

func newFernetKey(t testing.TB) string {
	t.Helper()
	k, err := NewFernetKey()
	require.NoError(t, err)
	return k
}

func TestOpenPythonTokens(t *testing.T) {
	t.Parallel()
	v := loadPythonVectors(t)
	single := newSealer(t, v.Key)
	multi := newSealer(t, v.Key, v.Old)
	oldFirst := newSealer(t, v.Old, v.Key)
	for _, c := range v.Cases {
		for name, s := range map[string]*Sealer{"single": single, "multi": multi, "old-first": oldFirst} {
			got, err := s.Open(c.Token)
			require.NoError(t, err, "%s: open token for %q", name, c.Plaintext)
			require.Equal(t, c.Plaintext, got, name)
		}
	}

	// MultiFernet: [key, old_key] opens a token sealed under old_key.
	got, err := multi.Open(v.OldKeyToken)
	require.NoError(t, err)
	require.Equal(t, v.OldKeyPlaintext, got)
	_, err = single.Open(v.OldKeyToken)
	require.ErrorIs(t, err, ErrInvalidToken, "a key list without old_key must not open its token")
	got, err = newSealer(t, v.Old).Open(v.OldKeyToken)
	require.NoError(t, err)
	require.Equal(t, v.OldKeyPlaintext, got)
}

func TestSealRoundTrip(t *testing.T) {
	t.Parallel()
	k1, k2 := newFernetKey(t), newFernetKey(t)
	s := newSealer(t, k1, k2)
	for _, msg := range []string{
		"", "x", "sk-sept-" + strings.Repeat("A", 43), "ünïcødé ✓ key",
		strings.Repeat("0123456789abcdef", 4), strings.Repeat("z", 1000), "\x00\xff",
	} {
		tok, err := s.Seal(msg)
		require.NoError(t, err)
		for name, opener := range map[string]*Sealer{
			"same":        s,
			"first only":  newSealer(t, k1),
			"key rotated": newSealer(t, newFernetKey(t), k1),
		} {
			got, err := opener.Open(tok)
			require.NoError(t, err, "%s: open %q", name, msg)
			require.Equal(t, msg, got, name)
		}
		_, err = newSealer(t, k2).Open(tok)
		require.ErrorIs(t, err, ErrInvalidToken, "Seal must use the first key, not the second")
	}
	a, err := s.Seal("same")
	require.NoError(t, err)
	b, err := s.Seal("same")
	require.NoError(t, err)
	require.NotEqual(t, a, b, "each token has a fresh IV")
}

// TestSealFormat checks that our tokens have the shape Python writes and reads:
// version 0x80, big-endian seconds, IV, AES-CBC blocks, HMAC, in URL-safe
// base64 with padding.
func TestSealFormat(t *testing.T) {
	t.Parallel()
	v := loadPythonVectors(t)
	s := newSealer(t, v.Key, v.Old)
	before := time.Now().Unix()
	tok, err := s.Seal("sk-sept-format")
	require.NoError(t, err)
	after := time.Now().Unix()

	require.Zero(t, len(tok)%4, "padded base64")
	require.True(t, strings.HasPrefix(tok, "gAAAAA"), "Python tokens start with gAAAAA: %s", tok)
	raw, err := base64.URLEncoding.Strict().DecodeString(tok)
	require.NoError(t, err, "URL-safe base64 with padding")
	require.Equal(t, byte(0x80), raw[0], "version byte")
	ts := int64(binary.BigEndian.Uint64(raw[1:9]))
	require.GreaterOrEqual(t, ts, before)
	require.LessOrEqual(t, ts, after)
	// 1 version + 8 time + 16 IV + 16 (one block for 14 bytes) + 32 HMAC.
	require.Len(t, raw, 1+8+16+16+32)

	// The library alone, with the single first key, opens it.
	msg := fernet.VerifyAndDecrypt([]byte(tok), 0, fernet.MustDecodeKeys(v.Key))
	require.Equal(t, "sk-sept-format", string(msg))
}

func TestOpenRejects(t *testing.T) {
	t.Parallel()
	v := loadPythonVectors(t)
	s := newSealer(t, v.Key)
	good := v.Cases[0].Token
	raw, err := base64.URLEncoding.DecodeString(good)
	require.NoError(t, err)
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 1
		return base64.URLEncoding.EncodeToString(b)
	}
	for name, tok := range map[string]string{
		"empty":           "",
		"garbage":         "not a token",
		"version":         flip(0),
		"timestamp":       flip(3),
		"iv":              flip(12),
		"ciphertext":      flip(30),
		"hmac":            flip(len(raw) - 1),
		"truncated":       good[:len(good)-8],
		"short":           base64.URLEncoding.EncodeToString(raw[:20]),
		"other key":       v.OldKeyToken,
		"plaintext":       v.Cases[0].Plaintext,
		"only version":    base64.URLEncoding.EncodeToString([]byte{0x80}),
		"just the header": base64.URLEncoding.EncodeToString(raw[:25]),
	} {
		got, err := s.Open(tok)
		require.ErrorIs(t, err, ErrInvalidToken, name)
		require.Empty(t, got, name)
	}
}

func TestNewSealerParsing(t *testing.T) {
	t.Parallel()
	v := loadPythonVectors(t)
	probe := v.Cases[0]
	std := strings.NewReplacer("-", "+", "_", "/").Replace(v.Key)
	require.NotEqual(t, v.Key, std, "the vector key must exercise the alphabet difference")

	for name, mk := range map[string]string{
		"plain":               v.Key,
		"unpadded":            strings.TrimSuffix(v.Key, "="),
		"standard alphabet":   std,
		"surrounding spaces":  "  " + v.Key + "\t\n",
		"list":                v.Key + "," + v.Old,
		"spaces around comma": v.Key + " , " + v.Old,
		"second position":     v.Old + ",\n" + v.Key,
	} {
		s, err := NewSealer(mk)
		require.NoError(t, err, name)
		got, err := s.Open(probe.Token)
		require.NoError(t, err, name)
		require.Equal(t, probe.Plaintext, got, name)
	}

	raw, err := base64.URLEncoding.DecodeString(v.Key)
	require.NoError(t, err)
	hexKey := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, masterKey, wantMsg string
		secrets                  []string
	}{
		{"empty", "", "empty", nil},
		{"blank", "  \t", "empty", nil},
		{"short", "c2hvcnQ=", "key 1 of 1 is malformed", []string{"c2hvcnQ"}},
		{"31 bytes", base64.URLEncoding.EncodeToString(raw[:31]), "key 1 of 1 is malformed", nil},
		{"33 bytes", base64.URLEncoding.EncodeToString(append(bytes.Clone(raw), 7)), "key 1 of 1 is malformed", nil},
		{"hex is not what Python takes", hexKey, "key 1 of 1 is malformed", []string{hexKey}},
		{"bad character", "!" + v.Key[1:], "key 1 of 1 is malformed", []string{v.Key[1:20]}},
		{"empty second", v.Key + ",," + v.Old, "key 2 of 3 is malformed", []string{v.Key, v.Old}},
		{"trailing comma", v.Key + ",", "key 2 of 2 is malformed", []string{v.Key}},
		{"bad third", v.Key + "," + v.Old + ",*" + v.Old[1:], "key 3 of 3 is malformed", []string{v.Key, v.Old, v.Old[1:]}},
	} {
		s, err := NewSealer(tc.masterKey)
		require.Error(t, err, tc.name)
		require.Nil(t, s, tc.name)
		require.Contains(t, err.Error(), tc.wantMsg, tc.name)
		for _, secret := range tc.secrets {
			require.NotContains(t, err.Error(), secret, "%s: error leaks key material", tc.name)
		}
	}
}

func TestRotate(t *testing.T) {
	t.Parallel()
	v := loadPythonVectors(t)
	newKey := newFernetKey(t)
	s := newSealer(t, newKey, v.Key, v.Old)
	onlyNew := newSealer(t, newKey)

	tokens := map[string]string{v.OldKeyToken: v.OldKeyPlaintext}
	for _, c := range v.Cases {
		tokens[c.Token] = c.Plaintext
	}
	for tok, plain := range tokens {
		rotated, changed, err := s.Rotate(tok)
		require.NoError(t, err)
		require.True(t, changed)
		require.NotEqual(t, tok, rotated)
		got, err := onlyNew.Open(rotated)
		require.NoError(t, err)
		require.Equal(t, plain, got)
		require.Equal(t, tokenUnix(t, tok), tokenUnix(t, rotated), "rotation keeps the token's time, like MultiFernet.rotate")

		again, changed, err := s.Rotate(rotated)
		require.NoError(t, err)
		require.False(t, changed, "a token under the first key needs no rewrite")
		require.Equal(t, rotated, again)
	}

	_, changed, err := s.Rotate("garbage")
	require.ErrorIs(t, err, ErrInvalidToken)
	require.False(t, changed)
	_, _, err = onlyNew.Rotate(v.OldKeyToken)
	require.ErrorIs(t, err, ErrInvalidToken)
}

func tokenUnix(t *testing.T, tok string) int64 {
	t.Helper()
	raw, err := base64.URLEncoding.DecodeString(tok)
	require.NoError(t, err)
	return int64(binary.BigEndian.Uint64(raw[1:9]))
}

func TestNewFernetKey(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 50 {
		k := newFernetKey(t)
		require.Len(t, k, 44)
		require.True(t, strings.HasSuffix(k, "="), "Fernet.generate_key() keeps the padding")
		raw, err := base64.URLEncoding.Strict().DecodeString(k)
		require.NoError(t, err)
		require.Len(t, raw, 32)
		require.False(t, seen[k])
		seen[k] = true
		_, err = NewSealer(k)
		require.NoError(t, err)
	}
}

// crossCheckScript decrypts our tokens with Python's MultiFernet, and seals a
// token with Python under a key that NewFernetKey generated.
const crossCheckScript = `
import json, sys
from cryptography.fernet import Fernet, MultiFernet
req = json.load(sys.stdin)
mf = MultiFernet([Fernet(k.encode()) for k in req["keys"]])
opened = [mf.decrypt(t.encode()).decode("utf-8") for t in req["tokens"]]
made = Fernet(req["fresh_key"].encode()).encrypt(req["fresh_plaintext"].encode("utf-8")).decode()
json.dump({"opened": opened, "made": made}, sys.stdout)
`

func TestPythonCrossCheck(t *testing.T) {
	t.Parallel()
	// scripts/test.sh installs Python's cryptography, so CI always runs this.
	skip := t.Skipf
	if os.Getenv("CI") == "true" {
		skip = t.Fatalf
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		skip("python3 is not installed: cannot cross-check against Python's cryptography")
	}
	if out, err := exec.Command(python, "-c", "import cryptography.fernet").CombinedOutput(); err != nil {
		skip("python3 has no cryptography module (%v: %s): cannot cross-check", err, bytes.TrimSpace(out))
	}
	v := loadPythonVectors(t)
	ours := newSealer(t, v.Key, v.Old)
	plaintexts := []string{"", "sk-sept-cross-check", "ünïcødé ✓ key", strings.Repeat("q", 100)}
	var tokens []string
	for _, p := range plaintexts {
		tok, err := ours.Seal(p)
		require.NoError(t, err)
		tokens = append(tokens, tok)
	}
	// A token of ours sealed under the old key (the second one for Python).
	rotatedBack, err := newSealer(t, v.Old).Seal("under the old key")
	require.NoError(t, err)
	tokens = append(tokens, rotatedBack)
	plaintexts = append(plaintexts, "under the old key")

	fresh := newFernetKey(t)
	req, err := json.Marshal(map[string]any{
		"keys": []string{v.Key, v.Old}, "tokens": tokens,
		"fresh_key": fresh, "fresh_plaintext": "made by python",
	})
	require.NoError(t, err)
	cmd := exec.Command(python, "-c", crossCheckScript)
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "python: %s", stderr.String())
	var resp struct {
		Opened []string `json:"opened"`
		Made   string   `json:"made"`
	}
	require.NoError(t, json.Unmarshal(out, &resp))
	require.Equal(t, plaintexts, resp.Opened, "Python must open every token we seal")
	got, err := newSealer(t, fresh).Open(resp.Made)
	require.NoError(t, err)
	require.Equal(t, "made by python", got)
}

// FuzzOpen checks that no input makes Open panic or open without a key.
func FuzzOpen(f *testing.F) {
	key := "L7ySRpaEPL0VnhLgDJgn1ddNOywIlGj33J6-8yb9xyw="
	s := newSealer(f, key)
	good, err := s.Seal("fuzz")
	require.NoError(f, err)
	f.Add(good)
	f.Add("")
	f.Add("gAAAAA")
	f.Add(good[:40])
	f.Fuzz(func(t *testing.T, tok string) {
		got, err := s.Open(tok)
		if err != nil {
			require.True(t, errors.Is(err, ErrInvalidToken))
			require.Empty(t, got)
		}
	})
}

func BenchmarkOpen(b *testing.B) {
	k1, k2 := newFernetKey(b), newFernetKey(b)
	for _, bc := range []struct {
		name   string
		keys   []string
		sealer []string
	}{
		{"first-key", []string{k1}, []string{k1}},
		{"second-of-two-keys", []string{k1, k2}, []string{k2}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := newSealer(b, bc.keys...)
			tok, err := newSealer(b, bc.sealer...).Seal("sk-sept-" + strings.Repeat("k", 43))
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Open(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSeal(b *testing.B) {
	s := newSealer(b, newFernetKey(b))
	msg := "sk-sept-" + strings.Repeat("k", 43)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Seal(msg); err != nil {
			b.Fatal(err)
		}
	}
}
