package client_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"

	"github.com/september/bap-engine/client"
)

// ExampleClient_Admit is the call a product makes on every user request:
// with AutoProvision and AutoWake, the user's engine is created or woken as
// needed, and the answer carries its URL and key for this request.
func ExampleClient_Admit() {
	base, stop := standIn()
	defer stop()
	ctx := context.Background()
	c := client.New(base, client.WithPlatformKey("pk-sept-example"))

	res, err := c.Admit(ctx, "alice", client.AdmitOptions{AutoProvision: true, AutoWake: true})
	if err != nil {
		fmt.Println("admit failed:", err)
		return
	}
	fmt.Println("admitted:", res.Admitted, res.Engine.Status, res.Engine.URL)

	// Without AutoProvision, a user without an engine is denied with a
	// reason rather than an error.
	res, err = c.Admit(ctx, "bob", client.AdmitOptions{})
	if err != nil {
		fmt.Println("admit failed:", err)
		return
	}
	fmt.Println("admitted:", res.Admitted, res.Reason)
	// Output:
	// admitted: true running http://127.0.0.1:9001
	// admitted: false engine_not_found
}

// ExampleClient_Provision creates an engine explicitly; a second provision
// for the same user is ENGINE_ALREADY_EXISTS.
func ExampleClient_Provision() {
	base, stop := standIn()
	defer stop()
	ctx := context.Background()
	c := client.New(base, client.WithPlatformKey("pk-sept-example"))

	p, err := c.Provision(ctx, client.ProvisionRequest{UserID: "carol"})
	if err != nil {
		fmt.Println("provision failed:", err)
		return
	}
	fmt.Println(p.UserID, p.Status, strings.HasPrefix(p.APIKey, "sk-sept-"))

	_, err = c.Provision(ctx, client.ProvisionRequest{UserID: "carol"})
	fmt.Println(client.ErrorCode(err))
	// Output:
	// carol running true
	// ENGINE_ALREADY_EXISTS
}

// ExampleError shows how to read an API error: errors.As finds the *Error
// carrying the HTTP status, the documented code and Retry-After.
func ExampleError() {
	base, stop := standIn()
	defer stop()
	ctx := context.Background()
	c := client.New(base, client.WithPlatformKey("pk-sept-example"))

	// The stand-in's product allows three admits a minute.
	var err error
	for i := 0; i < 4 && err == nil; i++ {
		_, err = c.Admit(ctx, "dave", client.AdmitOptions{AutoProvision: true})
	}
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Status, e.Code, e.RetryAfter)
		if e.Code == client.CodeRateLimited {
			fmt.Println("try again after", e.RetryAfter)
		}
	}

	_, err = client.New(base, client.WithPlatformKey("pk-sept-wrong")).Status(ctx)
	if errors.As(err, &e) {
		fmt.Println(e.Status, e.Code)
	}
	// Output:
	// 429 RATE_LIMITED 12s
	// try again after 12s
	// 401 INVALID_PLATFORM_KEY
}

// ExampleClient_Upgrade moves an engine to another version. An upgrade the
// new version does not survive is rolled back by the orchestrator and
// answered with UPGRADE_FAILED, the engine's reason in the message.
func ExampleClient_Upgrade() {
	base, stop := standIn()
	defer stop()
	ctx := context.Background()
	c := client.New(base, client.WithPlatformKey("pk-sept-example"))

	up, err := c.Upgrade(ctx, "erin", "september-engine:2.4.0")
	if err != nil {
		fmt.Println("upgrade failed:", err)
		return
	}
	fmt.Println(up.PreviousVersion, "->", up.EngineVersion, up.Status)

	_, err = c.Upgrade(ctx, "erin", "september-engine:9.9.9")
	var e *client.Error
	if errors.As(err, &e) && e.Code == client.CodeUpgradeFailed {
		fmt.Println(e.Status, e.Code)
	}
	// Output:
	// september-engine:2.3.0 -> september-engine:2.4.0 running
	// 502 UPGRADE_FAILED
}

