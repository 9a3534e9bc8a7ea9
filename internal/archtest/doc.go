// Package archtest holds no code: its test keeps the package graph of
// STYLE.md true (who may import whom, which packages alone may name a
// database driver, the Docker client or a backend, that the tests' world
// (servertest, testengine) stays in tests, and that the Go client stays a
// module of its own on the standard library alone).
package archtest
