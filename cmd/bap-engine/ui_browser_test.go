package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/client"
)

// screenshotsEnv names a directory for the dashboard's screenshots; without
// it they go under the test's temporary directory.
const screenshotsEnv = "BAP_UI_SCREENSHOTS"

// chromiumPath finds Debian's chromium. A missing browser fails the test:
// ./scripts/test.sh installs it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: the dashboard's browser tests need it (./scripts/test.sh installs Debian's chromium)")
	return ""
}

// browser is one headless Chromium for a test; it is gone when the test ends.
type browser struct {
	t   *testing.T
	ctx context.Context // the browser's first tab, in the default profile
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // CI runs as root
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // kills the browser and waits for it
	})
	// The first run starts the browser; it must not carry a timeout.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))
	return &browser{t: t, ctx: ctx}
}

// tab is one browser tab.
type tab struct {
	t   *testing.T
	ctx context.Context
}

// tab opens a tab sharing the first tab's cookies.
func (b *browser) tab() *tab {
	ctx, cancel := chromedp.NewContext(b.ctx)
	b.t.Cleanup(cancel)
	require.NoError(b.t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))
	return &tab{t: b.t, ctx: ctx}
}

// incognito opens a tab in a profile of its own (no cookies shared).
func (b *browser) incognito() *tab {
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	b.t.Cleanup(cancel)
	require.NoError(b.t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))
	return &tab{t: b.t, ctx: ctx}
}

// stepTimeout bounds one step: generous, for a loaded machine.
const stepTimeout = 60 * time.Second

func (tb *tab) do(steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	require.NoError(tb.t, chromedp.Do(ctx, steps...))
}

func runIn[T any](tb *tab, a chromedp.Action[T]) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	require.NoError(tb.t, err)
	return v
}

// eval evaluates a JavaScript expression.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	return runIn(tb, chromedp.Evaluate[T](expr))
}

// waitFor waits until a JavaScript expression is true. It evaluates the
// expression afresh every 50 ms, so it outlives navigations.
func (tb *tab) waitFor(expr, what string) {
	tb.t.Helper()
	deadline := time.Now().Add(stepTimeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("Boolean("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	text, _ := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
	tb.t.Fatalf("waiting for %s (last error: %v); page text:\n%s", what, last, text)
}

// path is the path of the tab's page.
func (tb *tab) path() string { return eval[string](tb, `location.pathname`) }

// html is the tab's whole document.
func (tb *tab) html() string { return eval[string](tb, `document.documentElement.outerHTML`) }

// text is the text of the first element matching a CSS selector.
func (tb *tab) text(css string) string {
	tb.t.Helper()
	return eval[string](tb, fmt.Sprintf(`(document.querySelector(%q) || {textContent: ''}).textContent.trim()`, css))
}

// signIn signs in through the form and reports where the browser landed.
func (tb *tab) signIn(base, key string) string {
	tb.t.Helper()
	tb.do(
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("key")),
		chromedp.SendKeys(chromedp.ID("key"), key),
	)
	runIn(tb, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Submit(chromedp.ID("key"))))
	return tb.path()
}

// screenshot writes the tab as name.png into dir.
func (tb *tab) screenshot(dir, name string) {
	tb.t.Helper()
	png := runIn(tb, chromedp.FullScreenshot(100))
	require.NoError(tb.t, os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644))
}

// confirm opens an action's confirmation (its <details>) on an engine page
// and submits it.
func (tb *tab) confirm(action string) {
	tb.t.Helper()
	tb.do(
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`details:has(form[action$="/%s"]) > summary`, action))),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`form[action$="/%s"] button`, action))),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`form[action$="/%s"] button`, action))),
	)
}

