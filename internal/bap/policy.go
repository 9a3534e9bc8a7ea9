package bap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
)

// Policy is a product's policy (SPEC §6). Raw keeps the whole JSON object as
// given, unknown keys included; the known keys are parsed into the fields.
// A nil pointer means "no limit".
type Policy struct {
	MaxEngines     *int
	RateLimitRPM   *int
	MaxRunning     *int
	EngineMemoryMB *int
	EngineCPUs     *float64
	// EngineVersion pins the image of the product's new engines (SPEC
	// §16); a provision's engine_version still overrides it. A rollout to
	// 100 % sets it.
	EngineVersion *string
	Raw           json.RawMessage
}

// ParsePolicy validates and parses a policy object. Empty input is {}. Wrong
// types or negative limits are a VALIDATION_ERROR naming the key.
func ParsePolicy(raw []byte) (Policy, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		raw = []byte("{}")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return Policy{}, Errorf(CodeValidation, "policy must be a JSON object")
	}
	p := Policy{Raw: append(json.RawMessage(nil), raw...)}
	ints := []struct {
		key string
		dst **int
	}{
		{"max_engines", &p.MaxEngines},
		{"rate_limit_rpm", &p.RateLimitRPM},
		{"max_running", &p.MaxRunning},
		{"engine_memory_mb", &p.EngineMemoryMB},
	}
	for _, f := range ints {
		v, ok := fields[f.key]
		if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			continue
		}
		n, err := parseNonNegInt(v)
		if err != nil {
			return Policy{}, Errorf(CodeValidation, "policy.%s %s", f.key, err)
		}
		*f.dst = &n
	}
	if v, ok := fields["engine_cpus"]; ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		var x float64
		if err := json.Unmarshal(v, &x); err != nil || x < 0 || math.IsInf(x, 0) {
			return Policy{}, Errorf(CodeValidation, "policy.engine_cpus must be a non-negative number")
		}
		p.EngineCPUs = &x
	}
	if v, ok := fields["engine_version"]; ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		var s string
		if err := json.Unmarshal(v, &s); err != nil || s == "" || len(s) > 255 || strings.ContainsAny(s, " \t\r\n") {
			return Policy{}, Errorf(CodeValidation, "policy.engine_version must be a non-empty image reference")
		}
		p.EngineVersion = &s
	}
	return p, nil
}

// WithEngineVersion returns the policy with engine_version set to v, its
// other keys (unknown ones included) kept.
func (p Policy) WithEngineVersion(v string) (Policy, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(p.JSON(), &fields); err != nil || fields == nil {
		fields = map[string]json.RawMessage{}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return Policy{}, err
	}
	fields["engine_version"] = b
	raw, err := json.Marshal(fields)
	if err != nil {
		return Policy{}, err
	}
	return ParsePolicy(raw)
}

func parseNonNegInt(v json.RawMessage) (int, error) {
	var x float64
	if err := json.Unmarshal(v, &x); err != nil {
		return 0, fmt.Errorf("must be an integer")
	}
	if x != math.Trunc(x) || x > math.MaxInt32 {
		return 0, fmt.Errorf("must be an integer")
	}
	if x < 0 {
		return 0, fmt.Errorf("must not be negative")
	}
	return int(x), nil
}

// JSON returns the policy object as stored and shown: Raw, or {} when empty.
func (p Policy) JSON() json.RawMessage {
	if len(p.Raw) == 0 {
		return json.RawMessage("{}")
	}
	return p.Raw
}

// MarshalJSON renders the policy as its raw object.
func (p Policy) MarshalJSON() ([]byte, error) { return p.JSON(), nil }
