package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/discovery"
	"github.com/september/bap-engine/internal/metrics"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// engineInfo is EngineInfo (SPEC §2). APIKey is nil in lists, which never
// carry keys, and a string everywhere else.
type engineInfo struct {
	EngineID      string  `json:"engine_id"`
	UserID        string  `json:"user_id"`
	Status        string  `json:"status"`
	URL           string  `json:"url"`
	APIKey        *string `json:"api_key,omitempty"`
	EngineVersion string  `json:"engine_version"`
	CreatedAt     string  `json:"created_at"`
	LastHealthAt  *string `json:"last_health_at"`
	// Operation is the operation in flight (additive; absent when none).
	Operation *operationInfo `json:"operation,omitempty"`
}

func toEngineInfo(e bap.Engine, key *string) engineInfo {
	info := engineInfo{
		EngineID:      e.ID,
		UserID:        e.UserID,
		Status:        string(e.Status),
		URL:           e.URL,
		APIKey:        key,
		EngineVersion: e.Image,
		CreatedAt:     bap.FormatTime(e.CreatedAt),
		Operation:     operationOf(e),
	}
	if e.LastHealthAt != nil {
		t := bap.FormatTime(*e.LastHealthAt)
		info.LastHealthAt = &t
	}
	return info
}

// withKey is e's EngineInfo with its key decrypted.
func (s *server) withKey(e bap.Engine) (engineInfo, error) {
	key, err := s.lifecycle.APIKey(e)
	if err != nil {
		return engineInfo{}, err
	}
	return toEngineInfo(e, &key), nil
}

// engineOf returns the calling product's engine of the {user_id} in the
// path. Another product's engine is as absent as no engine at all.
func (s *server) engineOf(r *http.Request, p bap.Product) (bap.Engine, error) {
	userID, err := bap.ParseUserID(r.PathValue("user_id"))
	if err != nil {
		return bap.Engine{}, err
	}
	e, err := s.store.GetEngineByUser(r.Context(), p.ID, string(userID))
	if errors.Is(err, registry.ErrNotFound) {
		return bap.Engine{}, bap.Errorf(bap.CodeEngineNotFound, msgEngineNotFound)
	}
	if err != nil {
		return bap.Engine{}, fmt.Errorf("read engine: %w", err)
	}
	return e, nil
}

// engineFunc serves a route on e, the calling product p's engine of the
// {user_id} in the path, and returns the 200 answer's body.
type engineFunc func(w http.ResponseWriter, r *http.Request, e bap.Engine, p bap.Product) (any, error)

// onEngine adapts an engineFunc: it finds the engine (engineOf) and answers
// 200 with what op returns.
func (s *server) onEngine(op engineFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p bap.Product) error {
		e, err := s.engineOf(r, p)
		if err != nil {
			return err
		}
		out, err := op(w, r, e, p)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}

type provisionResponse struct {
	EngineID string `json:"engine_id"`
	UserID   string `json:"user_id"`
	Status   string `json:"status"`
	URL      string `json:"url"`
	APIKey   string `json:"api_key"`
}

// provision: POST /engines/provision.
func (s *server) provision(w http.ResponseWriter, r *http.Request, p bap.Product) error {
	req, err := readRequest(s, w, r, decodeProvision)
	if err != nil {
		return err
	}
	res, err := s.lifecycle.Provision(r.Context(), p, req.UserID, req.EngineVersion, p.Slug)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, provisionResponse{
		EngineID: res.Engine.ID,
		UserID:   res.Engine.UserID,
		Status:   string(res.Engine.Status),
		URL:      res.Engine.URL,
		APIKey:   res.APIKey,
	})
	return nil
}

type statusEngineResponse struct {
	Status   string `json:"status"`
	EngineID string `json:"engine_id"`
}

// destroy: DELETE /engines/{user_id}.
func (s *server) destroy(_ http.ResponseWriter, r *http.Request, e bap.Engine, p bap.Product) (any, error) {
	if _, err := s.lifecycle.Destroy(r.Context(), e.ID, p.Slug); err != nil {
		return nil, err
	}
	return statusEngineResponse{Status: "destroyed", EngineID: e.ID}, nil
}

type startResponse struct {
	Status string `json:"status"`
	URL    string `json:"url"`
}

// start: POST /engines/{user_id}/start.
func (s *server) start(_ http.ResponseWriter, r *http.Request, e bap.Engine, p bap.Product) (any, error) {
	res, err := s.lifecycle.Start(r.Context(), e.ID, p.Slug)
	if err != nil {
		return nil, err
	}
	return startResponse{Status: string(res.Engine.Status), URL: res.Engine.URL}, nil
}

// stop: POST /engines/{user_id}/stop.
func (s *server) stop(_ http.ResponseWriter, r *http.Request, e bap.Engine, p bap.Product) (any, error) {
	res, err := s.lifecycle.Stop(r.Context(), e.ID, p.Slug)
	if err != nil {
		return nil, err
	}
	return statusEngineResponse{Status: string(res.Engine.Status), EngineID: e.ID}, nil
}

type rotateKeyResponse struct {
	EngineID string `json:"engine_id"`
	APIKey   string `json:"api_key"`
	Status   string `json:"status"`
}

// rotateKey: POST /engines/{user_id}/rotate-key.
func (s *server) rotateKey(_ http.ResponseWriter, r *http.Request, e bap.Engine, p bap.Product) (any, error) {
	res, err := s.lifecycle.RotateKey(r.Context(), e.ID, p.Slug)
	if err != nil {
		return nil, err
	}
	return rotateKeyResponse{EngineID: e.ID, APIKey: res.APIKey, Status: string(res.Engine.Status)}, nil
}

