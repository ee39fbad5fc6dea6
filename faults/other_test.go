//go:build !linux

package faults

// The scenarios need Linux (Pdeathsig, SIGSTOP of a child, runuser-free
// credentials for PostgreSQL); elsewhere only the checker's tests run.
const scenariosSupported = false
