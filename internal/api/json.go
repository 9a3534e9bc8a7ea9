package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
)

// writeJSON answers with v as JSON. v is always one of the api's own
// response types, so a marshal failure is a programming error; it is still
// answered with the envelope rather than a half-written body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"INTERNAL","message":"` + msgInternal + `"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// readBody reads the request body, at most s.maxBody bytes: more is 413
// PAYLOAD_TOO_LARGE.
func (s *server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > s.maxBody {
		return nil, tooLarge(s.maxBody)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge(s.maxBody)
	case err != nil:
		return nil, bap.Errorf(bap.CodeValidation, "The request body could not be read.")
	}
	return b, nil
}

// readRequest reads the request body (readBody) and decodes it with decode.
func readRequest[T any](s *server, w http.ResponseWriter, r *http.Request, decode func([]byte) (T, error)) (T, error) {
	b, err := s.readBody(w, r)
	if err != nil {
		var zero T
		return zero, err
	}
	return decode(b)
}

func tooLarge(limit int64) error {
	return bap.Errorf(bap.CodePayloadTooLarge, "The request body is larger than %d bytes.", limit)
}

// fields is a request body object, field by field, so each field's type is
// checked and reported by name. Unknown fields are ignored.
type fields map[string]json.RawMessage

// parseObject parses b as exactly one JSON object. An empty body is an
// empty object when allowEmpty, else an error.
func parseObject(b []byte, allowEmpty bool) (fields, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		if allowEmpty {
			return fields{}, nil
		}
		return nil, bap.Errorf(bap.CodeValidation, "The request body must be a JSON object.")
	}
	var f fields
	if err := json.Unmarshal(b, &f); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, bap.Errorf(bap.CodeValidation, "The request body must be a JSON object.")
		}
		return nil, bap.Errorf(bap.CodeValidation, "The request body is not valid JSON.")
	}
	if f == nil { // the body was null
		return nil, bap.Errorf(bap.CodeValidation, "The request body must be a JSON object.")
	}
	return f, nil
}

