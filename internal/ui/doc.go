// Package ui is the fleet dashboard served at /ui: server-rendered pages
// (html/template) with a little plain JavaScript that only enhances them,
// SVG charts drawn on the server, and every template and asset embedded in
// the binary, so nothing is fetched from anywhere else.
//
// What belongs here: the pages (overview with the replicas, engines, engine,
// products with their rollouts), their forms and the actions they post, the sign-in and its
// sessions, and the live stream (server-sent events) that tells open pages
// to refresh.
// What does not: any rule of the fleet itself. The dashboard calls the same
// services as the HTTP API — lifecycle for engine actions (upgrades
// included), the rollout service for a product's rollouts, the registry for
// reads and product administration, discovery to drop cached products, and
// the api package's own policy validation and error table, so that a form
// refuses what the API refuses in the same words. It never calls a backend.
//
// Upgrades and rollouts. The engine page upgrades an engine to a typed
// version through lifecycle.Manager.Upgrade, which rolls a version that is
// not healthy back by itself: the page then shows UPGRADE_FAILED with the
// engine's reason, and the engine is as it was. While an operation is in
// flight the page shows it, and an upgrade's phase. The product page lists
// the product's rollouts and posts their forms (create, raise the percent,
// pause, resume, abort) to Deps.Rollouts. The API serves rollouts on the
// admin key only, so a product session sees none and its posts are refused
// (403); without Deps.Rollouts the forms answer 404 as the API does.
//
// Sessions. An admin signs in with ORCH_ADMIN_KEY and sees every product; a
// product's operator signs in with its platform key and sees that product
// only, another product's engine answering 404 as in the API. A session
// lives in this process's memory: its cookie (HttpOnly, SameSite=Strict,
// Path=/ui, Secure behind TLS) holds a random id, an expiry and an HMAC of
// both under a per-process key, and is worth nothing once the session ends
// (sign-out, expiry, restart). A product session also ends as soon as the
// key it signed in with stops authenticating (rotated and past its grace).
// Keys are only ever read from a POST body; they never reach a page, a URL,
// a cookie or a log, and a refused key is not echoed. A key the dashboard
// creates (engine key rotation, platform key rotation) is shown once, on the
// answer to the POST that created it, which is never cached.
//
// Forms. Every state-changing request is a POST of an HTML form carrying the
// session's CSRF token; without a valid session and token it is refused
// with 403 and changes nothing. The sign-in form, which has no session yet,
// carries a token bound to a short-lived cookie of its own. Each action is
// behind a confirmation step (a <details> disclosure, so it needs no
// script); destroying an engine also asks for its user id to be typed.
//
// Live updates. GET /ui/events streams an event whenever an engine the
// viewer may see changes (from the store's change feed, registry.Watcher)
// or the counts per product and state change (a cheap poll, which also
// covers what the feed does not report: SQLite hears only of this process's
// own writes). Pages then refetch themselves and swap their live regions.
// Without JavaScript every page still reads and acts; it only needs a
// reload to show changes.
package ui
