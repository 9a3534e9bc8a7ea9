// Package archtest holds no code: its test keeps the package graph of
// STYLE.md true (who may import whom, and which packages alone may name a
// database driver, the Docker client or a backend).
package archtest
