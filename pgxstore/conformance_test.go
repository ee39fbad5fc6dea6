package pgxstore_test

import (
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
	"github.com/idemkit/idem/storetest"
)

// TestConformance runs the shared store contract against real PostgreSQL,
// on the real database clock. Each subtest gets its own schema.
func TestConformance(t *testing.T) {
	sharedPool(t)
	storetest.Run(t, func(t testing.TB) idem.Store {
		return newStore(t, pgxstore.Options{})
	}, storetest.Features{
		Extend:   true,
		Sweep:    true,
		Inspect:  true,
		MinLease: 50 * time.Millisecond,
	})
}
