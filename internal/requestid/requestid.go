// Package requestid carries the id of the work a log line belongs to (an
// API request's X-Request-Id, or one the health loop gives a restart) in a
// context.Context, and adds it to every slog record logged with that
// context. The api sets it; lifecycle and health log with their context
// (InfoContext, WarnContext…), so one grep of an id finds a request's whole
// story: its access log line, the lifecycle operation it ran and the
// failures on the way. A leaf: it imports nothing internal.
package requestid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
)

// Key is the log attribute's name.
const Key = "request_id"

type ctxKey struct{}

// With returns ctx carrying id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// From returns the id ctx carries, or "".
func From(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// New returns a fresh id with prefix (e.g. "restart-3f2a…").
func New(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Handler wraps h so that every record logged with a context carrying an
// id gets it as the request_id attribute.
func Handler(h slog.Handler) slog.Handler { return handler{h} }

type handler struct{ slog.Handler }

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	if id := From(ctx); id != "" {
		r = r.Clone()
		r.AddAttrs(slog.String(Key, id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return handler{h.Handler.WithAttrs(attrs)}
}

func (h handler) WithGroup(name string) slog.Handler {
	return handler{h.Handler.WithGroup(name)}
}
