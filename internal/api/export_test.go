package api

// RouteInfo describes one entry of the route table, for the black-box tests.
type RouteInfo struct {
	Method, Path string
	// Auth is "none", "platform", "admin" or "self" (admit authenticates
	// itself with the platform key).
	Auth string
}

// Routes returns the route table as New registers it.
func Routes() []RouteInfo {
	names := map[authKind]string{authNone: "none", authPlatform: "platform", authAdmin: "admin", authSelf: "self", authMetrics: "metrics"}
	var out []RouteInfo
	for _, rt := range (&server{}).routes() {
		out = append(out, RouteInfo{Method: rt.method, Path: rt.path, Auth: names[rt.auth]})
	}
	return out
}

// StatusOf exposes the error-code → HTTP status table.
func StatusOf() map[string]int { return statusOf }

// Decoders, for the fuzz tests.
var (
	DecodeProvision    = decodeProvision
	DecodeAdmit        = decodeAdmit
	DecodeRegister     = decodeRegister
	DecodePolicyUpdate = decodePolicyUpdate
)
