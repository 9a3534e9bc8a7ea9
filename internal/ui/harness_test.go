package ui_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/api"
	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/storetest"
	"github.com/september/bap-engine/internal/rollout"
	"github.com/september/bap-engine/internal/servertest"
	"github.com/september/bap-engine/internal/testclock"
	"github.com/september/bap-engine/internal/testlog"
	"github.com/september/bap-engine/internal/testmain"
	"github.com/september/bap-engine/internal/ui"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, testmain.Goroutines()))
}

// product is a registered product and its platform key.
type product struct {
	bap.Product
	key string
}

// harness is the orchestrator's HTTP handler (servertest.Serve with the
// dashboard mounted, on a running clock, nothing running in the
// background).
// The short fields are the Server's parts under the names the tests use.
type harness struct {
	*servertest.Server
	t        testing.TB
	store    registry.Store
	lm       *lifecycle.Manager
	fake     *backendtest.Fake
	rollouts *rollout.Service // nil with options.noRollouts
	clock    *testclock.Clock
	srv      *httptest.Server
	dash     http.Handler // the dashboard alone, as mounted in srv
	adminKey string
	logs     *testlog.Buffer
}

// options tune a harness.
type options struct {
	grace time.Duration
	logs  func(ctx context.Context, engineID string, lines int) (string, error)
	ttl   time.Duration
	// noRollouts serves no rollouts (ui.Deps.Rollouts and api.Deps.Rollouts
	// nil).
	noRollouts bool
}

func newHarness(t *testing.T, o options) *harness {
	t.Helper()
	return newHarnessOn(t, storetest.SQLite(t), o)
}

func newHarnessOn(t testing.TB, store registry.Store, o options) *harness {
	t.Helper()
	opts := []servertest.Option{
		servertest.Clock(testclock.Running()),
		servertest.Ports(60),
		servertest.API(func(d *api.Deps) { d.PlatformKeyGrace = o.grace }),
	}
	if o.noRollouts {
		opts = append(opts, servertest.NoRollouts())
	}
	var dash http.Handler
	opts = append(opts, servertest.Dashboard(func(s *servertest.Server) http.Handler {
		dash = ui.New(ui.Deps{
			Store: s.Store, Lifecycle: s.Manager, Discovery: s.Discovery, Rollouts: s.Rollouts, AdminKey: s.AdminKey,
			PlatformKeyGrace: o.grace, Logs: o.logs, Logger: s.Log, Now: s.Clock.Now,
			SessionTTL: o.ttl, PollInterval: 100 * time.Millisecond, Context: s.Context,
		})
		return dash
	}))
	s := servertest.Serve(t, store, opts...)
	return &harness{Server: s, t: t, store: store, lm: s.Manager, fake: s.Fake, rollouts: s.Rollouts, clock: s.Clock,
		srv: s.HTTP, dash: dash, adminKey: s.AdminKey, logs: s.Logs}
}

func (h *harness) remember(keys ...string) { h.Remember(keys...) }

// requireNoSecret fails when text holds any key the harness has seen, or
// anything shaped like a platform or engine key.
func (h *harness) requireNoSecret(text, where string) {
	h.t.Helper()
	h.RequireNoSecret(text, where)
}

// product registers a product with a platform key.
func (h *harness) product(slug string) product {
	h.t.Helper()
	p, key := h.Product(h.t, func(p *bap.Product) { p.Slug, p.DisplayName = slug, "Product "+slug })
	return product{Product: p, key: key}
}

// provision provisions userID's engine through lifecycle.
func (h *harness) provision(p product, userID string) bap.Engine {
	h.t.Helper()
	return h.Provisioned(h.t, p.Product, userID).Engine
}

// engine reads an engine back.
func (h *harness) engine(id string) (bap.Engine, error) {
	return h.store.GetEngine(h.t.Context(), id)
}

// auditCount counts an engine's audit rows with action.
func (h *harness) auditCount(engineID string, action audit.Action) int {
	h.t.Helper()
	_, n, err := h.store.ListAudit(h.t.Context(), registry.AuditFilter{EngineID: engineID, Actions: []audit.Action{action}})
	require.NoError(h.t, err)
	return n
}

