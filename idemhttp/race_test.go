//go:build race

package idemhttp_test

// raceEnabled: sync.Pool drops items at random under -race, so allocation
// budgets are not checked.
const raceEnabled = true
