package backendtest

import (
	mrand "math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// FreePort returns a loopback TCP port that was free a moment ago, below
// the kernel's ephemeral range, and that no earlier call in this process
// returned.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, _ := PortRange(t, 1)
	return lo
}

// PortRange returns n consecutive loopback ports, free a moment ago, below
// the kernel's ephemeral range (so outgoing connections of concurrently
// running tests cannot take them), for an orchestrator's ORCH_PORT_MIN/MAX.
// Different test binaries get different ranges with high probability, and
// one process never hands out a port twice while the test holding it runs;
// the range is given back when that test's cleanups have run (it is taken
// before the test creates engines on it, so it is returned after they are
// gone), so repeated runs (-count) do not run out.
func PortRange(t testing.TB, n int) (lo, hi int) {
	t.Helper()
	return PortRangeIn(t, n, 10000, 32000)
}

// PortRangeIn is PortRange within [floor, ceiling): a test that runs beside
// the others (the soak) takes its ports from a band of its own.
func PortRangeIn(t testing.TB, n, floor, ceiling int) (lo, hi int) {
	t.Helper()
	for range 200 {
		lo = floor + mrand.IntN(ceiling-floor-n)
		if rangeFree(lo, n) {
			t.Cleanup(func() { releaseRange(lo, n) })
			return lo, lo + n - 1
		}
	}
	t.Fatalf("no %d free consecutive ports in [%d, %d)", n, floor, ceiling)
	return 0, 0
}

func rangeFree(lo, n int) bool {
	ports.Lock()
	defer ports.Unlock()
	for p := lo; p < lo+n; p++ {
		if ports.given[p] {
			return false
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		ln.Close()
	}
	for p := lo; p < lo+n; p++ {
		ports.given[p] = true
	}
	return true
}

func releaseRange(lo, n int) {
	ports.Lock()
	defer ports.Unlock()
	for p := lo; p < lo+n; p++ {
		delete(ports.given, p)
	}
}
