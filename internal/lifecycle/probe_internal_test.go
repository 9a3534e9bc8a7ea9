package lifecycle

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLearnBoot(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name          string
		guess, at     time.Duration
		caughtAtGuess bool
		want          time.Duration
	}{
		{"first boot: halfway to the success", 0, 25 * ms, false, 12500 * time.Microsecond},
		{"caught by the guess: a little earlier", 16 * ms, 16 * ms, true, 15 * ms},
		{"guess too early: halfway to the success", 10 * ms, 25 * ms, false, 17500 * time.Microsecond},
		{"guess past the steady phase is reset", 2 * time.Second, 30 * ms, false, 15 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manager{}
			m.learnBoot(tc.guess, tc.at, tc.caughtAtGuess)
			require.Equal(t, tc.want, time.Duration(m.bootGuess.Load()))
		})
	}
}
