package ui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/secret"
)

// Names of the dashboard's cookies and form fields.
const (
	sessionCookie = "bap_ui_session"
	signinCookie  = "bap_ui_signin"
	csrfField     = "csrf"
	keyField      = "key"
	nextField     = "next"
)

// Bounds of sign-in.
const (
	// signinFormTTL is how long a sign-in form can be posted.
	signinFormTTL = time.Hour
	// maxSessions bounds the sessions held in memory; the oldest goes first.
	maxSessions = 10000
	// signinFailures is how many sign-ins one client address may attempt
	// per policy.Window before it must wait; a successful one gives its
	// slot back.
	signinFailures = 20
)

// session is one signed-in browser.
type session struct {
	id        string
	admin     bool
	productID string
	// keyHash is the SHA-256 of the platform key a product session signed
	// in with: the session lasts only while that key authenticates.
	keyHash string
	csrf    string
	created time.Time
	expires time.Time
	// done is closed when the session ends, which ends its live streams.
	done chan struct{}

	mu    sync.Mutex
	flash string
}

// checkCSRF reports whether token is the session's CSRF token.
func (s *session) checkCSRF(token string) bool {
	return token != "" && hmac.Equal([]byte(token), []byte(s.csrf))
}

// setFlash keeps a message for the next page this session sees.
func (s *session) setFlash(msg string) {
	s.mu.Lock()
	s.flash = msg
	s.mu.Unlock()
}

// takeFlash returns the kept message and forgets it.
func (s *session) takeFlash() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := s.flash
	s.flash = ""
	return msg
}

// sessions holds the live sessions of this process and signs their
// cookies.
type sessions struct {
	mac []byte
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	byID map[string]*session
}

func newSessions(mac []byte, ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{mac: mac, ttl: ttl, now: now, byID: map[string]*session{}}
}

// randomToken returns 32 random bytes, URL-safe base64.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sign is the MAC of the parts under the process's key.
func (s *sessions) sign(parts ...string) string {
	m := hmac.New(sha256.New, s.mac)
	m.Write([]byte(strings.Join(parts, "|")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// create starts a session with a new id and CSRF token.
func (s *sessions) create(admin bool, productID, keyHash string) *session {
	now := s.now()
	sess := &session{
		id: randomToken(), admin: admin, productID: productID, keyHash: keyHash,
		csrf: randomToken(), created: now, expires: now.Add(s.ttl), done: make(chan struct{}),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, old := range s.byID {
		if !now.Before(old.expires) {
			s.endLocked(id)
		}
	}
	for len(s.byID) >= maxSessions {
		var oldest *session
		for _, old := range s.byID {
			if oldest == nil || old.created.Before(oldest.created) {
				oldest = old
			}
		}
		s.endLocked(oldest.id)
	}
	s.byID[sess.id] = sess
	return sess
}

// cookieValue is what the session cookie holds: id, expiry and their MAC.
func (s *sessions) cookieValue(sess *session) string {
	exp := strconv.FormatInt(sess.expires.Unix(), 10)
	return sess.id + "." + exp + "." + s.sign("session", sess.id, exp)
}

// lookup returns the live session a cookie value names, or nil: a value
// that is forged, expired or names an ended session is worth nothing.
func (s *sessions) lookup(value string) *session {
	id, rest, ok := strings.Cut(value, ".")
	if !ok {
		return nil
	}
	exp, mac, ok := strings.Cut(rest, ".")
	if !ok || !hmac.Equal([]byte(mac), []byte(s.sign("session", id, exp))) {
		return nil
	}
	now := s.now()
	if unix, err := strconv.ParseInt(exp, 10, 64); err != nil || now.Unix() >= unix {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byID[id]
	if sess == nil {
		return nil
	}
	if !now.Before(sess.expires) {
		s.endLocked(id)
		return nil
	}
	return sess
}

// end ends a session: its cookie no longer works and its streams close.
func (s *sessions) end(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID[sess.id] == sess {
		s.endLocked(sess.id)
	}
}

func (s *sessions) endLocked(id string) {
	if sess := s.byID[id]; sess != nil {
		close(sess.done)
		delete(s.byID, id)
	}
}

// viewer is who a request comes from: an admin, or one product's operator.
type viewer struct {
	sess    *session
	admin   bool
	product bap.Product // product sessions only
}

// name is how pages and logs name the viewer.
func (v *viewer) name() string {
	if v.admin {
		return audit.ActorAdmin
	}
	return v.product.Slug
}

// actor is who the audit log says acted: as through the API, "admin" or the
// product's slug.
func (v *viewer) actor() string { return v.name() }

// scope is the product id the viewer is confined to, "" for an admin.
func (v *viewer) scope() string {
	if v.admin {
		return ""
	}
	return v.product.ID
}

// sees reports whether the viewer may see productID's engines.
func (v *viewer) sees(productID string) bool { return v.admin || v.product.ID == productID }

// viewerOf returns the request's viewer, nil without a live session. A
// product session whose key no longer authenticates is ended here.
func (h *Handler) viewerOf(r *http.Request) (*viewer, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, nil
	}
	sess := h.sessions.lookup(c.Value)
	if sess == nil {
		return nil, nil
	}
	if sess.admin {
		return &viewer{sess: sess, admin: true}, nil
	}
	p, err := h.store.GetProductByKeyHash(r.Context(), sess.keyHash, bap.Timestamp(h.now()))
	if errors.Is(err, registry.ErrNotFound) || (err == nil && p.ID != sess.productID) {
		h.sessions.end(sess)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("authenticate dashboard session: %w", err)
	}
	return &viewer{sess: sess, product: p}, nil
}

// secure reports whether the browser reached us over TLS (directly or
// through a proxy that says so): only then are cookies marked Secure.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// setCookie sets a dashboard cookie: HttpOnly, SameSite=Strict, confined to
// path. maxAge < 0 deletes it.
func setCookie(w http.ResponseWriter, r *http.Request, name, value, path string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r),
	})
}

// signinView is the body of the sign-in page.
type signinView struct {
	CSRF    string
	Next    string
	Message string
	Error   bool
}

// signinURL is the sign-in page that returns to next afterwards.
func signinURL(next string) string {
	if next == "" || next == Path+"/" {
		return Path + "/signin"
	}
	return Path + "/signin?" + url.Values{nextField: {next}}.Encode()
}

// safeNext is where to go after signing in: a dashboard path of this
// server, never another site and never the sign-in itself.
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil ||
		!strings.HasPrefix(next, Path+"/") || strings.HasPrefix(next, "//") ||
		strings.ContainsAny(next, "\\\r\n") || strings.HasPrefix(u.Path, Path+"/signin") {
		return Path + "/"
	}
	return next
}

