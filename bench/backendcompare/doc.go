// Package backendcompare holds BenchmarkBackend (build tag backendcompare):
// the raw bbolt against SQLite comparison behind filestore's choice of
// backend (docs/filestore.md). It is in the bench module so that no module a
// user imports requires modernc.org/sqlite.
package backendcompare