// TestDashboardInBrowser drives the dashboard of a real orchestrator (serve,
// SQLite, subprocess engines) in headless Chromium.
func TestDashboardInBrowser(t *testing.T) {
	shots := os.Getenv(screenshotsEnv)
	if shots == "" {
		shots = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(shots, 0o755))
	br := newBrowser(t)

	env := baseEnv(t, "sqlite:///"+strings.TrimPrefix(filepath.Join(t.TempDir(), "bap.db"), "/"))
	o := startServe(t, env)
	ctx := t.Context()
	admin := adminClient(o.url, env)
	acme, err := admin.RegisterProduct(ctx, client.ProductRequest{Slug: "acme", DisplayName: "Acme Chat"})
	require.NoError(t, err)
	beta, err := admin.RegisterProduct(ctx, client.ProductRequest{Slug: "beta", DisplayName: "Beta Notes"})
	require.NoError(t, err)
	acmeC := client.New(o.url, client.WithPlatformKey(acme.PlatformAPIKey))
	betaC := client.New(o.url, client.WithPlatformKey(beta.PlatformAPIKey))
	keys := []string{env["ORCH_ADMIN_KEY"], acme.PlatformAPIKey, beta.PlatformAPIKey}
	ids := map[string]string{}
	for _, u := range []struct {
		c    *client.Client
		user string
	}{{acmeC, "alice"}, {acmeC, "bob"}, {acmeC, "carol"}, {betaC, "dave"}} {
		res, err := u.c.Provision(ctx, client.ProvisionRequest{UserID: u.user})
		require.NoError(t, err)
		ids[u.user] = res.EngineID
		keys = append(keys, res.APIKey)
	}
	_, err = acmeC.Stop(ctx, "bob")
	require.NoError(t, err)
	// dave's engine crashes and is restarted: the charts have a crash and
	// a restart to show.
	pid, err := strconv.Atoi(pidOf(t, env, ids["dave"]))
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool {
		page, err := betaC.Audit(ctx, "dave", client.AuditOptions{})
		if err != nil {
			return false
		}
		for _, e := range page.Entries {
			if e.Action == "auto_restart_success" {
				return true
			}
		}
		return false
	}, 60*time.Second, 100*time.Millisecond, "dave restarted after the crash")
	noKeys := func(tb *tab, where string) {
		t.Helper()
		html := tb.html()
		for _, k := range keys {
			require.NotContains(t, html, k, "a key on %s", where)
		}
	}

	// Sign in as admin; the overview counts the fleet.
	main := br.tab()
	require.Equal(t, "/ui/", main.signIn(o.url, env["ORCH_ADMIN_KEY"]))
	require.Equal(t, "admin", main.text("#viewer"))
	main.waitFor(`document.querySelector('[data-state=running]').textContent === '3'`, "3 running")
	require.Equal(t, "1", main.text(`[data-state=stopped]`))
	require.Equal(t, "0", main.text(`[data-state=failed]`))
	require.Equal(t, "4", main.text(`[data-state=total]`))
	require.Contains(t, main.text(`tr[data-product=acme]`), "3")
	require.Contains(t, main.text(`#live-counts`), "ok")
	require.Equal(t, "Provisions per hour (4)", main.text(`#chart-provisions-title`))
	require.Equal(t, "Crashes per hour (1)", main.text(`#chart-crashes-title`))
	require.Equal(t, "Auto-restarts per hour (1)", main.text(`#chart-restarts-title`))
	require.Equal(t, 4, eval[int](main, `document.querySelectorAll('#live-charts svg').length`))
	require.Equal(t, 1, eval[int](main, `document.querySelectorAll('tr[data-replica]').length`), "this orchestrator, as GET /replicas")
	require.Contains(t, main.text(`tr[data-replica]`), "alive")
	main.waitFor(`document.getElementById('live-status').textContent.includes('Live')`, "the live stream")
	noKeys(main, "the overview")
	main.screenshot(shots, "overview")

	// Open an engine from the table and stop it from its page: the page
	// changes in place, and a table open in another tab follows live.
	list := br.tab()
	list.do(chromedp.Navigate(o.url + "/ui/engines?product=" + acme.ProductID))
	list.waitFor(`document.getElementById('live-status').textContent.includes('Live')`, "the table's live stream")
	eval[chromedp.Void](list, `window.__notReloaded = true`)
	require.Contains(t, list.text(`tr[data-engine-id="`+ids["alice"]+`"] .state-cell`), "running")

	main.do(chromedp.Navigate(o.url + "/ui/engines"))
	main.waitFor(`!!document.querySelector('tr[data-engine-id]')`, "the engines table")
	noKeys(main, "the engines table")
	main.screenshot(shots, "engines")
	main.do(chromedp.Click(chromedp.CSS(`tr[data-engine-id="` + ids["alice"] + `"] th a`)))
	main.waitFor(`location.pathname === '/ui/engines/`+ids["alice"]+`' && !!document.getElementById('engine-state')`, "alice's page")
	require.Contains(t, main.text("#engine-state"), "running")
	eval[chromedp.Void](main, `window.__notReloaded = true`)
	main.confirm("stop")
	// The live refresh (from the change feed) and the form's own answer race:
	// either may show the new state first, but only the answer carries the
	// flash, so wait for both.
	main.waitFor(`document.getElementById('engine-state').textContent.includes('stopped')`, "alice stopped on her page")
	main.waitFor(`((document.querySelector('.flash') || {}).textContent || '').includes('Engine stopped.')`, "the stop's answer on her page")
	main.waitFor(`[...document.querySelectorAll('.audit-action')].some(td => td.textContent === 'stop')`, "stop in the timeline")
	require.True(t, eval[bool](main, `window.__notReloaded === true`), "the page changed without a reload")
	list.waitFor(`document.querySelector('tr[data-engine-id="`+ids["alice"]+`"] .state-cell').textContent.includes('stopped')`,
		"the row of alice stopped in the other tab")
	require.True(t, eval[bool](list, `window.__notReloaded === true`), "the table changed without a reload")
	got, err := acmeC.Get(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, "stopped", got.Status)
	noKeys(main, "the engine page")
	main.screenshot(shots, "engine")

	// A POST without the CSRF token is refused, from the signed-in page.
	status := runIn(main, chromedp.Evaluate[int](`fetch('/ui/engines/`+ids["carol"]+`/stop', {method: 'POST', credentials: 'same-origin',
		headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'confirm_user_id=carol'}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	require.Equal(t, http.StatusForbidden, status)
	got, err = acmeC.Get(ctx, "carol")
	require.NoError(t, err)
	require.Equal(t, "running", got.Status, "a tokenless POST changes nothing")

	// Destroy asks for the user id, and refuses anything else. carol's page
	// stays open in the other tab meanwhile.
	list.do(chromedp.Navigate(o.url + "/ui/engines/" + ids["carol"]))
	list.waitFor(`document.getElementById('live-status').textContent.includes('Live')`, "carol's page live")
	eval[chromedp.Void](list, `window.__notReloaded = true`)
	main.do(chromedp.Navigate(o.url + "/ui/engines/" + ids["carol"]))
	main.do(
		chromedp.Click(chromedp.CSS(`details:has(form[action$="/destroy"]) > summary`)),
		chromedp.SendKeys(chromedp.ID("confirm-user"), "carl"),
		chromedp.Click(chromedp.CSS(`form[action$="/destroy"] button`)),
	)
	main.waitFor(`!!document.getElementById('action-error')`, "the refusal")
	require.Contains(t, main.text("#action-error"), "Nothing was destroyed")
	_, err = acmeC.Get(ctx, "carol")
	require.NoError(t, err, "a wrong user id destroys nothing")
	main.do(
		chromedp.Click(chromedp.CSS(`details:has(form[action$="/destroy"]) > summary`)),
		chromedp.SendKeys(chromedp.ID("confirm-user"), "carol"),
		chromedp.Click(chromedp.CSS(`form[action$="/destroy"] button`)),
	)
	main.waitFor(`location.pathname === '/ui/engines' && !!document.querySelector('.flash')`, "back on the table")
	require.Contains(t, main.text(".flash"), "Destroyed the engine of carol")
	_, err = acmeC.Get(ctx, "carol")
	var apiErr *client.Error
	require.True(t, errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound, "carol is destroyed: %v", err)
	list.waitFor(`document.querySelector('h1').textContent === '404 Not Found'`, "carol's open page saying she is gone")
	require.True(t, eval[bool](list, `window.__notReloaded === true`), "the page changed without a reload")

	main.do(chromedp.Navigate(o.url + "/ui/products/" + acme.ProductID))
	main.waitFor(`!!document.getElementById('policy')`, "the policy editor")
	noKeys(main, "the product page")
	main.screenshot(shots, "product")

	// Upgrade dave from his page: the version changes in place, on the
	// same engine, as through the API.
	main.do(chromedp.Navigate(o.url + "/ui/engines/" + ids["dave"]))
	main.waitFor(`!!document.getElementById('engine-version')`, "dave's page")
	eval[chromedp.Void](main, `window.__notReloaded = true`)
	main.do(
		chromedp.Click(chromedp.CSS(`details:has(form[action$="/upgrade"]) > summary`)),
		chromedp.SendKeys(chromedp.ID("upgrade-version"), "v2"),
		chromedp.Click(chromedp.CSS(`form[action$="/upgrade"] button`)),
	)
	main.waitFor(`!!document.querySelector('.flash') && document.getElementById('engine-version').textContent === 'v2'`, "dave upgraded")
	require.Contains(t, main.text(".flash"), "Upgraded from")
	require.Contains(t, main.text(".flash"), "to v2.")
	require.True(t, eval[bool](main, `window.__notReloaded === true`), "the page changed without a reload")
	main.waitFor(`[...document.querySelectorAll('.audit-action')].some(td => td.textContent === 'upgrade')`, "upgrade in the timeline")
	dave, err := betaC.Get(ctx, "dave")
	require.NoError(t, err)
	require.Equal(t, "v2", dave.EngineVersion)
	require.Equal(t, "running", dave.Status)
	noKeys(main, "the engine page after an upgrade")
	main.do(chromedp.Navigate(o.url + "/ui/"))
	main.waitFor(`document.getElementById('live-status').textContent.includes('Live')`, "the overview")
	main.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	main.screenshot(shots, "overview-phone")
	main.do(chromedp.EmulateReset())

	// A product's operator sees its product only, even by typing a URL.
	prod := br.incognito()
	require.Equal(t, "/ui/", prod.signIn(o.url, beta.PlatformAPIKey))
	require.Equal(t, "beta", prod.text("#viewer"))
	require.Equal(t, "1", prod.text(`[data-state=total]`))
	prod.do(chromedp.Navigate(o.url + "/ui/engines"))
	require.NotContains(t, prod.html(), ids["alice"])
	require.Contains(t, prod.html(), ids["dave"])
	prod.do(chromedp.Navigate(o.url + "/ui/engines/" + ids["alice"]))
	require.Equal(t, "404 Not Found", prod.text("h1"))
	require.NotContains(t, prod.html(), "alice")
	prod.do(chromedp.Navigate(o.url + "/ui/products/" + acme.ProductID))
	require.Equal(t, "404 Not Found", prod.text("h1"))

	// A wrong key is refused, and not echoed.
	wrong := br.incognito()
	const wrongKey = "pk-sept-this-is-not-a-key-of-anyone-000000"
	require.Equal(t, "/ui/signin", wrong.signIn(o.url, wrongKey))
	require.Contains(t, wrong.text(".error"), "That key was not accepted")
	require.NotContains(t, wrong.html(), wrongKey)
	wrong.do(chromedp.Navigate(o.url + "/ui/engines"))
	require.Equal(t, "/ui/signin", wrong.path(), "no session came of it")

	// Without JavaScript the pages still read and act: start alice again.
	nojs := br.incognito()
	_, err = chromedp.Call(nojs.ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
	require.NoError(t, err)
	nojs.signIn(o.url, env["ORCH_ADMIN_KEY"])
	nojs.do(chromedp.Navigate(o.url + "/ui/engines/" + ids["alice"]))
	eval[chromedp.Void](nojs, `window.__before = true`)
	nojs.confirm("start")
	nojs.waitFor(`!!document.querySelector('.flash') && document.getElementById('engine-state').textContent.includes('running')`,
		"alice running after a plain form post")
	require.False(t, eval[bool](nojs, `window.__before === true`), "without script the form posted as a page load")
	require.True(t, eval[bool](nojs, `document.getElementById('live-status').hidden`), "no script ran")
	got, err = acmeC.Get(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, "running", got.Status)

	t.Logf("screenshots in %s", shots)
}
