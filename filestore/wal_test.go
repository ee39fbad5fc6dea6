package filestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/idemkit/idem"
)

// crash abandons s as a killed process would: the files are closed without
// a checkpoint and without the clean-close mark, so the next Open must
// recover the log. Close then does nothing more.
func crash(t *testing.T, s *Store) {
	t.Helper()
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.walErr = errors.New("crashed") // Close must not checkpoint
	if err := s.w.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
}

// reopen opens a crashed or closed store's files again, closed at cleanup.
func reopen(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open after a crash: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestWALRecovery: acknowledged changes that only the log holds survive a
// crash, deletions included, and Open writes them into the database.
func TestWALRecovery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := mustBegin(t, s, "done", fp1, time.Hour, idem.Acquired)
	if err := s.Complete(ctx, "done", b.Fence, []byte("result"), time.Hour); err != nil {
		t.Fatal(err)
	}
	r := mustBegin(t, s, "released", fp1, time.Hour, idem.Acquired)
	if err := s.Release(ctx, "released", r.Fence); err != nil {
		t.Fatal(err)
	}
	held := mustBegin(t, s, "held", fp1, time.Hour, idem.Acquired)
	if s.checkpoints.Load() != 0 {
		t.Fatal("a checkpoint ran: the test needs the records in the log only")
	}
	crash(t, s)

	s = reopen(t, path)
	if got := mustBegin(t, s, "done", fp1, time.Hour, idem.Replay); string(got.Result) != "result" {
		t.Fatalf("replay after recovery = %q", got.Result)
	}
	if got := mustBegin(t, s, "held", fp1, time.Hour, idem.InFlight); got.Fence != held.Fence {
		t.Fatalf("fence after recovery %d, want %d", got.Fence, held.Fence)
	}
	if got := mustBegin(t, s, "released", fp1, time.Hour, idem.Acquired); got.Fence <= held.Fence {
		t.Fatalf("a fresh fence after recovery (%d) is not above every fence issued before (%d)", got.Fence, held.Fence)
	}
	if s.Len() != 3 {
		t.Fatalf("Len after recovery = %d, want 3", s.Len())
	}
	s.omu.RLock()
	n := len(s.overlay)
	s.omu.RUnlock()
	if n != 1 { // only the Begin made after reopening
		t.Fatalf("%d records in the overlay after recovery, want 1", n)
	}
}

