package bap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
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
	Raw            json.RawMessage
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
	return p, nil
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
