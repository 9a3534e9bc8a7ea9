package ui_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/rollout"
	"github.com/september/bap-engine/internal/ui"
)

// Versions of the fake backend: one engines come up on, one they refuse
// (backendtest.Fake.RefuseImage).
const (
	nextVersion    = "september-engine:next"
	refusedVersion = "september-engine:refused"
)

// apiError calls the HTTP API and returns its status and error.
func (h *harness) apiError(method, path string, header map[string]string, body string) (int, string, string) {
	h.t.Helper()
	req, err := http.NewRequestWithContext(h.t.Context(), method, h.srv.URL+path, strings.NewReader(body))
	require.NoError(h.t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	var e struct {
		Error struct{ Code, Message string }
	}
	require.NoError(h.t, json.NewDecoder(resp.Body).Decode(&e))
	return resp.StatusCode, e.Error.Code, e.Error.Message
}

// requireAPIWords fails unless page shows the API's status, code and
// message.
func requireAPIWords(t *testing.T, p page, status int, code, msg string) {
	t.Helper()
	require.Equal(t, status, p.status, p.body)
	require.Contains(t, p.body, code)
	require.Contains(t, p.body, htmlEscape(msg), "the API says %q", msg)
}

func TestUpgradeFromTheEnginePage(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	h.fake.RefuseImage(refusedVersion)
	acme := h.signedIn(f.acme.key)
	csrf := acme.csrf()
	upgrade := func(b *browser, e bap.Engine, version, csrf string) page {
		return b.post(ui.Path+"/engines/"+e.ID+"/upgrade", url.Values{"csrf": {csrf}, "engine_version": {version}})
	}
	before, err := h.engine(f.alice.ID)
	require.NoError(t, err)

	// The page shows the version and the form, labelled.
	shown := acme.get(ui.Path + "/engines/" + f.alice.ID)
	require.Equal(t, http.StatusOK, shown.status)
	require.Contains(t, shown.body, `id="engine-version">`+htmlEscape(before.Image)+`<`)
	require.Contains(t, shown.body, `<label for="upgrade-version">`)
	require.Contains(t, shown.body, `id="upgrade-version" name="engine_version"`)

	// Bad versions are refused as the API refuses them, and change nothing.
	for _, version := range []string{"", "not an image", strings.Repeat("x", 300)} {
		p := upgrade(acme, f.alice, version, csrf)
		body, _ := json.Marshal(map[string]string{"engine_version": version})
		status, code, msg := h.apiError(http.MethodPost, "/engines/alice/upgrade",
			map[string]string{api.HeaderPlatformKey: f.acme.key}, string(body))
		requireAPIWords(t, p, status, code, msg)
		require.Contains(t, p.body, `id="upgrade-error"`, "the error is beside the form")
		require.Contains(t, p.body, `aria-invalid="true"`)
		h.requireNoSecret(p.body, "a refused upgrade")
	}

	// A version the engine refuses is rolled back: UPGRADE_FAILED, and the
	// engine is as it was.
	p := upgrade(acme, f.alice, refusedVersion, csrf)
	require.Equal(t, http.StatusBadGateway, p.status, p.body)
	require.Contains(t, p.body, bap.CodeUpgradeFailed)
	require.Contains(t, p.body, "rolled back to "+htmlEscape(before.Image))
	require.Contains(t, p.body, `value="`+htmlEscape(refusedVersion)+`"`, "the form keeps the version typed")
	cur, err := h.engine(f.alice.ID)
	require.NoError(t, err)
	require.Equal(t, before.Image, cur.Image)
	require.Equal(t, bap.StateRunning, cur.Status)
	require.False(t, cur.Claim.Held(), "no operation left behind")
	require.Equal(t, 1, h.auditCount(f.alice.ID, audit.UpgradeRolledBack))
	require.Zero(t, h.auditCount(f.alice.ID, audit.Upgrade))

	// A good version: the engine moves, same URL, and the page says so.
	p = upgrade(acme, f.alice, nextVersion, csrf)
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, ui.Path+"/engines/"+f.alice.ID, p.header.Get("Location"))
	cur, err = h.engine(f.alice.ID)
	require.NoError(t, err)
	require.Equal(t, nextVersion, cur.Image)
	require.Equal(t, bap.StateRunning, cur.Status)
	require.Equal(t, before.URL, cur.URL)
	shown = acme.get(p.header.Get("Location"))
	require.Contains(t, shown.body, "Upgraded from "+htmlEscape(before.Image)+" to "+htmlEscape(nextVersion)+".")
	require.Contains(t, shown.body, `id="engine-version">`+htmlEscape(nextVersion)+`<`)
	require.Contains(t, shown.body, `<td class="audit-action">upgrade</td>`)
	h.requireNoSecret(shown.body, "the engine page after an upgrade")
	entries, _, err := h.store.ListAudit(t.Context(), registry.AuditFilter{EngineID: f.alice.ID, Actions: []audit.Action{audit.Upgrade}})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "acme", entries[0].Actor, "the product session is the actor, as through the API")

	// The same version again changes nothing.
	p = upgrade(acme, f.alice, nextVersion, csrf)
	require.Equal(t, http.StatusSeeOther, p.status)
	require.Contains(t, acme.get(p.header.Get("Location")).body, "already runs")
	require.Equal(t, 1, h.auditCount(f.alice.ID, audit.Upgrade))

	// A stopped engine is upgraded and stays stopped; the admin may too.
	admin := h.signedIn(h.adminKey)
	p = upgrade(admin, f.bob, nextVersion, admin.csrf())
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	cur, err = h.engine(f.bob.ID)
	require.NoError(t, err)
	require.Equal(t, nextVersion, cur.Image)
	require.Equal(t, bap.StateStopped, cur.Status)

	// Another product's session: the engine is absent, and nothing moves.
	beta := h.signedIn(f.beta.key)
	p = upgrade(beta, f.carol, nextVersion, beta.csrf())
	require.Equal(t, http.StatusNotFound, p.status)
	cur, err = h.engine(f.carol.ID)
	require.NoError(t, err)
	require.Equal(t, before.Image, cur.Image)
	require.Zero(t, h.auditCount(f.carol.ID, audit.Upgrade))
}