// isNull reports whether the field is absent or JSON null.
func (f fields) isNull(key string) bool {
	v, ok := f[key]
	return !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

// str returns a string field; absent or null is "" and ok=false.
func (f fields) str(key string, required bool) (string, bool, error) {
	if f.isNull(key) {
		if required {
			return "", false, bap.Errorf(bap.CodeValidation, "%s is required.", key)
		}
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(f[key], &s); err != nil {
		return "", false, bap.Errorf(bap.CodeValidation, "%s must be a string.", key)
	}
	return s, true, nil
}

// boolean returns a boolean field; absent is false. null, strings and
// numbers are not booleans.
func (f fields) boolean(key string) (bool, error) {
	v, ok := f[key]
	if !ok {
		return false, nil
	}
	switch string(bytes.TrimSpace(v)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, bap.Errorf(bap.CodeValidation, "%s must be a boolean.", key)
}

// object returns an object field; absent or null is nil.
func (f fields) object(key string, required bool) (json.RawMessage, error) {
	if f.isNull(key) {
		if required {
			return nil, bap.Errorf(bap.CodeValidation, "%s is required.", key)
		}
		return nil, nil
	}
	v := bytes.TrimSpace(f[key])
	if v[0] != '{' {
		return nil, bap.Errorf(bap.CodeValidation, "%s must be a JSON object.", key)
	}
	// Stored and shown compact, whatever the caller's formatting.
	var buf bytes.Buffer
	if err := json.Compact(&buf, v); err != nil {
		return nil, bap.Errorf(bap.CodeValidation, "%s must be a JSON object.", key)
	}
	return buf.Bytes(), nil
}

// provisionRequest is the body of POST /engines/provision.
type provisionRequest struct {
	UserID        bap.UserID
	EngineVersion string
}

// decodeProvision parses {"user_id": str, "engine_version"?: str}.
func decodeProvision(b []byte) (provisionRequest, error) {
	f, err := parseObject(b, false)
	if err != nil {
		return provisionRequest{}, err
	}
	var req provisionRequest
	userID, _, err := f.str("user_id", true)
	if err != nil {
		return provisionRequest{}, err
	}
	if req.UserID, err = bap.ParseUserID(userID); err != nil {
		return provisionRequest{}, err
	}
	if req.EngineVersion, _, err = f.str("engine_version", false); err != nil {
		return provisionRequest{}, err
	}
	return req, nil
}

// decodeAdmit parses {"auto_provision"?: bool, "auto_wake"?: bool}; an empty
// body is all defaults.
func decodeAdmit(b []byte) (discovery.Options, error) {
	f, err := parseObject(b, true)
	if err != nil {
		return discovery.Options{}, err
	}
	var o discovery.Options
	if o.AutoProvision, err = f.boolean("auto_provision"); err != nil {
		return discovery.Options{}, err
	}
	if o.AutoWake, err = f.boolean("auto_wake"); err != nil {
		return discovery.Options{}, err
	}
	return o, nil
}

// slugPattern is what a product slug may be: it appears in audit rows, logs
// and metric labels.
var slugPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// maxDisplayName bounds display_name, in characters.
const maxDisplayName = 200

// registerRequest is the body of POST /products/register.
type registerRequest struct {
	Slug        string
	DisplayName string
	Policy      bap.Policy
}

// decodeRegister parses {"slug", "display_name", "policy"?: {}}.
func decodeRegister(b []byte) (registerRequest, error) {
	f, err := parseObject(b, false)
	if err != nil {
		return registerRequest{}, err
	}
	var req registerRequest
	if req.Slug, _, err = f.str("slug", true); err != nil {
		return registerRequest{}, err
	}
	if !slugPattern.MatchString(req.Slug) {
		return registerRequest{}, bap.Errorf(bap.CodeValidation,
			"slug must be 1-63 characters of lowercase letters, digits and '-', starting with a letter or digit.")
	}
	if req.DisplayName, _, err = f.str("display_name", true); err != nil {
		return registerRequest{}, err
	}
	if strings.TrimSpace(req.DisplayName) == "" {
		return registerRequest{}, bap.Errorf(bap.CodeValidation, "display_name must not be empty.")
	}
	if utf8.RuneCountInString(req.DisplayName) > maxDisplayName {
		return registerRequest{}, bap.Errorf(bap.CodeValidation, "display_name must be at most %d characters.", maxDisplayName)
	}
	raw, err := f.object("policy", false)
	if err != nil {
		return registerRequest{}, err
	}
	if req.Policy, err = parsePolicy(raw); err != nil {
		return registerRequest{}, err
	}
	return req, nil
}

// decodePolicyUpdate parses {"policy": {...}}.
func decodePolicyUpdate(b []byte) (bap.Policy, error) {
	f, err := parseObject(b, false)
	if err != nil {
		return bap.Policy{}, err
	}
	return policyField(f)
}

// policyField validates the required "policy" member of f.
func policyField(f fields) (bap.Policy, error) {
	raw, err := f.object("policy", true)
	if err != nil {
		return bap.Policy{}, err
	}
	return parsePolicy(raw)
}

// DecodePolicy validates raw as the "policy" member of a
// PUT /products/{product_id}/policy body, with that route's checks and error
// messages (VALIDATION_ERROR), so that other editors of a policy refuse what
// the API refuses, in the same words. Blank raw is an absent policy.
func DecodePolicy(raw []byte) (bap.Policy, error) {
	f := fields{}
	if t := bytes.TrimSpace(raw); len(t) > 0 {
		f["policy"] = t
	}
	return policyField(f)
}

// parsePolicy is bap.ParsePolicy, also refusing values that the policy's
// readers could not decode (a number beyond float64 in an unknown key), so
// what is stored always reads back.
func parsePolicy(raw json.RawMessage) (bap.Policy, error) {
	p, err := bap.ParsePolicy(raw)
	if err != nil {
		return bap.Policy{}, err
	}
	var m map[string]any
	if err := json.Unmarshal(p.JSON(), &m); err != nil {
		return bap.Policy{}, bap.Errorf(bap.CodeValidation, "policy holds a value out of range.")
	}
	return p, nil
}
