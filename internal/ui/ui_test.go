package ui_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/policy"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/rollout"
	"github.com/september/bap-engine/internal/secret"
	"github.com/september/bap-engine/internal/ui"
)

// fleet is two products with engines in several states.
type fleet struct {
	acme, beta                   product
	alice, bob, carol, betaAlice bap.Engine
}

func newFleet(t *testing.T, h *harness) fleet {
	f := fleet{acme: h.product("acme"), beta: h.product("beta")}
	f.alice = h.provision(f.acme, "alice")
	f.bob = h.provision(f.acme, "bob")
	f.carol = h.provision(f.acme, "carol")
	f.betaAlice = h.provision(f.beta, "alice")
	_, err := h.lm.Stop(t.Context(), f.bob.ID, "acme")
	require.NoError(t, err)
	return f
}

// pages lists every GET page of the dashboard for a fleet, and a text each
// must show to the admin.
func (f fleet) pages() map[string]string {
	return map[string]string{
		ui.Path + "/":        "Fleet overview",
		ui.Path + "/engines": "carol",
		ui.Path + "/engines?state=running&sort=user&dir=desc&q=AL&per=25": "alice",
		ui.Path + "/engines?product=" + f.beta.ID + "&page=7":             "beta",
		ui.Path + "/engines/" + f.alice.ID:                                "Audit timeline",
		ui.Path + "/engines/" + f.alice.ID + "?tpage=3":                   "provision",
		ui.Path + "/engines/" + f.betaAlice.ID:                            "Audit timeline",
		ui.Path + "/products":                                             "acme",
		ui.Path + "/products/" + f.acme.ID:                                "Save policy",
		ui.Path + "/products/beta":                                        "Rotate platform key",
	}
}

func TestEveryPageRedirectsToSignInWithoutASession(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.browser()
	for path := range f.pages() {
		p := b.get(path)
		require.Equal(t, http.StatusSeeOther, p.status, path)
		loc, err := url.Parse(p.header.Get("Location"))
		require.NoError(t, err)
		require.Equal(t, ui.Path+"/signin", loc.Path, path)
		if path != ui.Path+"/" {
			require.Equal(t, path, loc.Query().Get("next"), "sign-in returns to %s", path)
		}
	}
	// A forged or ended session cookie is no session.
	u, _ := url.Parse(h.srv.URL + ui.Path + "/")
	b.client.Jar.SetCookies(u, []*http.Cookie{{Name: "bap_ui_session", Value: "forged.9999999999.mac", Path: ui.Path}})
	require.Equal(t, http.StatusSeeOther, b.get(ui.Path+"/").status)
	// The live stream has no sign-in to redirect to.
	require.Equal(t, http.StatusUnauthorized, b.get(ui.Path+"/events").status)
}

func TestAdminSeesEveryPageWithoutAKey(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.signedIn(h.adminKey)
	for path, want := range f.pages() {
		p := b.get(path)
		require.Equal(t, http.StatusOK, p.status, path)
		require.Contains(t, p.body, want, path)
		require.Equal(t, "text/html; charset=utf-8", p.header.Get("Content-Type"), path)
		require.Equal(t, "no-store", p.header.Get("Cache-Control"), path)
		require.Contains(t, p.header.Get("Content-Security-Policy"), "default-src 'none'", path)
		h.requireNoSecret(p.body, path)
	}
	ov := b.get(ui.Path + "/")
	require.Contains(t, ov.body, `data-state="running">3<`)
	require.Contains(t, ov.body, `data-state="stopped">1<`)
	require.Contains(t, ov.body, `data-state="total">4<`)
	require.Contains(t, ov.body, `<tr data-product="beta">`)
	require.Contains(t, ov.body, "<svg", "charts are inline SVG")
	require.Contains(t, ov.body, "Orchestrator replicas", "admins see the replicas, as GET /replicas")
	list := b.get(ui.Path + "/engines?sort=user")
	for _, e := range []bap.Engine{f.alice, f.bob, f.carol, f.betaAlice} {
		require.Contains(t, list.body, `data-engine-id="`+e.ID+`"`)
	}
	detail := b.get(ui.Path + "/engines/" + f.alice.ID)
	require.Contains(t, detail.body, f.alice.URL)
	require.Contains(t, detail.body, "september-engine:test")
	require.Contains(t, detail.body, `id="logs-unavailable"`, "no log facility: the page says so")
}

