//go:build soak

package faults

// soakTag is set by the soak build tag (scripts/test.sh adds -tags=soak
// when IDEM_SOAK=1): run the long form of every scenario.
const soakTag = true
