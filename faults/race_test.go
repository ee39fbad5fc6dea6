//go:build race

package faults

// raceEnabled builds the idemproxy under test with -race too.
const raceEnabled = true