func TestEnginesTableFiltersSortsAndPages(t *testing.T) {
	h := newHarness(t, options{})
	p := h.product("acme")
	for i := range 30 {
		registrytest.NewEngine(t, h.store, p.ID, "user-"+string(rune('a'+i%26))+strings.Repeat("x", i/26),
			registrytest.WithStatus([]bap.State{bap.StateRunning, bap.StateFailed, bap.StateStopped}[i%3]))
	}
	b := h.signedIn(h.adminKey)
	page1 := b.get(ui.Path + "/engines?per=25&sort=user")
	require.Equal(t, http.StatusOK, page1.status)
	require.Equal(t, 25, strings.Count(page1.body, "data-engine-id="))
	require.Contains(t, page1.body, "Engines 1–25 of <strong id=\"engines-total\">30</strong>")
	require.Contains(t, page1.body, `href="/ui/engines?page=2&amp;per=25&amp;sort=user" rel="next"`)
	require.Contains(t, page1.body, `aria-sort="ascending"`)
	page2 := b.get(ui.Path + "/engines?per=25&sort=user&page=2")
	require.Equal(t, 5, strings.Count(page2.body, "data-engine-id="))
	require.Less(t, strings.Index(page2.body, ">user-v<"), strings.Index(page2.body, ">user-z<"))

	failed := b.get(ui.Path + "/engines?state=failed")
	require.Equal(t, 10, strings.Count(failed.body, "data-engine-id="))
	require.NotContains(t, failed.body, "state-cell\"><span class=\"state state-running")

	desc := b.get(ui.Path + "/engines?sort=user&dir=desc&q=USER-D")
	require.Equal(t, 2, strings.Count(desc.body, "data-engine-id="))
	require.Less(t, strings.Index(desc.body, ">user-dx<"), strings.Index(desc.body, ">user-d<"))
	require.Contains(t, desc.body, `aria-sort="descending"`)

	// Nonsense in the query falls back to defaults; a page past the end
	// shows the last one.
	odd := b.get(ui.Path + "/engines?state=exploded&sort=port&per=7&page=99")
	require.Equal(t, http.StatusOK, odd.status)
	require.Equal(t, 30, strings.Count(odd.body, "data-engine-id="))
}

func TestProductSessionSeesOnlyItsProduct(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.signedIn(f.acme.key)

	list := b.get(ui.Path + "/engines?product=" + f.beta.ID)
	require.Equal(t, http.StatusOK, list.status)
	require.Contains(t, list.body, f.alice.ID)
	require.NotContains(t, list.body, f.betaAlice.ID, "another product's engine is never listed")
	ov := b.get(ui.Path + "/")
	require.Contains(t, ov.body, `data-state="total">3<`)
	require.NotContains(t, ov.body, `data-product="beta"`)
	require.NotContains(t, ov.body, "Orchestrator replicas", "replicas are the admin's")
	require.NotContains(t, b.get(ui.Path+"/products").body, "beta")

	for _, path := range []string{
		ui.Path + "/engines/" + f.betaAlice.ID,
		ui.Path + "/products/" + f.beta.ID,
		ui.Path + "/products/beta",
		ui.Path + "/engines/not-an-id",
	} {
		p := b.get(path)
		require.Equal(t, http.StatusNotFound, p.status, path)
		require.NotContains(t, p.body, f.betaAlice.ID, path)
	}
	require.Equal(t, http.StatusOK, b.get(ui.Path+"/engines/"+f.alice.ID).status)
	require.Equal(t, http.StatusOK, b.get(ui.Path+"/products/acme").status)

	// Acting on another product's engine is as absent as reading it.
	csrf := b.csrf()
	p := b.post(ui.Path+"/engines/"+f.betaAlice.ID+"/stop", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusNotFound, p.status)
	e, err := h.engine(f.betaAlice.ID)
	require.NoError(t, err)
	require.Equal(t, bap.StateRunning, e.Status)

	// Product administration is the admin's, as in the API.
	p = b.post(ui.Path+"/products/"+f.acme.ID+"/policy", url.Values{"csrf": {csrf}, "policy": {`{"max_engines": 1}`}})
	require.Equal(t, http.StatusForbidden, p.status)
	p = b.post(ui.Path+"/products/"+f.acme.ID+"/rotate-platform-key", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusForbidden, p.status)
	h.requireNoSecret(p.body, "a refused rotation")
	got, err := h.store.GetProduct(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Equal(t, f.acme.APIKeyHash, got.APIKeyHash)
	require.Nil(t, got.Policy.MaxEngines)

	// Its own engines it may act on, as the product.
	p = b.post(ui.Path+"/engines/"+f.alice.ID+"/stop", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, p.status)
	entries, _, err := h.store.ListAudit(t.Context(), registry.AuditFilter{EngineID: f.alice.ID, Actions: []audit.Action{audit.Stop}})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "acme", entries[0].Actor)
}

