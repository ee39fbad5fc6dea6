//go:build !soak

package faults

const soakTag = false
