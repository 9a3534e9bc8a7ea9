package api_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/registry/storetest"
)

// openAPIDoc fetches the served document.
func openAPIDoc(t *testing.T, h *harness) map[string]any {
	t.Helper()
	r := h.do(http.MethodGet, "/openapi.json", "", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	var doc map[string]any
	require.NoError(t, json.Unmarshal(r.body, &doc))
	return doc
}

// resolve follows a local $ref ("#/components/...").
func resolve(t *testing.T, doc map[string]any, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	require.True(t, ok, "not an object: %v", v)
	ref, ok := m["$ref"].(string)
	if !ok {
		return m
	}
	require.True(t, strings.HasPrefix(ref, "#/"), "only local refs: %s", ref)
	var cur any = doc
	for _, part := range strings.Split(ref[2:], "/") {
		obj, ok := cur.(map[string]any)
		require.True(t, ok, "ref %s: %s is not an object", ref, part)
		cur, ok = obj[part]
		require.True(t, ok, "ref %s does not resolve at %s", ref, part)
	}
	return resolve(t, doc, cur)
}

// refs collects every $ref in v.
func refs(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if k == "$ref" {
				if s, ok := e.(string); ok {
					*out = append(*out, s)
				}
			}
			refs(e, out)
		}
	case []any:
		for _, e := range x {
			refs(e, out)
		}
	}
}

func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t), options{})
	doc := openAPIDoc(t, h)
	require.Equal(t, "3.1.0", doc["openapi"])
	paths := doc["paths"].(map[string]any)

	// Every $ref resolves.
	var all []string
	refs(doc, &all)
	require.NotEmpty(t, all)
	for _, ref := range all {
		resolve(t, doc, map[string]any{"$ref": ref})
	}

	// The error envelope is the one documented shape.
	envelope := resolve(t, doc, map[string]any{"$ref": "#/components/schemas/Error"})
	require.Equal(t, []any{"error"}, envelope["required"])
	// Its code enum names every code the server answers with, no more.
	errObj := envelope["properties"].(map[string]any)["error"].(map[string]any)
	codeSchema := errObj["properties"].(map[string]any)["code"].(map[string]any)
	var documented, answered []string
	for _, c := range codeSchema["enum"].([]any) {
		documented = append(documented, c.(string))
	}
	for c := range api.StatusOf() {
		answered = append(answered, c)
	}
	require.ElementsMatch(t, answered, documented, "the Error schema's code enum is the status table's codes")

	ops := 0
	for _, item := range paths {
		ops += len(item.(map[string]any))
	}
	routes := api.Routes()
	require.Equal(t, len(routes), ops, "the document has exactly the registered routes")
	for _, rt := range routes {
		item, ok := paths[rt.Path].(map[string]any)
		require.True(t, ok, "path %s missing from openapi.json", rt.Path)
		opv, ok := item[strings.ToLower(rt.Method)]
		require.True(t, ok, "%s %s missing from openapi.json", rt.Method, rt.Path)
		op := opv.(map[string]any)
		require.NotEmpty(t, op["operationId"])
		require.NotEmpty(t, op["summary"])

		// Security matches the route's auth.
		sec, _ := op["security"].([]any)
		var schemes []string
		for _, s := range sec {
			for name := range s.(map[string]any) {
				schemes = append(schemes, name)
			}
		}
		switch rt.Auth {
		case "platform", "self":
			require.Equal(t, []string{"PlatformKey"}, schemes, "%s %s", rt.Method, rt.Path)
		case "admin":
			require.Equal(t, []string{"AdminKey"}, schemes, "%s %s", rt.Method, rt.Path)
		case "metrics":
			require.ElementsMatch(t, []string{"AdminKey", "MetricsToken"}, schemes, "%s %s", rt.Method, rt.Path)
		case "none":
			require.Empty(t, schemes, "%s %s", rt.Method, rt.Path)
		}

		// Path parameters are declared.
		var declared []string
		for _, p := range op["parameters"].([]any) {
			pm := resolve(t, doc, p)
			if pm["in"] == "path" {
				declared = append(declared, pm["name"].(string))
			}
		}
		for _, name := range []string{"user_id", "product_id", "product"} {
			require.Equal(t, strings.Contains(rt.Path, "{"+name+"}"), slices.Contains(declared, name),
				"%s %s: path parameter %s", rt.Method, rt.Path, name)
		}

		// 200 is documented; every error answer uses the envelope; a
		// keyed route documents its 401.
		responses := op["responses"].(map[string]any)
		require.Contains(t, responses, "200", "%s %s", rt.Method, rt.Path)
		require.Contains(t, responses, "500", "%s %s", rt.Method, rt.Path)
		if rt.Auth != "none" {
			require.Contains(t, responses, "401", "%s %s", rt.Method, rt.Path)
		}
		for code, rv := range responses {
			if code == "200" {
				continue
			}
			resp := resolve(t, doc, rv)
			content := resp["content"].(map[string]any)["application/json"].(map[string]any)
			schema := resolve(t, doc, content["schema"])
			require.Equal(t, envelope, schema, "%s %s answers %s with the envelope", rt.Method, rt.Path, code)
		}
		if rt.Method == http.MethodPost || rt.Method == http.MethodPut {
			if rb, ok := op["requestBody"]; ok {
				resolve(t, doc, rb.(map[string]any)["content"].(map[string]any)["application/json"].(map[string]any)["schema"])
			}
		}
	}
}

