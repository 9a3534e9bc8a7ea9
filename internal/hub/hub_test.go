package hub_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/september/bap-engine/internal/hub"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSubscribersAreCalledBeforePublishReturns(t *testing.T) {
	var h hub.Hub[int]
	h.Publish(0) // nobody listens: nothing happens
	var a, b []int
	stopA := h.Subscribe(func(v int) { a = append(a, v) })
	h.Subscribe(func(v int) { b = append(b, v) })
	h.Publish(1, 2)
	assert.Equal(t, []int{1, 2}, a, "in order, and already there when Publish returns")
	assert.Equal(t, []int{1, 2}, b)
	stopA()
	h.Publish(3)
	assert.Equal(t, []int{1, 2}, a, "an unsubscribed function is not called")
	assert.Equal(t, []int{1, 2, 3}, b)
}

func TestStreamQueuesForASlowReader(t *testing.T) {
	var h hub.Hub[int]
	stop := make(chan struct{})
	defer close(stop)
	ch := h.Stream(t.Context(), stop)
	const n = 10_000
	done := make(chan struct{})
	go func() {
		for i := range n {
			h.Publish(i) // never waits for the reader
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Publish blocked on a reader that is not reading")
	}
	for i := range n {
		require.Equal(t, i, <-ch, "every value, in order")
	}
}

func TestStreamEndsWithItsContextOrStop(t *testing.T) {
	var h hub.Hub[string]
	ctx, cancel := context.WithCancel(t.Context())
	byCtx := h.Stream(ctx, nil)
	stop := make(chan struct{})
	byStop := h.Stream(t.Context(), stop)
	h.Publish("x")
	assert.Equal(t, "x", <-byCtx)
	assert.Equal(t, "x", <-byStop)

	cancel()
	close(stop)
	for _, ch := range []<-chan string{byCtx, byStop} {
		select {
		case _, ok := <-ch:
			for ok { // a value queued before the end may still come
				_, ok = <-ch
			}
		case <-time.After(10 * time.Second):
			t.Fatal("stream not closed")
		}
	}
	// Both streams unsubscribed: publishing reaches nobody and leaks
	// nothing (goleak checks the goroutines in TestMain).
	h.Publish("y")
}
