// Package backendtest holds what tests of and above backends share: Run, the
// conformance suite every backend.Backend implementation passes (docker and
// subprocess), WaitHealthy, and Fake, an in-memory fault-injecting Backend
// for the layers above (lifecycle, discovery, health, api).
//
// The suite drives real engines: the image or command under test must run
// the reference engine (internal/engine) or anything answering the same
// routes (GET /health, keyed GET /brain and POST /execute with a counter).
package backendtest
