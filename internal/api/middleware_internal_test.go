package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// bare is a server with only what the middleware and writeError use.
func bare(t *testing.T) (*server, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	return &server{log: slog.New(slog.NewJSONHandler(&logs, nil)), maxBody: DefaultMaxBodyBytes, now: time.Now}, &logs
}

func envelope(t *testing.T, rec *httptest.ResponseRecorder) errorDetail {
	t.Helper()
	var body errorBody
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&body))
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	return body.Error
}

func TestPanicBecomesInternalEnvelope(t *testing.T) {
	t.Parallel()
	s, logs := bare(t)
	mux := http.NewServeMux()
	mux.Handle("GET /boom", s.handle(route{method: http.MethodGet, path: "/boom", h: func(http.ResponseWriter, *http.Request, bap.Product) error {
		panic("kaboom with detail")
	}}))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/boom", nil)
	req.Header.Set(HeaderRequestID, "req-panic")
	s.middleware(mux).ServeHTTP(rec, req)
	require.Equal(t, http.StatusInternalServerError, rec.Code)
	e := envelope(t, rec)
	require.Equal(t, errorDetail{Code: bap.CodeInternal, Message: msgInternal}, e)
	require.Contains(t, logs.String(), "kaboom with detail")
	require.Contains(t, logs.String(), `"request_id":"req-panic"`)
	require.Contains(t, logs.String(), `"status":500`)
}

func TestAbortHandlerPanicIsNotSwallowed(t *testing.T) {
	t.Parallel()
	s, _ := bare(t)
	mux := http.NewServeMux()
	mux.Handle("GET /abort", s.handle(route{method: http.MethodGet, path: "/abort", h: func(http.ResponseWriter, *http.Request, bap.Product) error {
		panic(http.ErrAbortHandler)
	}}))
	require.PanicsWithValue(t, http.ErrAbortHandler, func() {
		s.middleware(mux).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/abort", nil))
	})
}

func TestWriteErrorMapping(t *testing.T) {
	t.Parallel()
	s, logs := bare(t)
	cases := []struct {
		err    error
		status int
		code   string
		msg    string
	}{
		{bap.Errorf(bap.CodeEngineNotFound, "gone"), 404, bap.CodeEngineNotFound, "gone"},
		{fmt.Errorf("wrapped: %w", bap.Errorf(bap.CodeBootTimeout, "slow")), 504, bap.CodeBootTimeout, "slow"},
		{fmt.Errorf("read engine: %w", registry.ErrUnavailable), 503, bap.CodeDatabaseUnavailable, msgDatabaseUnavailable},
		{errors.New("pq: password=hunter2 failed"), 500, bap.CodeInternal, msgInternal},
		{bap.Errorf("NOT_A_DOCUMENTED_CODE", "x"), 500, bap.CodeInternal, msgInternal},
		{&bap.Error{Code: bap.CodeRateLimited, Message: "slow down", RetryAfter: 1500 * time.Millisecond}, 429, bap.CodeRateLimited, "slow down"},
	}
	for _, tc := range cases {
		rec := httptest.NewRecorder()
		s.writeError(rec, httptest.NewRequest(http.MethodGet, "/", nil), tc.err)
		require.Equal(t, tc.status, rec.Code, "%v", tc.err)
		require.Equal(t, errorDetail{Code: tc.code, Message: tc.msg}, envelope(t, rec))
		if tc.code == bap.CodeRateLimited {
			require.Equal(t, "2", rec.Header().Get("Retry-After"), "rounded up to whole seconds")
		} else {
			require.Empty(t, rec.Header().Get("Retry-After"))
		}
	}
	require.Contains(t, logs.String(), "hunter2", "the internal cause is logged for operators")
}

func TestRetryAfterAtLeastOneSecond(t *testing.T) {
	t.Parallel()
	s, _ := bare(t)
	rec := httptest.NewRecorder()
	s.writeError(rec, httptest.NewRequest(http.MethodGet, "/", nil), &bap.Error{Code: bap.CodeRateLimited, Message: "m", RetryAfter: time.Nanosecond})
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
}

func TestRequestIDAcceptsOnlyPlainIDs(t *testing.T) {
	t.Parallel()
	require.Equal(t, "abc-123_x.y:z", requestID("abc-123_x.y:z"))
	seen := map[string]bool{}
	for _, bad := range []string{"", "with space", "new\nline", string(make([]byte, 129)), "quote\""} {
		got := requestID(bad)
		require.NotEqual(t, bad, got)
		require.Equal(t, got, requestID(got), "a generated id is itself acceptable")
		require.False(t, seen[got], "generated ids are unique")
		seen[got] = true
	}
}

func TestNewPanicsOnMissingDependencies(t *testing.T) {
	t.Parallel()
	require.Panics(t, func() { New(Deps{}) })
}

