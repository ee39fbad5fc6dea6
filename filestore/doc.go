// Package filestore is the embedded durable idem.Store: records live in a
// local file and its write-ahead log, survive kill -9 and power loss, and
// need no server. It is the store behind `idemproxy -store file:PATH`.
//
// The file is a bbolt B+tree (pure Go, no cgo); next to it, PATH-wal is the
// write-ahead log, a file of fixed size (4 MiB). Every call that changes a
// record returns only after its change is synced to disk: the batch of
// changes is appended to the log as one checksummed frame and synced with
// one fdatasync, into blocks that already exist, so the sync flushes no file
// metadata. The changed records are then kept in memory as well (the
// overlay), where reads find them first. Once the overlay holds 1,024
// records or the log 2 MiB, the commit leader checkpoints: it writes the
// overlay into the B+tree in one bbolt transaction (synced: the data pages,
// then the meta page that makes them current), and the log is written from
// its start again. A record whose call returned is never lost, and a crash at
// any instant leaves a consistent state: Open reads the frames that follow
// the last checkpoint, stopping at the first that is torn (its checksum
// fails) or older (its sequence number), and writes them into the B+tree.
// Records are stored in a small versioned binary encoding with a CRC-32C.
//
// A clean Close checkpoints and marks the file as complete without its log;
// while the store is open, or after a crash, the file's format number says
// that the log must be read, so that an older version (which does not read
// it) refuses the file instead of missing records. Keep the two files
// together; Open refuses a file that needs its log when the log is missing.
//
// # Group commit
//
// Concurrent writers share commits: the writer that finds no commit running
// becomes the leader and commits everything queued in one log frame and one
// sync; writers that arrive meanwhile queue up for the next one. A lone
// writer pays one sync and no added delay; under load the batch grows with
// the concurrency, so N concurrent requests cost about one sync instead of
// N. Options.MaxBatchDelay can trade latency for larger batches.
//
// A call whose context ends while it is queued behind a commit (a slow
// fsync, a large batch) returns the context's error at once and changes
// nothing; if it was next in line to lead, it passes that on. Once a leader
// has taken the call into a batch, the call waits for that batch's commit,
// at most one transaction and one sync (plus Options.MaxBatchDelay), so
// that its result always says whether its change is durable: a change
// applied before the context ended is reported as done, one that was not
// is reported with the context's error and is not in the file.
//
// Calls that change nothing pay no sync: Begin reads a snapshot first and
// answers a replay, an in-flight conflict or a mismatch from it; Complete,
// Release and Extend refuse a stale fence from it. Only when the snapshot
// says a write is needed does the call join a commit, where the decision is
// made again inside the commit, so every step stays atomic.
//
// # Clock, fences and expiry
//
// Deadlines are stored as wall-clock instants (Options.Now, default
// time.Now), so leases and retentions keep running across restarts. A fresh
// record's fence is above every fence the file has issued and at least the
// clock in Unix microseconds; the highest fence is kept in the file, so
// fences keep growing across deletions and restarts. A completed record past
// retention, or an in-progress record abandoned for longer than
// Options.Abandon, is dead: it behaves as absent at once, and Sweep (which
// the owner schedules; the store starts no goroutines) or a later Begin of
// its key removes it.
//
// # Budgets
//
// Options.MaxRecords, MaxBytes (keys plus encoded records, and
// CompletionReserve per in-progress record) and the per-scope quotas
// MaxRecordsPerScope / MaxBytesPerScope are enforced inside the write
// transaction: Begin of a new key (after removing dead records) and a
// Complete whose result does not fit return idem.ErrStoreFull and change
// nothing; replays, in-flight answers, mismatches and takeovers are never
// refused. The counts are rebuilt from the file at Open (key and value
// lengths only), so they are right after any crash. The file is larger
// than MaxBytes (page fill; it never shrinks, freed pages are reused).
//
// # Processes
//
// Open takes an exclusive lock on the file (flock), so a second store in
// this or another process cannot open it while the first is open; Open waits
// up to Options.LockTimeout and then fails with ErrLocked. Wait's wake-ups
// are in-process: a Store sees its own completions at once.
package filestore
