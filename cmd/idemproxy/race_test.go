//go:build race

package main

// raceEnabled builds the end-to-end binary with -race too.
const raceEnabled = true
