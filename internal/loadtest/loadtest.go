package loadtest

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Op performs one request. Each client calls it serially with its own rng;
// different clients call it concurrently. A non-nil error counts the
// request as failed, unless ctx has ended by then.
type Op func(ctx context.Context, rng *rand.Rand) error

// Result is what one Run measured.
type Result struct {
	// Clients is the number of concurrent clients.
	Clients int
	// Offered is the Config.Rate of the run: the paced request rate, 0 for
	// closed loop.
	Offered float64
	// Elapsed is the wall time from the start until the last client
	// finished its last request.
	Elapsed time.Duration
	// Requests is how many requests succeeded.
	Requests int
	// Errors is how many requests failed.
	Errors int
	// FirstErr is one of the failures (nil when Errors is 0).
	FirstErr error
	// lat holds the latencies of the successful requests, sorted.
	lat []time.Duration
}

// Config shapes one Run.
type Config struct {
	// Clients is the number of concurrent clients (at least 1).
	Clients int
	// Duration is how long new requests are started (positive).
	Duration time.Duration
	// Rate, when positive, paces the clients to this many requests per
	// second in total (open loop): request k is due at start + k/Rate, the
	// next free client sends it, and its latency counts from when it was
	// due, so a stall also counts against the requests it delayed. Zero
	// runs closed loop: each client sends its next request as soon as the
	// previous one returned.
	Rate float64
}

// Run drives op from cfg.Clients concurrent clients until cfg.Duration has
// passed or ctx ends. Requests in flight at the deadline are completed and
// counted.
func Run(ctx context.Context, cfg Config, op Op) Result {
	if cfg.Clients < 1 || cfg.Duration <= 0 || cfg.Rate < 0 {
		panic("loadtest.Run: need at least one client, a positive duration and a rate >= 0")
	}
	clients := cfg.Clients
	type tally struct {
		lat      []time.Duration
		errors   int
		firstErr error
	}
	tallies := make([]tally, clients)
	seed := rand.Uint64()
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = max(time.Duration(float64(time.Second)/cfg.Rate), 1)
	}
	var next atomic.Int64 // index of the next paced request
	// due returns when the client's next request is due, waiting for it
	// when paced; false once the run is over.
	due := func() (time.Time, bool) {
		if interval == 0 {
			now := time.Now()
			return now, now.Before(deadline) && ctx.Err() == nil
		}
		at := start.Add(time.Duration(next.Add(1)-1) * interval)
		if !at.Before(deadline) {
			return at, false
		}
		if wait := time.Until(at); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return at, false
			}
		}
		return at, ctx.Err() == nil
	}
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			tl := &tallies[i]
			tl.lat = make([]time.Duration, 0, 1024)
			for {
				began, ok := due()
				if !ok {
					return
				}
				err := op(ctx, rng)
				took := time.Since(began)
				switch {
				case err == nil:
					tl.lat = append(tl.lat, took)
				case ctx.Err() != nil:
					return
				default:
					tl.errors++
					if tl.firstErr == nil {
						tl.firstErr = err
					}
				}
			}
		})
	}
	wg.Wait()
	r := Result{Clients: clients, Offered: cfg.Rate, Elapsed: time.Since(start)}
	n := 0
	for _, tl := range tallies {
		n += len(tl.lat)
	}
	r.lat = make([]time.Duration, 0, n)
	for _, tl := range tallies {
		r.lat = append(r.lat, tl.lat...)
		r.Errors += tl.errors
		if r.FirstErr == nil {
			r.FirstErr = tl.firstErr
		}
	}
	slices.Sort(r.lat)
	r.Requests = len(r.lat)
	return r
}

// Throughput is the successful requests per second of elapsed time.
func (r Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Quantile returns the latency below or at which a fraction q (0..1) of the
// successful requests completed (nearest rank); 0 when none succeeded.
// Quantile(1) is the slowest request.
func (r Result) Quantile(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	i := int(math.Ceil(q*float64(len(r.lat)))) - 1
	return r.lat[max(i, 0)]
}

// Mean is the mean latency of the successful requests; 0 when none
// succeeded.
func (r Result) Mean() time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range r.lat {
		sum += d
	}
	return sum / time.Duration(len(r.lat))
}

// Merge combines results of the same load measured in several slices (for
// instance interleaved with other measurements, so that a change in the
// machine's background load affects them alike) into one: counts and
// elapsed times add up, latencies are pooled. Clients and Offered are the
// first result's.
func Merge(rs ...Result) Result {
	if len(rs) == 0 {
		return Result{}
	}
	m := Result{Clients: rs[0].Clients, Offered: rs[0].Offered}
	n := 0
	for _, r := range rs {
		n += len(r.lat)
	}
	m.lat = make([]time.Duration, 0, n)
	for _, r := range rs {
		m.Elapsed += r.Elapsed
		m.Requests += r.Requests
		m.Errors += r.Errors
		if m.FirstErr == nil {
			m.FirstErr = r.FirstErr
		}
		m.lat = append(m.lat, r.lat...)
	}
	slices.Sort(m.lat)
	return m
}
