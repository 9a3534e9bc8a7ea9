// Package client is the typed Go client of the bap-engine HTTP API, for
// products that call the orchestrator and for operators' tools.
//
// A product creates one Client with its platform key and calls Admit on
// every user request; the engine URL and key it returns are then used to
// talk to the engine directly (the orchestrator is not in the data path):
//
//	c := client.New("http://bap-engine:8000", client.WithPlatformKey(key))
//	res, err := c.Admit(ctx, userID, client.AdmitOptions{AutoProvision: true, AutoWake: true})
//	if err != nil {
//		var e *client.Error
//		if errors.As(err, &e) && e.Code == client.CodeRateLimited {
//			// back off for e.RetryAfter
//		}
//		return err
//	}
//	if !res.Admitted {
//		// res.Reason says why (ReasonEngineSleeping, ...)
//	}
//
// Every non-2xx answer is returned as a *Error carrying the HTTP status, the
// documented error code and message, and Retry-After when the server sent
// one. A Client is safe for concurrent use.
//
// The package is a module of its own (github.com/september/bap-engine/client)
// that needs nothing but the standard library, so importing it brings none of
// the orchestrator's dependencies (database drivers, Docker client) and no
// newer Go than its go.mod names. docs/integrating.md in the repository is the
// guide for products: when to auto-provision and auto-wake, what to retry,
// and what each error code means.
package client