// TestOpenAPISchemasMatchAnswers checks the documented success schemas
// against real answers: the same required keys, nothing undocumented.
func TestOpenAPISchemasMatchAnswers(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t), options{})
	doc := openAPIDoc(t, h)
	_, p := h.product("documented", "")
	key := map[string]string{api.HeaderPlatformKey: p.PlatformAPIKey}
	admin := map[string]string{api.HeaderAdminKey: h.adminKey}

	check := func(schemaName string, r response) map[string]any {
		t.Helper()
		require.Equal(t, http.StatusOK, r.status, "%s: %s", schemaName, r.body)
		schema := resolve(t, doc, map[string]any{"$ref": "#/components/schemas/" + schemaName})
		body := r.json(t)
		var required []string
		for _, k := range schema["required"].([]any) {
			required = append(required, k.(string))
		}
		slices.Sort(required)
		require.Equal(t, required, keysOf(body), "%s: answer keys match the schema's required keys", schemaName)
		props := schema["properties"].(map[string]any)
		for k := range body {
			require.Contains(t, props, k, "%s: %s is documented", schemaName, k)
		}
		return body
	}

	prov := check("ProvisionResponse", h.do(http.MethodPost, "/engines/provision", `{"user_id":"u1"}`, key))
	h.remember(prov["api_key"].(string))
	check("EngineInfo", h.do(http.MethodGet, "/engines/u1", "", key))
	list := check("EngineList", h.do(http.MethodGet, "/engines", "", key))
	summary := resolve(t, doc, map[string]any{"$ref": "#/components/schemas/EngineSummary"})
	require.Len(t, summary["required"], len(list["engines"].([]any)[0].(map[string]any)))
	check("StopResponse", h.do(http.MethodPost, "/engines/u1/stop", "", key))
	check("StartResponse", h.do(http.MethodPost, "/engines/u1/start", "", key))
	rot := check("RotateKeyResponse", h.do(http.MethodPost, "/engines/u1/rotate-key", "", key))
	h.remember(rot["api_key"].(string))
	check("AuditPage", h.do(http.MethodGet, "/engines/u1/audit", "", key))
	check("FleetStatus", h.do(http.MethodGet, "/status", "", key))
	check("FleetMetrics", h.do(http.MethodGet, "/metrics", "", key))
	check("Health", h.do(http.MethodGet, "/health", "", nil))
	reg := check("RegisterResponse", h.do(http.MethodPost, "/products/register", `{"slug":"doc2","display_name":"D"}`, admin))
	h.remember(reg["platform_api_key"].(string))
	check("PolicyResponse", h.do(http.MethodPut, "/products/"+p.ProductID+"/policy", `{"policy":{}}`, admin))
	pk := check("PlatformKeyRotation", h.do(http.MethodPost, "/products/"+p.ProductID+"/rotate-platform-key", "", admin))
	h.remember(pk["platform_api_key"].(string))
	check("DestroyResponse", h.do(http.MethodDelete, "/engines/u1", "", map[string]string{api.HeaderPlatformKey: pk["platform_api_key"].(string)}))
}
