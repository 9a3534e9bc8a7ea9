// Package api is the HTTP API of the orchestrator (SPEC §2): routes.go lists
// every route on one screen; handlers are grouped by what they touch
// (engines.go, fleet.go, products.go, system.go); middleware.go holds the
// request id, access log, panic recovery and the envelope for the mux's own
// 404/405 answers; errors.go is the one table from error code to HTTP status;
// json.go reads and writes bodies; stream.go is the Stream every streaming
// route writes through.
//
// Time limits (SPEC §14) are per request, never a server-wide write
// timeout: an answer must reach the client within Deps.WriteTimeout of its
// first byte, so a client that stops reading holds no handler, while the
// handler itself may take as long as its operation needs. A Stream extends
// that deadline per piece, so a stream lasts as long as its client reads.
//
// Every non-2xx answer is {"error":{"code","message"}}. Handlers return
// errors; only writeError turns them into responses: a *bap.Error shows its
// code and message, anything else is logged with the request id and shown as
// 500 INTERNAL with a generic message.
//
// The api never imports a backend or a concrete store: it is given a
// registry.Store, a lifecycle.Manager and a discovery.Service.
package api