// browser is an HTTP client with its own cookies that does not follow
// redirects, so tests see each answer.
type browser struct {
	h      *harness
	client *http.Client
}

func (h *harness) browser() *browser {
	jar, err := cookiejar.New(nil)
	require.NoError(h.t, err)
	return &browser{h: h, client: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// page is one answer.
type page struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(req *http.Request) page {
	b.h.t.Helper()
	resp, err := b.client.Do(req)
	require.NoError(b.h.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(b.h.t, err)
	return page{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func (b *browser) get(path string) page {
	b.h.t.Helper()
	req, err := http.NewRequestWithContext(b.h.t.Context(), http.MethodGet, b.h.srv.URL+path, nil)
	require.NoError(b.h.t, err)
	return b.do(req)
}

func (b *browser) post(path string, form url.Values) page {
	b.h.t.Helper()
	req, err := http.NewRequestWithContext(b.h.t.Context(), http.MethodPost, b.h.srv.URL+path, strings.NewReader(form.Encode()))
	require.NoError(b.h.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var csrfPattern = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrfOf returns the CSRF token of the first form of a page.
func csrfOf(t testing.TB, p page) string {
	t.Helper()
	m := csrfPattern.FindStringSubmatch(p.body)
	require.NotNil(t, m, "no CSRF field in the page")
	return m[1]
}

// signIn signs in with key and returns the answer to the sign-in POST.
func (b *browser) signIn(key string) page {
	b.h.t.Helper()
	form := b.get(ui.Path + "/signin")
	require.Equal(b.h.t, http.StatusOK, form.status)
	return b.post(ui.Path+"/signin", url.Values{"csrf": {csrfOf(b.h.t, form)}, "key": {key}, "next": {ui.Path + "/"}})
}

// signedIn is a browser signed in with key.
func (h *harness) signedIn(key string) *browser {
	h.t.Helper()
	b := h.browser()
	p := b.signIn(key)
	require.Equal(h.t, http.StatusSeeOther, p.status, "sign-in: %s", p.body)
	return b
}

// csrf is the CSRF token of the browser's session (from the overview).
func (b *browser) csrf() string {
	b.h.t.Helper()
	p := b.get(ui.Path + "/")
	require.Equal(b.h.t, http.StatusOK, p.status)
	return csrfOf(b.h.t, p)
}

// sessionCookie returns the browser's session cookie value ("" if none).
func (b *browser) sessionCookie() string {
	u, _ := url.Parse(b.h.srv.URL + ui.Path + "/")
	for _, c := range b.client.Jar.Cookies(u) {
		if c.Name == "bap_ui_session" {
			return c.Value
		}
	}
	return ""
}

// stream is an open GET /ui/events.
type stream struct {
	resp   *http.Response
	events chan sse
}

// sse is one server-sent event.
type sse struct{ name, data string }

func (b *browser) events(t *testing.T) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.h.srv.URL+ui.Path+"/events", nil)
	require.NoError(t, err)
	resp, err := b.client.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	s := &stream{resp: resp, events: make(chan sse, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		var ev sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			case line == "" && ev.name != "":
				s.events <- ev
				ev = sse{}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	return s
}

// next returns the next event named name, skipping others, or fails after
// a generous wait.
func (s *stream) next(t *testing.T, name string) sse {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			require.True(t, ok, "the stream ended while waiting for %q", name)
			if ev.name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %q event", name)
		}
	}
}

// until returns the events named name up to the first whose data is data
// (JSON-equal), or fails after a generous wait.
func (s *stream) until(t *testing.T, name, data string) []sse {
	t.Helper()
	var seen []sse
	for {
		ev := s.next(t, name)
		seen = append(seen, ev)
		var got, want any
		require.NoError(t, json.Unmarshal([]byte(ev.data), &got))
		require.NoError(t, json.Unmarshal([]byte(data), &want))
		if reflect.DeepEqual(got, want) {
			return seen
		}
	}
}