func TestEnginePageShowsTheUpgradePhase(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	b := h.signedIn(h.adminKey)
	csrf := b.csrf()
	h.fake.SetBootDelay(1500 * time.Millisecond)
	type answer struct {
		status int
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		form := url.Values{"csrf": {csrf}, "engine_version": {nextVersion}}
		resp, err := b.client.PostForm(h.srv.URL+ui.Path+"/engines/"+f.alice.ID+"/upgrade", form)
		if err != nil {
			done <- answer{err: err}
			return
		}
		resp.Body.Close()
		done <- answer{status: resp.StatusCode}
	}()
	phase := regexp.MustCompile(`<dd id="engine-operation">.*upgrade in progress</span>: (snapshotting|creating|waiting_for_health)</dd>`)
	require.Eventually(t, func() bool {
		return phase.MatchString(b.get(ui.Path + "/engines/" + f.alice.ID).body)
	}, 10*time.Second, 10*time.Millisecond, "the upgrade in flight is shown with its phase")
	a := <-done
	require.NoError(t, a.err)
	require.Equal(t, http.StatusSeeOther, a.status)
	require.NotContains(t, b.get(ui.Path+"/engines/"+f.alice.ID).body, `id="engine-operation"`)
}

// rolloutOf returns the product's only rollout.
func (h *harness) rolloutOf(p product) rollout.View {
	h.t.Helper()
	vs, err := h.rollouts.List(h.t.Context(), p.ID)
	require.NoError(h.t, err)
	require.Len(h.t, vs, 1)
	return vs[0]
}

