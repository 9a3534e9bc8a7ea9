// Package bap is the domain vocabulary of bap-engine: products, engines, their
// states and the transition table, policies, user ids and the documented error
// codes. It holds values and pure functions only: no I/O, stdlib imports only.
package bap
