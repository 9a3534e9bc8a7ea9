package api_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/bap"
)

// onlyValidation fails unless err is nil or a VALIDATION_ERROR: a decoder
// never produces anything that would answer 5xx.
func onlyValidation(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	e, ok := bap.AsError(err)
	require.True(t, ok, "decoder returned a non-API error: %v", err)
	require.Equal(t, bap.CodeValidation, e.Code, "decoder returned %v", err)
	require.NotEmpty(t, e.Message)
}

func FuzzDecodeProvision(f *testing.F) {
	for _, s := range []string{
		`{"user_id":"u1"}`, `{"user_id":"u1","engine_version":"september-engine:2.3.0"}`,
		`{"user_id":42}`, `{"user_id":null}`, `{}`, `[]`, `null`, ``, `{"user_id":"a/b"}`,
		`{"user_id":"\u0000"}`, `{"user_id":"u","engine_version":{}}`, `{"user_id":"u"}{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := api.DecodeProvision(b)
		onlyValidation(t, err)
		if err == nil {
			require.NoError(t, bap.ValidateUserID(req.UserID), "an accepted body has a valid user_id")
		}
	})
}

func FuzzDecodeAdmit(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `{"auto_provision":true}`, `{"auto_provision":true,"auto_wake":false}`,
		`{"auto_wake":"true"}`, `{"auto_wake":null}`, `{"auto_provision":1}`, `[true]`, `true`, `{"x":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		opts, err := api.DecodeAdmit(b)
		onlyValidation(t, err)
		if err != nil {
			return
		}
		// An accepted body agrees with encoding/json on both switches.
		var v map[string]any
		if len(b) > 0 && json.Unmarshal(b, &v) == nil {
			ap, _ := v["auto_provision"].(bool)
			aw, _ := v["auto_wake"].(bool)
			require.Equal(t, ap, opts.AutoProvision)
			require.Equal(t, aw, opts.AutoWake)
		}
	})
}

func FuzzDecodePolicy(f *testing.F) {
	for _, s := range []string{
		`{"policy":{}}`, `{"policy":{"max_engines":10,"rate_limit_rpm":60}}`, `{"policy":{"max_engines":"10"}}`,
		`{"policy":{"engine_cpus":1.5,"tier":"x"}}`, `{"policy":null}`, `{"policy":[]}`, `{"policy":{"max_running":-1}}`,
		`{"policy":{"max_engines":1e400}}`, `{"policy":{"max_engines":2147483648}}`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pol, err := api.DecodePolicyUpdate(b)
		onlyValidation(t, err)
		if err == nil {
			var m map[string]any
			require.NoError(t, json.Unmarshal(pol.JSON(), &m), "an accepted policy is stored as a JSON object")
		}
		reg, err := api.DecodeRegister(b)
		onlyValidation(t, err)
		if err == nil {
			require.NotEmpty(t, reg.Slug)
		}
	})
}

// FuzzUserID drives GET /engines/{user_id} through the whole handler: any
// user id answers 404 (valid, no engine) or 422 (invalid), never 5xx, and
// the handler agrees with bap.ValidateUserID.
func FuzzUserID(f *testing.F) {
	for _, s := range []string{"u1", "user@example.com", ".x", "a/b", "", "a b", "é", "..", "%00", "x:y-z_1.2"} {
		f.Add(s)
	}
	h := newHarness(f, openSQLite(f), options{})
	_, p := h.product("fuzzed", "")
	hc := h.srv.Client()
	f.Fuzz(func(t *testing.T, userID string) {
		if userID == "" {
			return // the empty segment is another route (GET /engines)
		}
		req, err := http.NewRequest(http.MethodGet, h.srv.URL+"/engines/"+url.PathEscape(userID), nil)
		require.NoError(t, err)
		req.Header.Set(api.HeaderPlatformKey, p.PlatformAPIKey)
		resp, err := hc.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Less(t, resp.StatusCode, 500, "user_id %q: %s", userID, body)
		var env struct {
			Error struct{ Code string } `json:"error"`
		}
		require.NoError(t, json.Unmarshal(body, &env), "%s", body)
		switch env.Error.Code {
		case bap.CodeEngineNotFound:
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			require.NoError(t, bap.ValidateUserID(userID), "accepted user_id %q", userID)
		case bap.CodeValidation:
			require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
			require.Error(t, bap.ValidateUserID(userID), "rejected user_id %q", userID)
		case bap.CodeNotFound:
			// Dot segments and a lone escaped slash are path syntax to the
			// router, not a user id: the route is unknown. None is valid.
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			require.Error(t, bap.ValidateUserID(userID), "user_id %q", userID)
		default:
			t.Fatalf("user_id %q: unexpected %d %s", userID, resp.StatusCode, body)
		}
	})
}
