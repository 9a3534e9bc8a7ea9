package registry

import (
	"errors"
	"fmt"

	"github.com/september/bap-engine/internal/bap"
)

// PublicErr maps a store error to what an API caller sees: an unavailable
// database is DATABASE_UNAVAILABLE and a lost lease ENGINE_BUSY, both
// retryable, with the error kept as their cause. Any other error stays
// internal. what, when not empty, names the step that failed.
func PublicErr(what string, err error) error {
	if what != "" {
		err = fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case errors.Is(err, ErrUnavailable):
		return bap.Errorf(bap.CodeDatabaseUnavailable, "The database is unavailable; retry shortly.").Wrap(err)
	case errors.Is(err, ErrFenced):
		return bap.Errorf(bap.CodeEngineBusy, "The engine is changing state; retry shortly.").Wrap(err)
	}
	return err
}
