package api

import "net/http"

// authKind is what a route requires.
type authKind int

const (
	authNone     authKind = iota
	authPlatform          // X-Platform-Key: the handler gets the calling product
	authAdmin             // X-Admin-Key
	authSelf              // the handler authenticates itself (admit: one query)
	authMetrics           // X-Admin-Key, or Authorization: Bearer <Deps.MetricsToken>
)

// route is one entry of the API.
type route struct {
	method string
	path   string
	auth   authKind
	// h serves the request; p is the calling product on authPlatform routes
	// and the zero Product elsewhere.
	h handlerFunc
}

func (rt route) pattern() string { return rt.method + " " + rt.path }

// routes is the whole API (SPEC §2; the last block is additive).
func (s *server) routes() []route {
	return []route{
		// Engine lifecycle.
		{http.MethodPost, "/engines/provision", authPlatform, s.provision},
		{http.MethodDelete, "/engines/{user_id}", authPlatform, s.onEngine(s.destroy)},
		{http.MethodPost, "/engines/{user_id}/start", authPlatform, s.onEngine(s.start)},
		{http.MethodPost, "/engines/{user_id}/stop", authPlatform, s.onEngine(s.stop)},
		{http.MethodPost, "/engines/{user_id}/rotate-key", authPlatform, s.onEngine(s.rotateKey)},
		// Discovery and admission.
		{http.MethodGet, "/engines/{user_id}", authPlatform, s.onEngine(s.getEngine)},
		{http.MethodPost, "/engines/{user_id}/admit", authSelf, s.admit},
		// Fleet.
		{http.MethodGet, "/engines", authPlatform, s.listEngines},
		{http.MethodGet, "/status", authPlatform, s.status},
		{http.MethodGet, "/metrics", authPlatform, s.fleetMetrics},
		// Admin.
		{http.MethodPost, "/products/register", authAdmin, s.registerProduct},
		{http.MethodPut, "/products/{product_id}/policy", authAdmin, s.updatePolicy},
		// Health.
		{http.MethodGet, "/health", authNone, s.health},
		// Beyond the original.
		{http.MethodGet, "/openapi.json", authNone, s.openAPI},
		{http.MethodGet, "/metrics/prometheus", authMetrics, s.prometheus},
		{http.MethodGet, "/engines/{user_id}/audit", authPlatform, s.engineAudit},
		{http.MethodPost, "/products/{product_id}/rotate-platform-key", authAdmin, s.rotatePlatformKey},
		{http.MethodGet, "/replicas", authAdmin, s.replicas},
		// Operator surface (SPEC §2): wherever a route names a product,
		// its id or its slug.
		{http.MethodGet, "/products", authAdmin, s.listProducts},
		{http.MethodGet, "/products/{product}", authAdmin, s.getProduct},
		{http.MethodGet, "/fleet/engines", authAdmin, s.fleetEngines},
		{http.MethodGet, "/engines/{user_id}/logs", authPlatform, s.engineLogs},
		// Probes and build (no auth): /health keeps its original meaning.
		{http.MethodGet, "/livez", authNone, s.livez},
		{http.MethodGet, "/readyz", authNone, s.readyz},
		{http.MethodGet, "/version", authNone, s.version},
		// Upgrades and rollouts (SPEC §16).
		{http.MethodPost, "/engines/{user_id}/upgrade", authPlatform, s.onEngine(s.upgrade)},
		{http.MethodPost, "/products/{product}/rollouts", authAdmin, s.createRollout},
		{http.MethodGet, "/products/{product}/rollouts", authAdmin, s.listRollouts},
		{http.MethodGet, "/products/{product}/rollouts/{rollout_id}", authAdmin, s.rolloutOp("get")},
		{http.MethodPatch, "/products/{product}/rollouts/{rollout_id}", authAdmin, s.rolloutOp("patch")},
		{http.MethodPost, "/products/{product}/rollouts/{rollout_id}/pause", authAdmin, s.rolloutOp("pause")},
		{http.MethodPost, "/products/{product}/rollouts/{rollout_id}/resume", authAdmin, s.rolloutOp("resume")},
		{http.MethodPost, "/products/{product}/rollouts/{rollout_id}/abort", authAdmin, s.rolloutOp("abort")},
	}
}
