//go:build backendcompare

// This file holds the measurement behind the choice of backend for
// filestore (see docs/filestore.md and docs/bench/filestore.md). It is
// behind a build tag so that ordinary test runs do not compile the SQLite
// driver:
//
//	cd bench && go test -tags backendcompare -run '^$' -bench BenchmarkBackend -benchtime 1s ./backendcompare/
//
// It lives in the bench module (not in filestore's) so that no module a user
// imports requires modernc.org/sqlite.
//
// Every variant runs 32 goroutines, each writing a new key and then
// overwriting it with a larger value (a begin and a complete: two durable
// writes), through the same leader/follower group commit.
package backendcompare

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	_ "modernc.org/sqlite"
)

// groupCommitter is a minimal leader/follower group commit: the first writer
// to find no commit running becomes the leader and flushes everything queued;
// writers that arrive meanwhile queue up and share the next flush.
type groupCommitter struct {
	mu      sync.Mutex
	q       []*gcReq
	busy    bool
	flush   func([]*gcReq) error
	commits atomic.Int64
}

type gcReq struct {
	k, v []byte
	err  error
	ch   chan bool // true: you lead; false: done
}

func (g *groupCommitter) put(k, v []byte) error {
	r := &gcReq{k: k, v: v, ch: make(chan bool, 1)}
	g.mu.Lock()
	g.q = append(g.q, r)
	if g.busy {
		g.mu.Unlock()
		if !<-r.ch {
			return r.err
		}
	} else {
		g.busy = true
		g.mu.Unlock()
	}
	g.mu.Lock()
	batch := g.q
	g.q = nil
	g.mu.Unlock()
	g.commits.Add(1)
	err := g.flush(batch)
	for _, x := range batch {
		x.err = err
		if x != r {
			x.ch <- false
		}
	}
	g.mu.Lock()
	if len(g.q) > 0 {
		next := g.q[0]
		g.mu.Unlock()
		next.ch <- true
	} else {
		g.busy = false
		g.mu.Unlock()
	}
	return err
}

// runPairs runs b.N begin+complete pairs from 32 goroutines and reports
// pairs/s, process CPU time per pair and writes per commit.
func runPairs(b *testing.B, g *groupCommitter) {
	var seq atomic.Int64
	begin := make([]byte, 80)
	done := make([]byte, 300)
	b.SetParallelism(32 / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := []byte(fmt.Sprintf("7:tenant1key-%d", seq.Add(1)))
			if err := g.put(k, begin); err != nil {
				b.Error(err)
				return
			}
			if err := g.put(k, done); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	b.ReportMetric(float64(2*b.N)/float64(g.commits.Load()), "writes/commit")
}

func BenchmarkBackend(b *testing.B) {
	for _, nosync := range []bool{false, true} {
		name := "bbolt"
		if nosync {
			name += "-nosync"
		}
		b.Run(name, func(b *testing.B) { runPairs(b, boltCommitter(b, nosync)) })
	}
	for _, sync := range []string{"FULL", "OFF"} {
		b.Run("sqlite-WAL-sync"+sync, func(b *testing.B) { runPairs(b, sqliteCommitter(b, sync)) })
	}
}

// boltCommitter writes through bbolt, configured as filestore configures it.
func boltCommitter(b *testing.B, nosync bool) *groupCommitter {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "b.db"), 0o600, &bolt.Options{
		Timeout: time.Second, NoSync: nosync, NoFreelistSync: true,
		FreelistType: bolt.FreelistMapType, NoStatistics: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("r")); return err }); err != nil {
		b.Fatal(err)
	}
	return &groupCommitter{flush: func(rs []*gcReq) error {
		return db.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket([]byte("r"))
			for _, r := range rs {
				if err := bk.Put(r.k, r.v); err != nil {
					return err
				}
			}
			return nil
		})
	}}
}

// sqliteCommitter writes through SQLite in WAL mode with the given
// synchronous setting, one connection, one transaction per batch.
func sqliteCommitter(b *testing.B, sync string) *groupCommitter {
	path := filepath.Join(b.TempDir(), "s.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous("+sync+")&_pragma=busy_timeout(5000)")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID`); err != nil {
		b.Fatal(err)
	}
	return &groupCommitter{flush: func(rs []*gcReq) error {
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		defer tx.Rollback()
		st, err := tx.Prepare(`INSERT INTO kv(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, r := range rs {
			if _, err := st.Exec(r.k, r.v); err != nil {
				return err
			}
		}
		return tx.Commit()
	}}
}