// getEngine: GET /engines/{user_id}.
func (s *server) getEngine(_ http.ResponseWriter, _ *http.Request, e bap.Engine, _ bap.Product) (any, error) {
	return s.withKey(e)
}

type admitResponse struct {
	Admitted bool        `json:"admitted"`
	Engine   *engineInfo `json:"engine"`
	Reason   string      `json:"reason,omitempty"`
}

// admit: POST /engines/{user_id}/admit. Discovery authenticates and reads
// the engine in one query; a request that is bad anyway is authenticated
// first on its own, so a wrong key is 401 before any 422 or 413.
func (s *server) admit(w http.ResponseWriter, r *http.Request, _ bap.Product) error {
	began := time.Now()
	key := r.Header.Get(HeaderPlatformKey)
	if key == "" {
		return bap.Errorf(bap.CodeInvalidPlatformKey, msgInvalidPlatformKey)
	}
	b, err := s.readBody(w, r)
	var opts discovery.Options
	if err == nil {
		opts, err = decodeAdmit(b)
	}
	var userID bap.UserID
	if err == nil {
		userID, err = bap.ParseUserID(r.PathValue("user_id"))
	}
	if err != nil {
		if _, aerr := s.authPlatform(r); aerr != nil {
			return aerr
		}
		return err
	}
	p, d, err := s.discovery.Admit(r.Context(), secret.Hash(key), userID, opts)
	if p.ID != "" {
		setProduct(r.Context(), p.Slug)
		if s.metrics != nil {
			result := metrics.AdmitDenied
			switch {
			case err != nil:
				result = metrics.AdmitError
			case d.Admitted:
				result = metrics.AdmitAdmitted
			}
			s.metrics.Admit(p.ID, time.Since(began), result)
		}
	}
	if err != nil {
		return err
	}
	if !d.Admitted {
		writeJSON(w, http.StatusOK, admitResponse{Admitted: false, Reason: d.Reason})
		return nil
	}
	info := toEngineInfo(*d.Engine, &d.APIKey)
	writeJSON(w, http.StatusOK, admitResponse{Admitted: true, Engine: &info})
	return nil
}

// Page bounds of list routes.
const (
	defaultLimit = 100
	maxLimit     = 1000
)

type listResponse struct {
	Engines []engineInfo `json:"engines"`
	Total   int          `json:"total"`
}

// listEngines: GET /engines?status=&limit=&offset=.
func (s *server) listEngines(w http.ResponseWriter, r *http.Request, p bap.Product) error {
	q := r.URL.Query()
	f := registry.EngineFilter{ProductID: p.ID}
	var err error
	if f.Status, err = statusFilter(q); err != nil {
		return err
	}
	if f.Limit, f.Offset, err = page(q); err != nil {
		return err
	}
	engines, total, err := s.store.ListEngines(r.Context(), f)
	if err != nil {
		return fmt.Errorf("list engines: %w", err)
	}
	out := listResponse{Engines: make([]engineInfo, 0, len(engines)), Total: total}
	for _, e := range engines {
		out.Engines = append(out.Engines, toEngineInfo(e, nil))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// statusFilter reads the status query parameter: a state, or any state
// when absent or empty (`status=`, as the original's optional parameter).
func statusFilter(q url.Values) (bap.State, error) {
	st := bap.State(q.Get("status"))
	if st == "" {
		return "", nil
	}
	if !st.Valid() {
		return "", bap.Errorf(bap.CodeValidation, "status must be one of provisioning, running, sleeping, stopped, failed, destroying.")
	}
	return st, nil
}

// page reads limit (1..maxLimit, default defaultLimit) and offset (>= 0,
// default 0).
func page(q url.Values) (limit, offset int, err error) {
	limit, offset = defaultLimit, 0
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > maxLimit {
			return 0, 0, bap.Errorf(bap.CodeValidation, "limit must be an integer from 1 to %d.", maxLimit)
		}
		limit = n
	}
	if q.Has("offset") {
		n, err := strconv.Atoi(q.Get("offset"))
		if err != nil || n < 0 {
			return 0, 0, bap.Errorf(bap.CodeValidation, "offset must be a non-negative integer.")
		}
		offset = n
	}
	return limit, offset, nil
}

type auditEntry struct {
	Timestamp  string         `json:"timestamp"`
	Action     audit.Action   `json:"action"`
	Actor      string         `json:"actor"`
	Metadata   map[string]any `json:"metadata"`
	DurationMS *int64         `json:"duration_ms"`
}

type auditResponse struct {
	Entries []auditEntry `json:"entries"`
	Total   int          `json:"total"`
}

// engineAudit: GET /engines/{user_id}/audit?limit=&offset=, newest first.
func (s *server) engineAudit(w http.ResponseWriter, r *http.Request, p bap.Product) error {
	limit, offset, err := page(r.URL.Query())
	if err != nil {
		return err
	}
	e, err := s.engineOf(r, p)
	if err != nil {
		return err
	}
	entries, total, err := s.store.ListAudit(r.Context(), registry.AuditFilter{
		ProductID: p.ID,
		EngineID:  e.ID,
		Limit:     limit,
		Offset:    offset,
	})
	if err != nil {
		return fmt.Errorf("list audit: %w", err)
	}
	out := auditResponse{Entries: make([]auditEntry, 0, len(entries)), Total: total}
	for _, a := range entries {
		md := a.Metadata
		if md == nil {
			md = map[string]any{}
		}
		out.Entries = append(out.Entries, auditEntry{
			Timestamp:  bap.FormatTime(a.Timestamp),
			Action:     a.Action,
			Actor:      a.Actor,
			Metadata:   md,
			DurationMS: a.DurationMS,
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
