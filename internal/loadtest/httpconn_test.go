package loadtest_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/loadtest"
)

// TestConnsSendPreparedRequests: the load connections send the prepared
// request as net/http reads it, read each answer whole (keep-alive), and
// replace a connection the server closed.
func TestConnsSendPreparedRequests(t *testing.T) {
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost || r.URL.Path != "/engines/u1/admit" ||
			r.Header.Get("X-Platform-Key") != "pk-test" || string(body) != "{}" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		if n == 3 {
			w.Header().Set("Connection", "close")
		}
		if n == 5 {
			// Streamed: no Content-Length, which the client refuses.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "streamed")
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = fmt.Fprintf(w, "answer %d", n)
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	cs, err := loadtest.DialConns(addr, 1)
	require.NoError(t, err)
	t.Cleanup(cs.Close)
	req := loadtest.Request(http.MethodPost, addr, "/engines/u1/admit", []byte("{}"), "X-Platform-Key", "pk-test")

	for i := 1; i <= 4; i++ {
		require.NoError(t, cs.Do(req, 5*time.Second, func(status int, body []byte) error {
			require.Equal(t, http.StatusAccepted, status)
			require.Equal(t, fmt.Sprintf("answer %d", i), string(body))
			return nil
		}), "request %d", i)
	}
	err = cs.Do(req, 5*time.Second, func(int, []byte) error { return nil })
	require.ErrorContains(t, err, "chunked")
	require.NoError(t, cs.Do(req, 5*time.Second, func(status int, body []byte) error {
		require.Equal(t, "answer 6", string(body))
		return nil
	}), "a failed connection is dialled again")
	require.ErrorContains(t, cs.Do(req, 5*time.Second, func(int, []byte) error { return fmt.Errorf("bad answer") }),
		"bad answer", "check's error is the request's")
}