func TestRolloutsFromTheProductPage(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	admin := h.signedIn(h.adminKey)
	csrf := admin.csrf()
	base := ui.Path + "/products/" + f.acme.ID + "/rollouts"
	adminKey := map[string]string{api.HeaderAdminKey: h.adminKey}

	shown := admin.get(ui.Path + "/products/" + f.acme.ID)
	require.Equal(t, http.StatusOK, shown.status)
	require.Contains(t, shown.body, "No rollout yet.")
	for _, id := range []string{"rollout-version", "rollout-percent", "rollout-parallel", "rollout-failures"} {
		require.Contains(t, shown.body, `<label for="`+id+`">`, "every control has a label")
	}

	// Refused forms say what the API says, keep what was typed, and create
	// nothing.
	for _, tc := range []struct {
		form url.Values
		body string
	}{
		{url.Values{"engine_version": {nextVersion}, "percent": {"0"}}, `{"engine_version": "` + nextVersion + `", "percent": 0}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {"101"}}, `{"engine_version": "` + nextVersion + `", "percent": 101}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {"ten"}}, `{"engine_version": "` + nextVersion + `", "percent": "ten"}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {"1.5"}}, `{"engine_version": "` + nextVersion + `", "percent": 1.5}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {""}}, `{"engine_version": "` + nextVersion + `"}`},
		{url.Values{"engine_version": {""}, "percent": {"10"}}, `{"engine_version": "", "percent": 10}`},
		{url.Values{"engine_version": {"not an image"}, "percent": {"10"}}, `{"engine_version": "not an image", "percent": 10}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {"10"}, "max_parallel": {"0"}}, `{"engine_version": "` + nextVersion + `", "percent": 10, "max_parallel": 0}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {"10"}, "max_failures": {"-1"}}, `{"engine_version": "` + nextVersion + `", "percent": 10, "max_failures": -1}`},
		{url.Values{"engine_version": {nextVersion}, "percent": {"10"}, "max_parallel": {"500"}}, `{"engine_version": "` + nextVersion + `", "percent": 10, "max_parallel": 500}`},
	} {
		form := url.Values{"csrf": {csrf}}
		for k, v := range tc.form {
			form[k] = v
		}
		p := admin.post(base, form)
		status, code, msg := h.apiError(http.MethodPost, "/products/"+f.acme.ID+"/rollouts", adminKey, tc.body)
		require.Equal(t, bap.CodeValidation, code, tc.body)
		requireAPIWords(t, p, status, code, msg)
		require.Contains(t, p.body, `id="rollout-new-error"`)
		require.Contains(t, p.body, `value="`+htmlEscape(tc.form.Get("engine_version"))+`"`, "the form keeps what was typed")
	}
	vs, err := h.rollouts.List(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Empty(t, vs, "nothing created")

	// Created: listed with its state, version, percent and counts.
	p := admin.post(base, url.Values{"csrf": {csrf}, "engine_version": {nextVersion}, "percent": {"34"}, "max_parallel": {"3"}})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, ui.Path+"/products/"+f.acme.ID+"#rollouts", p.header.Get("Location"))
	ro := h.rolloutOf(f.acme)
	require.Equal(t, bap.RolloutRunning, ro.State)
	require.Equal(t, 34, ro.Percent)
	require.Equal(t, 3, ro.MaxParallel)
	require.Equal(t, rollout.DefaultMaxFailures, ro.MaxFailures)
	shown = admin.get(ui.Path + "/products/" + f.acme.ID)
	require.Contains(t, shown.body, "Rollout created: "+htmlEscape(nextVersion)+" to 34% of the engines.")
	require.Contains(t, shown.body, `id="rollout-`+ro.ID+`"`)
	require.Regexp(t, `<span class="rollout rollout-running"><span class="sym" aria-hidden="true">[^<]+</span> running</span>`, shown.body,
		"the state is written out, not only coloured")
	require.Contains(t, shown.body, ">34%<")
	require.Contains(t, shown.body, `<label for="percent-`+ro.ID+`">`)
	entries, _, err := h.store.ListAudit(t.Context(), registry.AuditFilter{ProductID: f.acme.ID, Actions: []audit.Action{audit.RolloutCreate}})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, audit.ActorAdmin, entries[0].Actor)

	// A second one while it runs: the API's 409.
	p = admin.post(base, url.Values{"csrf": {csrf}, "engine_version": {nextVersion}, "percent": {"50"}})
	status, code, msg := h.apiError(http.MethodPost, "/products/"+f.acme.ID+"/rollouts", adminKey,
		`{"engine_version": "`+nextVersion+`", "percent": 50}`)
	require.Equal(t, bap.CodeRolloutInProgress, code)
	requireAPIWords(t, p, status, code, msg)

	act := func(op string, form url.Values) page {
		form.Set("csrf", csrf)
		return admin.post(base+"/"+ro.ID+"/"+op, form)
	}
	// Raise; lowering is refused in the API's words.
	p = act("percent", url.Values{"percent": {"60"}})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, 60, h.rolloutOf(f.acme).Percent)
	require.Contains(t, admin.get(p.header.Get("Location")).body, "Rollout raised to 60%.")
	for _, percent := range []string{"50", "", "x", "101"} {
		p = act("percent", url.Values{"percent": {percent}})
		body := `{"percent": ` + percent + `}`
		if percent == "" || percent == "x" {
			body = map[string]string{"": `{}`, "x": `{"percent": "x"}`}[percent]
		}
		status, code, msg = h.apiError(http.MethodPatch, "/products/"+f.acme.ID+"/rollouts/"+ro.ID, adminKey, body)
		require.Equal(t, bap.CodeValidation, code, body)
		requireAPIWords(t, p, status, code, msg)
		require.Contains(t, p.body, `id="rollout-error"`)
		require.Equal(t, 60, h.rolloutOf(f.acme).Percent, "nothing changed")
	}

	// Pause, resume, abort.
	p = act("pause", url.Values{})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, bap.RolloutPaused, h.rolloutOf(f.acme).State)
	shown = admin.get(p.header.Get("Location"))
	require.Contains(t, shown.body, "Rollout paused at 60%.")
	require.Contains(t, shown.body, "paused by admin", "the reason is listed")
	require.Contains(t, shown.body, base+"/"+ro.ID+"/resume")

	p = act("resume", url.Values{})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, bap.RolloutRunning, h.rolloutOf(f.acme).State)

	p = act("abort", url.Values{})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	require.Equal(t, bap.RolloutAborted, h.rolloutOf(f.acme).State)
	shown = admin.get(p.header.Get("Location"))
	require.Contains(t, shown.body, "aborted by admin")
	require.NotContains(t, shown.body, base+"/"+ro.ID+"/", "an aborted rollout offers no action")

	// An ended rollout refuses further changes as the API does.
	for _, op := range []string{"pause", "resume", "abort"} {
		p = act(op, url.Values{})
		status, code, msg = h.apiError(http.MethodPost, "/products/"+f.acme.ID+"/rollouts/"+ro.ID+"/"+op, adminKey, "")
		requireAPIWords(t, p, status, code, msg)
	}
	// Unknown rollouts, or another product's, are the API's 404.
	p = admin.post(ui.Path+"/products/"+f.beta.ID+"/rollouts/"+ro.ID+"/pause", url.Values{"csrf": {csrf}})
	status, code, msg = h.apiError(http.MethodPost, "/products/"+f.beta.ID+"/rollouts/"+ro.ID+"/pause", adminKey, "")
	require.Equal(t, bap.CodeRolloutNotFound, code)
	requireAPIWords(t, p, status, code, msg)
	require.Equal(t, http.StatusNotFound, act("explode", url.Values{}).status)

	// A new one once it ended.
	p = admin.post(base, url.Values{"csrf": {csrf}, "engine_version": {nextVersion}, "percent": {"100"}})
	require.Equal(t, http.StatusSeeOther, p.status, p.body)
	vs, err = h.rollouts.List(t.Context(), f.acme.ID)
	require.NoError(t, err)
	require.Len(t, vs, 2)
	h.requireNoSecret(admin.get(ui.Path+"/products/"+f.acme.ID).body, "the product page with rollouts")
}