func TestSignInRefusesAWrongKeyWithoutEchoingIt(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.browser()
	for _, wrong := range []string{"pk-sept-not-a-real-key-0123456789", "not-the-admin-key-but-close", h.adminKey + "x", ""} {
		p := b.signIn(wrong)
		if wrong == "" {
			require.Equal(t, http.StatusUnauthorized, p.status)
			continue
		}
		require.Equal(t, http.StatusUnauthorized, p.status, wrong)
		require.Contains(t, p.body, "That key was not accepted")
		require.NotContains(t, p.body, wrong)
		require.Empty(t, b.sessionCookie())
		require.NotContains(t, h.logs.String(), wrong)
	}
	require.Equal(t, http.StatusSeeOther, b.get(ui.Path+"/").status, "still signed out")

	// A platform key still in its grace period signs in as its product.
	h2 := h.signedIn(f.beta.key)
	require.Contains(t, h2.get(ui.Path+"/").body, `<strong id="viewer">beta</strong>`)
}

func TestSignInFormNeedsItsOwnToken(t *testing.T) {
	h := newHarness(t, options{})
	b := h.browser()
	// No form fetched first: no sign-in cookie, so the token cannot match.
	p := b.post(ui.Path+"/signin", url.Values{"csrf": {"anything"}, "key": {h.adminKey}})
	require.Equal(t, http.StatusForbidden, p.status)
	require.Empty(t, b.sessionCookie())
	form := b.get(ui.Path + "/signin")
	p = b.post(ui.Path+"/signin", url.Values{"csrf": {csrfOf(t, form) + "x"}, "key": {h.adminKey}})
	require.Equal(t, http.StatusForbidden, p.status)
	require.Empty(t, b.sessionCookie())
	require.NotContains(t, p.body, h.adminKey)
}

func TestSignInGoesBackWhereItCameFromButNeverOffSite(t *testing.T) {
	h := newHarness(t, options{})
	for next, want := range map[string]string{
		ui.Path + "/engines?state=failed": ui.Path + "/engines?state=failed",
		"https://evil.example/ui/":        ui.Path + "/",
		"//evil.example/ui/":              ui.Path + "/",
		"/elsewhere":                      ui.Path + "/",
		ui.Path + "/signin":               ui.Path + "/",
	} {
		b := h.browser()
		form := b.get(ui.Path + "/signin?" + url.Values{"next": {next}}.Encode())
		p := b.post(ui.Path+"/signin", url.Values{"csrf": {csrfOf(t, form)}, "key": {h.adminKey}, "next": {next}})
		require.Equal(t, http.StatusSeeOther, p.status, next)
		require.Equal(t, want, p.header.Get("Location"), next)
	}
}

func TestSessionCookie(t *testing.T) {
	h := newHarness(t, options{ttl: time.Hour})
	b := h.browser()
	p := b.signIn(h.adminKey)
	require.Equal(t, http.StatusSeeOther, p.status)
	var c *http.Cookie
	for _, sc := range (&http.Response{Header: p.header}).Cookies() {
		if sc.Name == "bap_ui_session" {
			c = sc
		}
	}
	require.NotNil(t, c)
	require.True(t, c.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, c.SameSite)
	require.Equal(t, ui.Path, c.Path)
	require.InDelta(t, time.Hour.Seconds(), c.MaxAge, 5)
	require.NotContains(t, c.Value, h.adminKey)
	h.requireNoSecret(c.Value, "the cookie")

	// A tampered signature is no session.
	tampered := c.Value[:len(c.Value)-2] + "xx"
	if tampered == c.Value {
		tampered = c.Value[:len(c.Value)-2] + "yy"
	}
	forged := h.browser()
	u, _ := url.Parse(h.srv.URL + ui.Path + "/")
	forged.client.Jar.SetCookies(u, []*http.Cookie{{Name: c.Name, Value: tampered, Path: ui.Path}})
	require.Equal(t, http.StatusSeeOther, forged.get(ui.Path+"/").status)

	// It expires on the server too.
	require.Equal(t, http.StatusOK, b.get(ui.Path+"/").status)
	h.clock.Advance(time.Hour + time.Second)
	require.Equal(t, http.StatusSeeOther, b.get(ui.Path+"/").status)
}