// windowed serves mux through the middleware with an answer window of
// window, on a real connection (deadlines need one).
func windowed(t *testing.T, window time.Duration, mux *http.ServeMux) string {
	t.Helper()
	s, _ := bare(t)
	s.writeTimeout = window
	srv := httptest.NewServer(s.middleware(mux))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestWindowCutsClientThatStopsReading: a client that stops reading an
// answer, or a Stream, does not hold its handler past the window: the write
// it does not take fails, and the handler returns.
func TestWindowCutsClientThatStopsReading(t *testing.T) {
	t.Parallel()
	for name, writer := range map[string]func(http.ResponseWriter, *http.Request) io.Writer{
		"answer": func(w http.ResponseWriter, _ *http.Request) io.Writer { return w },
		"stream": func(w http.ResponseWriter, r *http.Request) io.Writer { return NewStream(w, r) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ended := make(chan error, 1)
			mux := http.NewServeMux()
			mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
				out, piece := writer(w, r), make([]byte, 256<<10)
				for {
					if _, err := out.Write(piece); err != nil {
						ended <- err
						return
					}
				}
			})
			c, err := net.Dial("tcp", windowed(t, 200*time.Millisecond, mux))
			require.NoError(t, err)
			defer c.Close()
			_, err = io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			select { // never read
			case err := <-ended:
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			case <-time.After(60 * time.Second):
				t.Fatal("a client that stopped reading was not cut off")
			}
		})
	}
}

// TestAnswerWindowStartsWithTheAnswer: the window bounds the delivery of
// an answer, not the handler before it; and the deadline of an answer does
// not reach the next request on a keep-alive connection (here net/http's
// 100 Continue, written before the handler answers).
func TestAnswerWindowStartsWithTheAnswer(t *testing.T) {
	t.Parallel()
	const window = 100 * time.Millisecond
	mux := http.NewServeMux()
	mux.HandleFunc("POST /slow", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		time.Sleep(3 * window) // an operation longer than the window
		_, _ = fmt.Fprintf(w, "got %s", b)
	})
	hc := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
	t.Cleanup(hc.CloseIdleConnections)
	url := "http://" + windowed(t, window, mux) + "/slow"
	for i := range 3 {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(fmt.Sprint(i)))
		require.NoError(t, err)
		req.Header.Set("Expect", "100-continue")
		resp, err := hc.Do(req)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("got %d", i), string(b))
		time.Sleep(2 * window) // the last answer's deadline passes
	}
}

// TestAbandonedRequestIsNoServerError: a request whose client left (its
// context cancelled) is logged and counted as 499, not as a 500.
func TestAbandonedRequestIsNoServerError(t *testing.T) {
	t.Parallel()
	s, logs := bare(t)
	mux := http.NewServeMux()
	mux.Handle("GET /slow", s.handle(route{method: http.MethodGet, path: "/slow", h: func(_ http.ResponseWriter, r *http.Request, _ bap.Product) error {
		<-r.Context().Done()
		return fmt.Errorf("list engines: %w", r.Context().Err())
	}}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the client has gone
	rec := httptest.NewRecorder()
	s.middleware(mux).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/slow", nil).WithContext(ctx))
	require.Equal(t, statusClientClosedRequest, rec.Code)
	require.Contains(t, logs.String(), "request cancelled by the client")
	require.Contains(t, logs.String(), `"status":499`)
	require.NotContains(t, logs.String(), "internal error")
}

// TestStreamOutlivesItsWindow: a Stream stays open past the read timeout
// and past silences longer than its write window, and keeps its request's
// context.
func TestStreamOutlivesItsWindow(t *testing.T) {
	t.Parallel()
	const window = 100 * time.Millisecond
	s, _ := bare(t)
	s.writeTimeout = window
	mux := http.NewServeMux()
	mux.HandleFunc("POST /events", func(w http.ResponseWriter, r *http.Request) {
		in, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		st := NewStream(w, r)
		for i := range 6 {
			if i == 3 {
				time.Sleep(4 * window) // silent for four windows
			}
			if _, err := fmt.Fprintf(st, "data: %s %d\n\n", in, i); err != nil {
				return
			}
			time.Sleep(window / 2)
		}
		_, _ = fmt.Fprintf(st, "data: end, context %v\n\n", r.Context().Err())
	})
	srv := httptest.NewUnstartedServer(s.middleware(mux))
	srv.Config.ReadTimeout = window
	srv.Start()
	t.Cleanup(srv.Close)
	resp, err := http.Post(srv.URL+"/events", "text/plain", strings.NewReader("tick"))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "data: tick 0\n\ndata: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\ndata: tick 4\n\ndata: tick 5\n\ndata: end, context <nil>\n\n", string(b))
}