// TestWALTornFrame: a frame torn by a crash (its CRC fails) and everything
// after it are ignored; the frames before it are recovered.
func TestWALTornFrame(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, "first", fp1, time.Hour, idem.Acquired)
	off := s.w.off
	mustBegin(t, s, "torn", fp1, time.Hour, idem.Acquired)
	end := s.w.off
	crash(t, s)
	f, err := os.OpenFile(walPath(path), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Flip one byte in the middle of the second frame.
	if _, err := f.WriteAt([]byte{0xAA}, (off+end)/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s = reopen(t, path)
	mustBegin(t, s, "first", fp1, time.Hour, idem.InFlight)
	mustBegin(t, s, "torn", fp1, time.Hour, idem.Acquired)
}

// TestWALCheckpoints: with a small log, checkpoints run as it fills and by
// record count; every record stays readable across them, across a crash
// after them, and across a clean close, after which the database alone (as
// a version without the log reads it) holds every record.
func TestWALCheckpoints(t *testing.T) {
	defer setWAL(16<<10, 8<<10, 20)()
	path := filepath.Join(t.TempDir(), "idem.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 300
	for i := range n {
		k := "k" + strconv.Itoa(i)
		b := mustBegin(t, s, k, fp1, time.Hour, idem.Acquired)
		if i%3 != 0 {
			if err := s.Complete(ctx, k, b.Fence, bytes.Repeat([]byte{'r'}, i), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}
	if s.checkpoints.Load() < 5 {
		t.Fatalf("%d checkpoints for %d records with a 16 KiB log", s.checkpoints.Load(), n)
	}
	check := func(s *Store) {
		t.Helper()
		for i := range n {
			k := "k" + strconv.Itoa(i)
			rec, ok, err := s.Get(ctx, k)
			if err != nil || !ok {
				t.Fatalf("Get(%s) = %v, %v", k, ok, err)
			}
			if i%3 != 0 && (rec.State != idem.StateCompleted || len(rec.Result) != i) {
				t.Fatalf("Get(%s) = %v with %d bytes", k, rec.State, len(rec.Result))
			}
		}
		if s.Len() != n {
			t.Fatalf("Len = %d, want %d", s.Len(), n)
		}
	}
	check(s)
	crash(t, s)
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(metaBucket).Get(metaFormat); binary.BigEndian.Uint64(v) != fileFormat {
			t.Errorf("format after a clean close = %x, want %d", v, fileFormat)
		}
		if got := tx.Bucket(recordsBucket).Stats().KeyN; got != n {
			t.Errorf("the database holds %d records after a clean close, want %d", got, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestWALLargeBatch: a change larger than the whole log is written into
// the database directly, and survives a crash.
func TestWALLargeBatch(t *testing.T) {
	defer setWAL(16<<10, 8<<10, 4096)()
	path := filepath.Join(t.TempDir(), "idem.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	small := mustBegin(t, s, "small", fp1, time.Hour, idem.Acquired)
	b := mustBegin(t, s, "big", fp1, time.Hour, idem.Acquired)
	big := bytes.Repeat([]byte("x"), 64<<10)
	if err := s.Complete(ctx, "big", b.Fence, big, time.Hour); err != nil {
		t.Fatal(err)
	}
	if s.checkpoints.Load() == 0 {
		t.Fatal("the large result did not go to the database")
	}
	crash(t, s)
	s = reopen(t, path)
	if got := mustBegin(t, s, "big", fp1, time.Hour, idem.Replay); !bytes.Equal(got.Result, big) {
		t.Fatalf("large result after a crash: %d bytes", len(got.Result))
	}
	if got := mustBegin(t, s, "small", fp1, time.Hour, idem.InFlight); got.Fence != small.Fence {
		t.Fatalf("fence %d, want %d", got.Fence, small.Fence)
	}
}

// TestWALMissing: a database that did not close cleanly refuses to open
// without its log, which may hold records it lacks; one that closed cleanly
// opens and makes a new log.
func TestWALMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, "k", fp1, time.Hour, idem.Acquired)
	crash(t, s)
	if err := os.Remove(walPath(path)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open without the log after a crash = %v, want ErrCorrupt", err)
	}

	path = filepath.Join(t.TempDir(), "clean.db")
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, "k", fp1, time.Hour, idem.Acquired)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(walPath(path)); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, path)
	mustBegin(t, s, "k", fp1, time.Hour, idem.InFlight)
	if st, err := os.Stat(walPath(path)); err != nil || st.Size() != walSize {
		t.Fatalf("new log: %v, %v", st, err)
	}
}

// TestWALWriteFails: once a log write fails, every later write fails as
// unavailable (the state of the file is unknown), reads go on, and nothing
// is acknowledged that the log does not hold.
func TestWALWriteFails(t *testing.T) {
	s := open(t, Options{})
	ctx := context.Background()
	b := mustBegin(t, s, "k", fp1, time.Hour, idem.Acquired)
	ro, err := os.Open(walPath(s.path)) // read-only: the next write fails
	if err != nil {
		t.Fatal(err)
	}
	s.commitMu.Lock()
	orig := s.w.f
	s.w.f = ro
	s.commitMu.Unlock()
	orig.Close()
	if err := s.Complete(ctx, "k", b.Fence, []byte("r"), time.Hour); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Complete with a failing log = %v, want ErrStoreUnavailable", err)
	}
	if _, err := s.Begin(ctx, "other", fp1, time.Hour); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin after a failed log write = %v, want ErrStoreUnavailable", err)
	}
	if rec, ok, err := s.Get(ctx, "k"); err != nil || !ok || rec.State != idem.StateInProgress {
		t.Fatalf("Get after a failed log write = %v, %v, %v; want the record in progress", rec, ok, err)
	}
}

// TestReadFrames: frames are read from the start while each is whole and
// numbered one after the other from the checkpoint's number; a frame left
// from before the last checkpoint (a lower number) ends the log.
func TestReadFrames(t *testing.T) {
	defer setWAL(4<<10, 2<<10, 4096)()
	w, err := openWAL(filepath.Join(t.TempDir(), "x-wal"), false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.f.Close()
	w.epoch = 77
	var b []byte
	b = encodeFrame(b, 77, 5, 1, 100, map[string][]byte{"a": []byte("1")})
	b = encodeFrame(b, 77, 6, 1, 101, map[string][]byte{"a": nil})
	b = encodeFrame(b, 77, 3, 9, 999, map[string][]byte{"stale": []byte("x")}) // from before a checkpoint
	if err := w.append(b); err != nil {
		t.Fatal(err)
	}
	fs, err := w.readFrames(4)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 2 || fs[0].lsn != 5 || fs[1].lsn != 6 || fs[1].fence != 101 || fs[1].changes[0].val != nil {
		t.Fatalf("frames %+v", fs)
	}
	if fs, _ := w.readFrames(5); len(fs) != 0 {
		t.Fatalf("a log whose first frame is not the checkpoint's next gave %d frames", len(fs))
	}
	w.epoch = 78 // another database's log
	if fs, _ := w.readFrames(4); len(fs) != 0 {
		t.Fatalf("frames of another epoch were read: %d", len(fs))
	}
}

// TestWALOtherDatabase: a log left next to a new database (the old one was
// deleted, or replaced by a copy) is never read into it.
func TestWALOtherDatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "idem.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, "from-the-old-file", fp1, time.Hour, idem.Acquired)
	crash(t, s)
	// A second database, crashed with its own log, takes the first one's
	// place next to the first one's log.
	other := filepath.Join(dir, "other.db")
	s2, err := Open(other, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s2, "from-the-other-file", fp1, time.Hour, idem.Acquired)
	crash(t, s2)
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, path)
	if _, ok, _ := s.Get(context.Background(), "from-the-old-file"); ok {
		t.Fatal("a record of another database's log was read")
	}
	if _, ok, _ := s.Get(context.Background(), "from-the-other-file"); ok {
		t.Fatal("the other database's record came back without its log")
	}
}

// setWAL sets the log's sizes for a test and returns the restore.
func setWAL(size, ckptBytes int64, ckptRecords int) func() {
	s, b, r := walSize, walCheckpointBytes, walCheckpointRecords
	walSize, walCheckpointBytes, walCheckpointRecords = size, ckptBytes, ckptRecords
	return func() { walSize, walCheckpointBytes, walCheckpointRecords = s, b, r }
}

// FuzzDecodeFrame: any bytes decode as a frame or are refused without a
// panic, and a frame decodes to what was encoded.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(encodeFrame(nil, 42, 1, 2, 3, map[string][]byte{"k": []byte("v"), "d": nil}), "key", []byte("value"))
	f.Add([]byte{0, 0, 0, 40, 1, 2, 3, 4}, "", []byte(nil))
	f.Fuzz(func(t *testing.T, data []byte, key string, val []byte) {
		if fr, n, ok := decodeFrame(data); ok {
			if n > len(data) || n < frameHead+minPayload {
				t.Fatalf("decoded %d bytes of %d", n, len(data))
			}
			again := encodeFrame(nil, fr.epoch, fr.lsn, fr.count, fr.fence, stagedOf(fr))
			if g, _, ok := decodeFrame(again); !ok || len(g.changes) != len(stagedOf(fr)) {
				t.Fatalf("re-encoded frame does not decode")
			}
		}
		if key == "" {
			return
		}
		staged := map[string][]byte{key: val}
		if val == nil {
			staged[key] = nil
		}
		b := encodeFrame(nil, 6, 7, 8, 9, staged)
		fr, n, ok := decodeFrame(b)
		if !ok || n != len(b) || fr.epoch != 6 || fr.lsn != 7 || fr.count != 8 || fr.fence != 9 || len(fr.changes) != 1 ||
			string(fr.changes[0].key) != key || !bytes.Equal(fr.changes[0].val, val) || (val == nil) != (fr.changes[0].val == nil) {
			t.Fatalf("round trip of %q=%q: %+v, %d, %v", key, val, fr, n, ok)
		}
	})
}

func stagedOf(f frame) map[string][]byte {
	m := make(map[string][]byte, len(f.changes))
	for _, c := range f.changes {
		m[string(c.key)] = c.val
	}
	return m
}
