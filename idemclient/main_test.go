package idemclient

import (
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	leakcheck.VerifyTestMain(m)
}