// signinPage: GET /ui/signin. It binds a fresh form token to a short-lived
// cookie of its own, so a sign-in cannot be posted from another site.
func (h *Handler) signinPage(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get(nextField))
	if v, err := h.viewerOf(r); err == nil && v != nil {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	msg := ""
	if r.URL.Query().Has("out") {
		msg = "You are signed out."
	}
	h.renderSignin(w, r, http.StatusOK, next, msg, false)
}

func (h *Handler) renderSignin(w http.ResponseWriter, r *http.Request, status int, next, msg string, isErr bool) {
	nonce := randomToken()
	setCookie(w, r, signinCookie, nonce, Path+"/signin", int(signinFormTTL.Seconds()))
	h.render(w, r, nil, status, "signin", "Sign in", signinView{
		CSRF: h.sessions.sign("signin", nonce), Next: next, Message: msg, Error: isErr,
	})
}

// signin: POST /ui/signin with the admin key or a platform key.
func (h *Handler) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		h.renderSignin(w, r, http.StatusBadRequest, Path+"/", "The form could not be read.", true)
		return
	}
	next := safeNext(r.PostForm.Get(nextField))
	c, err := r.Cookie(signinCookie)
	if err != nil || c.Value == "" || !hmac.Equal([]byte(r.PostForm.Get(csrfField)), []byte(h.sessions.sign("signin", c.Value))) {
		h.renderSignin(w, r, http.StatusForbidden, next,
			"This sign-in form is out of date or did not come from this dashboard (cookies must be on). Retry.", true)
		return
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	res, ok, retry := h.signins.Reserve("signin:"+host, signinFailures)
	if !ok {
		h.renderSignin(w, r, http.StatusTooManyRequests, next,
			fmt.Sprintf("Too many sign-in attempts from your address. Retry in %d s.", int(retry.Seconds())+1), true)
		return
	}
	key := strings.TrimSpace(r.PostForm.Get(keyField))
	var (
		sess *session
		who  string
	)
	switch {
	case key == "":
	case secret.Equal(key, h.adminKey):
		sess, who = h.sessions.create(true, "", ""), audit.ActorAdmin
	default:
		hash := secret.Hash(key)
		p, err := h.store.GetProductByKeyHash(r.Context(), hash, bap.Timestamp(h.now()))
		switch {
		case errors.Is(err, registry.ErrNotFound):
		case err != nil:
			res.Cancel()
			h.fail(w, r, nil, fmt.Errorf("dashboard sign-in: %w", err))
			return
		case secret.Equal(hash, p.APIKeyHash) || (p.PrevAPIKeyHash != "" && secret.Equal(hash, p.PrevAPIKeyHash)):
			sess, who = h.sessions.create(false, p.ID, hash), p.Slug
		}
	}
	if sess == nil {
		h.log.Warn("dashboard sign-in refused", "remote", host)
		h.renderSignin(w, r, http.StatusUnauthorized, next,
			"That key was not accepted. Use the admin key or a product's platform key.", true)
		return
	}
	res.Cancel()
	h.log.Info("dashboard sign-in", "who", who, "remote", host)
	setCookie(w, r, signinCookie, "", Path+"/signin", -1)
	setCookie(w, r, sessionCookie, h.sessions.cookieValue(sess), Path, int(sess.expires.Sub(h.now()).Seconds()))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// signout: POST /ui/signout ends the session on the server.
func (h *Handler) signout(w http.ResponseWriter, r *http.Request, v *viewer) error {
	h.sessions.end(v.sess)
	setCookie(w, r, sessionCookie, "", Path, -1)
	h.log.Info("dashboard sign-out", "who", v.name())
	http.Redirect(w, r, Path+"/signin?out=1", http.StatusSeeOther)
	return nil
}
