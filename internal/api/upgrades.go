package api

import (
	"net/http"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
)

// decodeUpgrade parses {"engine_version": str}.
func decodeUpgrade(b []byte) (string, error) {
	f, err := parseObject(b, false)
	if err != nil {
		return "", err
	}
	v, _, err := f.str("engine_version", true)
	if err != nil {
		return "", err
	}
	if v == "" {
		return "", bap.Errorf(bap.CodeValidation, "engine_version must not be empty.")
	}
	return v, nil
}

type upgradeResponse struct {
	EngineID        string `json:"engine_id"`
	UserID          string `json:"user_id"`
	Status          string `json:"status"`
	URL             string `json:"url"`
	EngineVersion   string `json:"engine_version"`
	PreviousVersion string `json:"previous_version"`
}

// upgrade: POST /engines/{user_id}/upgrade (SPEC §16).
func (s *server) upgrade(w http.ResponseWriter, r *http.Request, e bap.Engine, p bap.Product) (any, error) {
	image, err := readRequest(s, w, r, decodeUpgrade)
	if err != nil {
		return nil, err
	}
	res, err := s.lifecycle.Upgrade(r.Context(), e.ID, image, p.Slug)
	if err != nil {
		return nil, err
	}
	return upgradeResponse{
		EngineID:        res.Engine.ID,
		UserID:          res.Engine.UserID,
		Status:          string(res.Engine.Status),
		URL:             res.Engine.URL,
		EngineVersion:   res.Engine.Image,
		PreviousVersion: e.Image,
	}, nil
}

// operationInfo is the operation in flight on an engine, shown so that a
// client waiting on a long one (an upgrade) can tell its phase.
type operationInfo struct {
	Op    string `json:"op"`
	Phase string `json:"phase,omitempty"`
}

func operationOf(e bap.Engine) *operationInfo {
	if !e.Claim.Held() {
		return nil
	}
	return &operationInfo{Op: string(e.Claim.Op), Phase: lifecycle.UpgradePhase(e)}
}
