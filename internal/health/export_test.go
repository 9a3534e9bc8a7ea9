package health

// SetOnResult makes c report every probe result to f (benchmarks).
func SetOnResult(c *Checker, f func(engineID string, ok bool)) { c.onResult = f }
