// Package testenv gates tests on the real services the test command starts
// (scripts/test.sh): locally a missing service skips the test; under CI=true
// it fails it, so CI can never pass by skipping.
package testenv

import (
	"os"
	"testing"
)

// Need returns the value of the environment variable name. When it is unset
// the test is skipped, or failed when CI=true.
func Need(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not set and CI=true: the test command must start this service", name)
	}
	t.Skipf("%s not set; run scripts/test.sh to start the service", name)
	return ""
}
