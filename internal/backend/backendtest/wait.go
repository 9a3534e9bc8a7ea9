package backendtest

import (
	"bufio"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Receive returns the next value from ch; it fails t when ch is closed or
// no value comes within d. what names the values in the failure.
func Receive[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		require.True(t, ok, "closed before the next %s", what)
		return v
	case <-time.After(d):
		t.Fatalf("no %s within %s", what, d)
	}
	var zero T
	return zero
}

// Lines sends r's lines on the channel it returns, which it closes when r
// ends: how a test reads a followed log while it waits for its next line.
func Lines(r io.Reader) <-chan string {
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines
}
