package discovery

import (
	"sync"
	"sync/atomic"
)

// maxKeys bounds the decrypted-key cache.
const maxKeys = 4096

// keyCache maps Fernet tokens to the plaintext keys they seal, so a busy
// engine's key is decrypted once rather than on every admit. Reads take no
// lock; when full it is emptied and refills with the keys in use.
type keyCache struct {
	m sync.Map // token → key
	n atomic.Int64
}

func newKeyCache() *keyCache { return &keyCache{} }

func (c *keyCache) get(token string) (string, bool) {
	v, ok := c.m.Load(token)
	if !ok {
		return "", false
	}
	return v.(string), true
}

func (c *keyCache) put(token, key string) {
	if token == "" || key == "" {
		return
	}
	if _, loaded := c.m.LoadOrStore(token, key); loaded {
		return
	}
	if c.n.Add(1) > maxKeys {
		c.m.Clear()
		c.n.Store(0)
	}
}