func TestRolloutsAreAdminOnly(t *testing.T) {
	h := newHarness(t, options{})
	f := newFleet(t, h)
	ro, err := h.rollouts.Create(t.Context(), f.acme.Product, rollout.Request{EngineVersion: nextVersion, Percent: 10}, "test")
	require.NoError(t, err)

	// The API refuses a platform key on every rollout route.
	status, code, _ := h.apiError(http.MethodGet, "/products/"+f.acme.ID+"/rollouts",
		map[string]string{api.HeaderPlatformKey: f.acme.key}, "")
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, bap.CodeInvalidAdminKey, code)

	acme := h.signedIn(f.acme.key)
	csrf := acme.csrf()
	shown := acme.get(ui.Path + "/products/" + f.acme.ID)
	require.Equal(t, http.StatusOK, shown.status)
	require.Contains(t, shown.body, "Only an admin may see or change rollouts.")
	require.NotContains(t, shown.body, ro.ID, "a product session does not see the rollouts")
	require.NotContains(t, shown.body, "/rollouts")
	h.requireNoSecret(shown.body, "the product page of a product session")

	base := ui.Path + "/products/" + f.acme.ID + "/rollouts"
	for _, path := range []string{base, base + "/" + ro.ID + "/percent", base + "/" + ro.ID + "/pause",
		base + "/" + ro.ID + "/resume", base + "/" + ro.ID + "/abort"} {
		p := acme.post(path, url.Values{"csrf": {csrf}, "engine_version": {nextVersion}, "percent": {"90"}})
		require.Equal(t, http.StatusForbidden, p.status, path)
		h.requireNoSecret(p.body, path)
	}
	// Another product's rollouts are absent to it.
	p := acme.post(ui.Path+"/products/"+f.beta.ID+"/rollouts", url.Values{"csrf": {csrf}, "engine_version": {nextVersion}, "percent": {"90"}})
	require.Equal(t, http.StatusNotFound, p.status)

	got := h.rolloutOf(f.acme)
	require.Equal(t, bap.RolloutRunning, got.State)
	require.Equal(t, 10, got.Percent)
	vs, err := h.rollouts.List(t.Context(), f.beta.ID)
	require.NoError(t, err)
	require.Empty(t, vs)
}

func TestRolloutsNotServed(t *testing.T) {
	h := newHarness(t, options{noRollouts: true})
	f := newFleet(t, h)
	admin := h.signedIn(h.adminKey)
	shown := admin.get(ui.Path + "/products/" + f.acme.ID)
	require.Equal(t, http.StatusOK, shown.status)
	require.Contains(t, shown.body, "Rollouts are not served here.")
	p := admin.post(ui.Path+"/products/"+f.acme.ID+"/rollouts", url.Values{"csrf": {admin.csrf()}, "engine_version": {nextVersion}, "percent": {"10"}})
	status, code, msg := h.apiError(http.MethodPost, "/products/"+f.acme.ID+"/rollouts",
		map[string]string{api.HeaderAdminKey: h.adminKey}, `{"engine_version": "`+nextVersion+`", "percent": 10}`)
	require.Equal(t, http.StatusNotFound, status)
	requireAPIWords(t, p, status, code, msg)
}
