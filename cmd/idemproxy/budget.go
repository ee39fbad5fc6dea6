package main

import (
	"fmt"

	"github.com/idemkit/idem/filestore"
	"github.com/idemkit/idem/memstore"
)

// Budget defaults of the memory: and file: stores (docs/idemproxy.md,
// "Budgets"). Redis and PostgreSQL are bounded by the server's own limits.
const (
	// No record limit by default: the byte budget bounds the records
	// (every record counts its overhead), and a record limit would cap the
	// sustained rate of new keys at limit/retention (100,000 records over
	// 24 h is about one new key per second).
	defaultMemRecords  = 0
	defaultMemBytes    = 256 << 20
	defaultFileRecords = 0
	defaultFileBytes   = 4 << 30
	// Half the budget per scope: one caller cannot fill the store for all,
	// and a single-tenant deployment still gets half of it (set
	// -max-scope-share 1 to give it all).
	defaultScopeShare = 0.5
)

// storeBudget is the resolved -max-records, -max-bytes and -max-scope-share.
// records and bytes are 0 for the store's default and -1 for no limit;
// share is 0 for the default share.
type storeBudget struct {
	records, bytes int64
	share          float64
}

// limits returns the store-wide and per-scope limits for a store whose
// defaults are defRecords and defBytes; 0 means no limit.
func (b storeBudget) limits(defRecords, defBytes int64) (records, bytes, scopeRecords, scopeBytes int64) {
	pick := func(v, def int64) int64 {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 0
		}
		return v
	}
	records, bytes = pick(b.records, defRecords), pick(b.bytes, defBytes)
	share := b.share
	if share == 0 {
		share = defaultScopeShare
	}
	if share < 1 {
		if records > 0 {
			scopeRecords = max(1, int64(float64(records)*share))
		}
		if bytes > 0 {
			scopeBytes = max(1, int64(float64(bytes)*share))
		}
	}
	return records, bytes, scopeRecords, scopeBytes
}

// memOptions returns the memstore options of the budget.
func (b storeBudget) memOptions() memstore.Options {
	r, by, sr, sb := b.limits(defaultMemRecords, defaultMemBytes)
	return memstore.Options{MaxRecords: int(r), MaxBytes: by, MaxRecordsPerScope: int(sr), MaxBytesPerScope: sb}
}

// fileOptions returns the filestore options of the budget.
func (b storeBudget) fileOptions() filestore.Options {
	r, by, sr, sb := b.limits(defaultFileRecords, defaultFileBytes)
	return filestore.Options{MaxRecords: int(r), MaxBytes: by, MaxRecordsPerScope: int(sr), MaxBytesPerScope: sb}
}

// describe returns the budget of a store with the given defaults, for the
// startup log.
func (b storeBudget) describe(defRecords, defBytes int64) string {
	r, by, sr, sb := b.limits(defRecords, defBytes)
	n := func(v int64) string {
		if v == 0 {
			return "off"
		}
		return fmt.Sprint(v)
	}
	return fmt.Sprintf("max_records=%s max_bytes=%s per_scope_records=%s per_scope_bytes=%s", n(r), n(by), n(sr), n(sb))
}