// ExampleClient_Logs reads the last lines an engine wrote (with Follow, the
// reader goes on with what it writes next until ctx ends or it is closed).
func ExampleClient_Logs() {
	base, stop := standIn()
	defer stop()
	ctx := context.Background()
	c := client.New(base, client.WithPlatformKey("pk-sept-example"))

	rc, err := c.Logs(ctx, "frank", client.LogOptions{Tail: 2})
	if err != nil {
		fmt.Println("logs failed:", err)
		return
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	for sc.Scan() {
		fmt.Println(sc.Text())
	}
	// Output:
	// engine ready
	// request GET /brain 200
}

// standIn serves the few routes the examples call, answering as bap-engine
// does, so the examples run without an orchestrator. It returns the base
// URL and a function that stops it.
func standIn() (string, func()) {
	var (
		mu      sync.Mutex
		engines = map[string]bool{}
		admits  int
	)
	engine := func(user string) map[string]any {
		return map[string]any{
			"engine_id": "0b9d6c3e-5f4a-4c1e-9a51-" + fmt.Sprintf("%012d", len(user)), "user_id": user,
			"status": "running", "url": "http://127.0.0.1:9001", "api_key": "sk-sept-" + user,
			"engine_version": "september-engine:latest", "created_at": "2026-04-27T12:34:56.000Z", "last_health_at": nil,
		}
	}
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, status int, code, msg string) {
		reply(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get(client.HeaderPlatformKey) != "pk-sept-example" {
			fail(w, http.StatusUnauthorized, client.CodeInvalidPlatformKey, "Invalid or missing platform key.")
			return
		}
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/engines/provision":
			var req client.ProvisionRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			if engines[req.UserID] {
				fail(w, http.StatusConflict, client.CodeEngineAlreadyExists, "Engine already exists for this user_id.")
				return
			}
			engines[req.UserID] = true
			e := engine(req.UserID)
			delete(e, "engine_version")
			delete(e, "created_at")
			delete(e, "last_health_at")
			reply(w, http.StatusOK, e)
		case r.Method == http.MethodPost && len(parts) == 3 && parts[2] == "admit":
			admits++
			if admits > 3 {
				w.Header().Set("Retry-After", "12")
				fail(w, http.StatusTooManyRequests, client.CodeRateLimited, "Rate limit exceeded. Retry in 12 seconds.")
				return
			}
			var opts client.AdmitOptions
			_ = json.NewDecoder(r.Body).Decode(&opts)
			if !engines[parts[1]] && !opts.AutoProvision {
				reply(w, http.StatusOK, map[string]any{"admitted": false, "engine": nil, "reason": client.ReasonEngineNotFound})
				return
			}
			engines[parts[1]] = true
			reply(w, http.StatusOK, map[string]any{"admitted": true, "engine": engine(parts[1])})
		case r.Method == http.MethodPost && len(parts) == 3 && parts[2] == "upgrade":
			var req struct {
				EngineVersion string `json:"engine_version"`
			}
			_ = json.NewDecoder(r.Body).Decode(&req)
			if req.EngineVersion == "september-engine:9.9.9" {
				fail(w, http.StatusBadGateway, client.CodeUpgradeFailed,
					"Upgrade to september-engine:9.9.9 failed and was rolled back to september-engine:2.3.0: brain too new")
				return
			}
			e := engine(parts[1])
			reply(w, http.StatusOK, client.Upgraded{EngineID: e["engine_id"].(string), UserID: parts[1], Status: client.StateRunning,
				URL: e["url"].(string), EngineVersion: req.EngineVersion, PreviousVersion: "september-engine:2.3.0"})
		case r.Method == http.MethodGet && len(parts) == 3 && parts[2] == "logs":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			lines := []string{"engine starting", "engine ready", "request GET /brain 200"}
			if n, err := strconv.Atoi(r.URL.Query().Get("tail")); err == nil && n > 0 && n < len(lines) {
				lines = lines[len(lines)-n:]
			}
			_, _ = io.WriteString(w, strings.Join(lines, "\n")+"\n")
		case r.Method == http.MethodGet && r.URL.Path == "/status":
			reply(w, http.StatusOK, client.FleetStatus{Total: len(engines), ByStatus: map[string]int{}, Health: client.HealthOK})
		default:
			fail(w, http.StatusNotFound, client.CodeNotFound, "No such route.")
		}
	}))
	return srv.URL, srv.Close
}