func TestSignOutEndsTheSessionOnTheServer(t *testing.T) {
	h := newHarness(t, options{})
	b := h.signedIn(h.adminKey)
	old := b.sessionCookie()
	require.NotEmpty(t, old)
	csrf := b.csrf()
	ev := b.events(t)
	ev.next(t, "hello")

	p := b.post(ui.Path+"/signout", url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Equal(t, ui.Path+"/signin?out=1", p.header.Get("Location"))
	select {
	case _, open := <-ev.events:
		for open {
			_, open = <-ev.events
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the live stream outlived its session")
	}

	// Replaying the old cookie gets nowhere.
	replay := h.browser()
	u, _ := url.Parse(h.srv.URL + ui.Path + "/")
	replay.client.Jar.SetCookies(u, []*http.Cookie{{Name: "bap_ui_session", Value: old, Path: ui.Path}})
	require.Equal(t, http.StatusSeeOther, replay.get(ui.Path+"/").status)
	require.Equal(t, http.StatusForbidden, replay.post(ui.Path+"/signout", url.Values{"csrf": {csrf}}).status)

	// A new session gets a new cookie value.
	again := h.signedIn(h.adminKey)
	require.NotEqual(t, old, again.sessionCookie())
}

func TestForgedOrTokenlessPostsChangeNothing(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	admin := h.signedIn(h.adminKey)
	other := h.signedIn(h.adminKey)
	otherCSRF := other.csrf()
	anon := h.browser()

	stop := ui.Path + "/engines/" + f.alice.ID + "/stop"
	destroy := ui.Path + "/engines/" + f.carol.ID + "/destroy"
	policy := ui.Path + "/products/" + f.acme.ID + "/policy"
	rotate := ui.Path + "/products/" + f.acme.ID + "/rotate-platform-key"
	upgrade := ui.Path + "/engines/" + f.alice.ID + "/upgrade"
	createRollout := ui.Path + "/products/" + f.acme.ID + "/rollouts"
	ro, err := h.rollouts.Create(t.Context(), f.acme.Product, rollout.Request{EngineVersion: "september-engine:next", Percent: 10}, "test")
	require.NoError(t, err)
	rolloutActions := []string{createRollout + "/" + ro.ID + "/percent", createRollout + "/" + ro.ID + "/pause",
		createRollout + "/" + ro.ID + "/abort"}
	for _, tc := range []struct {
		name string
		b    *browser
		form url.Values
	}{
		{"no token", admin, url.Values{}},
		{"empty token", admin, url.Values{"csrf": {""}}},
		{"wrong token", admin, url.Values{"csrf": {"0123456789abcdef"}}},
		{"another session's token", admin, url.Values{"csrf": {otherCSRF}}},
		{"no session", anon, url.Values{"csrf": {otherCSRF}}},
	} {
		for _, path := range append([]string{stop, destroy, policy, rotate, upgrade, createRollout}, rolloutActions...) {
			form := url.Values{"confirm_user_id": {"carol"}, "policy": {`{"max_engines": 1}`},
				"engine_version": {"september-engine:next"}, "percent": {"90"}}
			for k, v := range tc.form {
				form[k] = v
			}
			p := tc.b.post(path, form)
			require.Equal(t, http.StatusForbidden, p.status, "%s: %s", tc.name, path)
			h.requireNoSecret(p.body, tc.name)
		}
	}
	for _, e := range []bap.Engine{f.alice, f.carol} {
		got, err := h.engine(e.ID)
		require.NoError(t, err, "nothing destroyed")
		require.Equal(t, bap.StateRunning, got.Status, "nothing stopped")
		require.Zero(t, h.auditCount(e.ID, audit.Stop))
		require.Zero(t, h.auditCount(e.ID, audit.Upgrade))
		require.Equal(t, e.Image, got.Image, "nothing upgraded")
	}
	rs, err := h.rollouts.List(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Len(t, rs, 1, "no rollout created")
	require.Equal(t, bap.RolloutRunning, rs[0].State, "the rollout neither paused nor aborted")
	require.Equal(t, 10, rs[0].Percent, "the rollout not raised")
	got, err := h.store.GetProduct(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Equal(t, f.acme.APIKeyHash, got.APIKeyHash, "no key rotated")
	require.Nil(t, got.Policy.MaxEngines, "no policy changed")
}

func TestEngineActions(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.signedIn(h.adminKey)
	csrf := b.csrf()
	at := func(e bap.Engine, action string) string { return ui.Path + "/engines/" + e.ID + "/" + action }
	state := func(e bap.Engine) bap.State {
		got, err := h.engine(e.ID)
		require.NoError(t, err)
		return got.Status
	}

	p := b.post(at(f.alice, "stop"), url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Equal(t, ui.Path+"/engines/"+f.alice.ID, p.header.Get("Location"))
	require.Equal(t, bap.StateStopped, state(f.alice))
	// A page's own live refresh leaves the message to the page the action
	// leads to.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, h.srv.URL+p.header.Get("Location"), nil)
	require.NoError(t, err)
	req.Header.Set("X-Live-Refresh", "1")
	require.NotContains(t, b.do(req).body, "Engine stopped.")
	shown := b.get(p.header.Get("Location"))
	require.Contains(t, shown.body, "Engine stopped.")
	require.Contains(t, shown.body, `<td class="audit-action">stop</td>`)
	require.NotContains(t, b.get(p.header.Get("Location")).body, "Engine stopped.", "a message is shown once")

	// Stopping a stopped engine is the API's 409, shown on the page.
	p = b.post(at(f.alice, "stop"), url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusConflict, p.status)
	require.Contains(t, p.body, bap.CodeEngineNotRunning)

	p = b.post(at(f.alice, "start"), url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Equal(t, bap.StateRunning, state(f.alice))

	p = b.post(at(f.alice, "restart"), url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Equal(t, bap.StateRunning, state(f.alice))
	require.Equal(t, 2, h.auditCount(f.alice.ID, audit.Stop))
	require.Equal(t, 2, h.auditCount(f.alice.ID, audit.Start))

	// A new key is on the answer to the rotation only.
	p = b.post(at(f.alice, "rotate-key"), url.Values{"csrf": {csrf}})
	require.Equal(t, http.StatusOK, p.status)
	require.Equal(t, "no-store", p.header.Get("Cache-Control"))
	m := regexpKey.FindStringSubmatch(p.body)
	require.NotNil(t, m, "the new key is shown")
	newKey := m[1]
	got, err := h.engine(f.alice.ID)
	require.NoError(t, err)
	require.True(t, secret.HashEqual(newKey, got.KeyHash), "the shown key is the engine's key")
	h.remember(newKey)
	h.requireNoSecret(b.get(ui.Path+"/engines/"+f.alice.ID).body, "the engine page after a rotation")

	// Destroy needs the user id typed exactly.
	for _, typed := range []string{"", "Carol", "caro", "carol "} {
		p = b.post(at(f.carol, "destroy"), url.Values{"csrf": {csrf}, "confirm_user_id": {typed}})
		require.Equal(t, http.StatusUnprocessableEntity, p.status, typed)
		require.Contains(t, p.body, "Nothing was destroyed")
		_, err := h.engine(f.carol.ID)
		require.NoError(t, err)
	}
	p = b.post(at(f.carol, "destroy"), url.Values{"csrf": {csrf}, "confirm_user_id": {"carol"}})
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Equal(t, ui.Path+"/engines", p.header.Get("Location"))
	_, err = h.engine(f.carol.ID)
	require.ErrorIs(t, err, registry.ErrNotFound)
	require.Equal(t, http.StatusNotFound, b.get(ui.Path+"/engines/"+f.carol.ID).status)

	require.Equal(t, http.StatusNotFound, b.post(at(f.bob, "explode"), url.Values{"csrf": {csrf}}).status)
	entries, _, err := h.store.ListAudit(t.Context(), registry.AuditFilter{EngineID: f.alice.ID, Actions: []audit.Action{audit.RotateKey}})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, audit.ActorAdmin, entries[0].Actor)
}

func TestPolicyEditorValidatesAsTheAPI(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.signedIn(h.adminKey)
	csrf := b.csrf()
	for _, draft := range []string{
		`{"max_engines": -1}`,
		`{"max_engines": 1.5}`,
		`{"rate_limit_rpm": "fast"}`,
		`{"engine_cpus": -2}`,
		`[1, 2]`,
		`"text"`,
		`null`,
		``,
		`{"max_engines": 1e400}`,
		`{not json`,
	} {
		p := b.post(ui.Path+"/products/"+f.acme.ID+"/policy", url.Values{"csrf": {csrf}, "policy": {draft}})
		require.Equal(t, http.StatusUnprocessableEntity, p.status, draft)

		body := `{"policy": ` + draft + `}`
		if strings.TrimSpace(draft) == "" {
			body = `{}`
		}
		if !json.Valid([]byte(body)) {
			// No API body can hold invalid JSON as the policy; the editor
			// says what the API says of a non-object.
			body = `{"policy": []}`
		}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, h.srv.URL+"/products/"+f.acme.ID+"/policy", strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set(api.HeaderAdminKey, h.adminKey)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var apiErr struct {
			Error struct{ Code, Message string }
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&apiErr))
		resp.Body.Close()
		require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode, body)
		require.Contains(t, p.body, apiErr.Error.Code, draft)
		require.Contains(t, p.body, htmlEscape(apiErr.Error.Message), "draft %s: the API says %q", draft, apiErr.Error.Message)
		require.Contains(t, p.body, htmlEscape(draft), "a refused draft stays in the editor")
	}
	got, err := h.store.GetProduct(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.JSONEq(t, `{}`, string(got.Policy.JSON()), "nothing saved")

	p := b.post(ui.Path+"/products/"+f.acme.ID+"/policy", url.Values{"csrf": {csrf}, "policy": {`{"max_engines": 7, "custom": {"a": 1}}`}})
	require.Equal(t, http.StatusSeeOther, p.status)
	got, err = h.store.GetProduct(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Equal(t, 7, *got.Policy.MaxEngines)
	require.JSONEq(t, `{"max_engines": 7, "custom": {"a": 1}}`, string(got.Policy.JSON()))
	shown := b.get(p.header.Get("Location"))
	require.Contains(t, shown.body, "Policy saved.")
	require.Contains(t, shown.body, "&#34;max_engines&#34;: 7")
}

func TestPlatformKeyRotationShownOnceAndOldKeyGraced(t *testing.T) {
	h := newHarness(t, options{grace: time.Minute})
	f := newFleet(t, h)
	productSession := h.signedIn(f.acme.key)
	admin := h.signedIn(h.adminKey)
	p := admin.post(ui.Path+"/products/"+f.acme.ID+"/rotate-platform-key", url.Values{"csrf": {admin.csrf()}})
	require.Equal(t, http.StatusOK, p.status)
	require.Equal(t, "no-store", p.header.Get("Cache-Control"))
	m := regexpKey.FindStringSubmatch(p.body)
	require.NotNil(t, m)
	newKey := m[1]
	require.True(t, strings.HasPrefix(newKey, secret.PlatformKeyPrefix))
	h.remember(newKey)
	require.Contains(t, p.body, "keeps working until")
	h.requireNoSecret(admin.get(ui.Path+"/products/"+f.acme.ID).body, "the product page after a rotation")

	got, err := h.store.GetProduct(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Equal(t, secret.Hash(newKey), got.APIKeyHash)
	entries, _, err := h.store.ListAudit(t.Context(), registry.AuditFilter{ProductID: f.acme.ID, Actions: []audit.Action{audit.PlatformKeyRotated}})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, audit.ActorAdmin, entries[0].Actor)

	// The session of the old key lasts as long as the key does.
	require.Equal(t, http.StatusOK, productSession.get(ui.Path+"/").status)
	h.clock.Advance(time.Minute + time.Second)
	require.Equal(t, http.StatusSeeOther, productSession.get(ui.Path+"/").status)
	require.Equal(t, http.StatusOK, h.signedIn(newKey).get(ui.Path+"/").status)
}

func TestLiveStreamFollowsTheChangeFeed(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	admin := h.signedIn(h.adminKey).events(t)
	beta := h.signedIn(f.beta.key).events(t)
	admin.next(t, "hello")
	beta.next(t, "hello")
	state := func(id, st string) string { return `{"id":"` + id + `","state":"` + st + `"}` }

	// An operation may report its engine more than once (its claim, then
	// its end): each event is the engine as it is when sent.
	_, err := h.lm.Stop(t.Context(), f.alice.ID, "acme")
	require.NoError(t, err)
	admin.until(t, "engine", state(f.alice.ID, "stopped"))

	_, err = h.lm.Stop(t.Context(), f.betaAlice.ID, "beta")
	require.NoError(t, err)
	seen := beta.until(t, "engine", state(f.betaAlice.ID, "stopped"))
	for _, ev := range seen {
		require.NotContains(t, ev.data, f.alice.ID, "the product's stream carries only its own engines")
	}

	// The poll of the counts reports a change to those who may see it.
	require.Equal(t, "{}", admin.next(t, "fleet").data)

	// A destroyed engine is reported to its product's stream too.
	_, err = h.lm.Destroy(t.Context(), f.betaAlice.ID, "beta")
	require.NoError(t, err)
	beta.until(t, "engine", state(f.betaAlice.ID, "destroyed"))
}

func TestEngineLogsWhenAFacilityExists(t *testing.T) {
	h := newHarness(t, options{logs: func(_ context.Context, engineID string, lines int) (string, error) {
		return "line one of " + engineID + "\n<script>not markup</script>", nil
	}})
	f := newFleet(t, h)
	p := h.signedIn(h.adminKey).get(ui.Path + "/engines/" + f.alice.ID)
	require.Contains(t, p.body, "line one of "+f.alice.ID)
	require.Contains(t, p.body, "&lt;script&gt;not markup&lt;/script&gt;")
	require.NotContains(t, p.body, `id="logs-unavailable"`)
}

func TestStaticAssetsAndUnknownPaths(t *testing.T) {
	h := newHarness(t, options{})
	b := h.browser()
	for _, asset := range []string{"ui.css", "ui.js", "favicon.svg"} {
		p := b.get(ui.Path + "/static/" + asset)
		require.Equal(t, http.StatusOK, p.status, asset)
		body := strings.ReplaceAll(p.body, `xmlns="http://www.w3.org/2000/svg"`, "")
		require.NotContains(t, body, "http://", "nothing is loaded from elsewhere")
		require.NotContains(t, body, "https://", "nothing is loaded from elsewhere")
	}
	p := b.get(ui.Path + "/nowhere")
	require.Equal(t, http.StatusNotFound, p.status)
	require.Contains(t, p.header.Get("Content-Type"), "text/html")
	require.Equal(t, http.StatusSeeOther, b.get(ui.Path).status)
	// The API around the dashboard is untouched.
	require.Equal(t, http.StatusOK, b.get("/health").status)
	require.Contains(t, b.get("/nowhere").body, `"NOT_FOUND"`)
}

// regexpKey finds a key shown once.
var regexpKey = regexp.MustCompile(`<output class="mono key" id="new-key">([^<]+)</output>`)

// htmlEscape is how html/template writes text.
func htmlEscape(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;")
	return r.Replace(s)
}

func TestSignInAttemptsAreLimitedPerAddress(t *testing.T) {
	h := newHarness(t, options{})
	b := h.browser()
	for i := range 20 {
		require.Equal(t, http.StatusUnauthorized, b.signIn("wrong-key-"+strconv.Itoa(i)).status)
	}
	p := b.signIn(h.adminKey)
	require.Equal(t, http.StatusTooManyRequests, p.status, "even the right key waits once the window is full")
	require.Contains(t, p.body, "Too many sign-in attempts")
	require.Empty(t, b.sessionCookie())
	h.clock.Advance(policy.Window)
	require.Equal(t, http.StatusSeeOther, b.signIn(h.adminKey).status)
}
