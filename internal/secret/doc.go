// Package secret holds the key material of bap-engine: generation of platform
// and engine keys, their lowercase hex SHA-256 hashes, constant-time
// comparison, and Fernet sealing of engine keys at rest under ORCH_MASTER_KEY
// (byte-compatible with Python's cryptography.fernet, MultiFernet semantics).
//
// It is a leaf: it imports no other bap-engine package and performs no I/O
// beyond reading crypto/rand. Storage of hashes and tokens belongs to the
// registry; deciding when to rotate belongs to lifecycle and the CLI. No
// function here puts key material into an error message.
package secret
