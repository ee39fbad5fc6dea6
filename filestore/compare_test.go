//go:build backendcompare

// This file holds the measurement behind the choice of bbolt for filestore
// (see docs/filestore.md). It is behind a build tag so that ordinary test runs
// do not compile the SQLite driver:
//
//	go test -tags backendcompare -run '^$' -bench BenchmarkBackend -benchtime 3s ./filestore/
package filestore

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
	mu    sync.Mutex
	q     []*gcReq
	busy  bool
	flush func([]*gcReq) error
}

type gcReq struct {
	k, v []byte
	err  error
	ch   chan bool // true: you lead; false: done
}

func (g *groupCommitter) do(r *gcReq) error {
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

// runPairs runs b.N begin+complete pairs (two durable writes each) from 32
// goroutines and reports pairs/s and writes per commit.
func runPairs(b *testing.B, put func(k, v []byte) error, commits *atomic.Int64) {
	var seq atomic.Int64
	begin := make([]byte, 80)
	done := make([]byte, 300)
	b.SetParallelism(32 / runtime.GOMAXPROCS(0)) // 32 goroutines
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := []byte(fmt.Sprintf("scope:key-%d", seq.Add(1)))
			if err := put(k, begin); err != nil {
				b.Error(err)
				return
			}
			if err := put(k, done); err != nil {
				b.Error(err)
				return
			}
		}
	})
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "pairs/s")
	if commits != nil && commits.Load() > 0 {
		b.ReportMetric(float64(2*b.N)/float64(commits.Load()), "writes/commit")
	}
}

func BenchmarkBackend(b *testing.B) {
	b.Run("bbolt-Batch-default", func(b *testing.B) {
		db := openBolt(b)
		runPairs(b, func(k, v []byte) error {
			return db.Batch(func(tx *bolt.Tx) error { return tx.Bucket([]byte("r")).Put(k, v) })
		}, nil)
	})
	b.Run("bbolt-Batch-1ms", func(b *testing.B) {
		db := openBolt(b)
		db.MaxBatchDelay = time.Millisecond
		runPairs(b, func(k, v []byte) error {
			return db.Batch(func(tx *bolt.Tx) error { return tx.Bucket([]byte("r")).Put(k, v) })
		}, nil)
	})
	b.Run("bbolt-groupcommit", func(b *testing.B) {
		db := openBolt(b)
		var commits atomic.Int64
		g := &groupCommitter{flush: func(rs []*gcReq) error {
			commits.Add(1)
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
		runPairs(b, func(k, v []byte) error { return g.do(&gcReq{k: k, v: v, ch: make(chan bool, 1)}) }, &commits)
	})
	b.Run("sqlite-WAL-FULL-groupcommit", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "s.db")
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		db.SetMaxOpenConns(1)
		if _, err := db.Exec(`CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID`); err != nil {
			b.Fatal(err)
		}
		var commits atomic.Int64
		g := &groupCommitter{flush: func(rs []*gcReq) error {
			commits.Add(1)
			tx, err := db.Begin()
			if err != nil {
				return err
			}
			st, err := tx.Prepare(`INSERT INTO kv(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`)
			if err != nil {
				tx.Rollback()
				return err
			}
			for _, r := range rs {
				if _, err := st.Exec(r.k, r.v); err != nil {
					tx.Rollback()
					return err
				}
			}
			st.Close()
			return tx.Commit()
		}}
		runPairs(b, func(k, v []byte) error { return g.do(&gcReq{k: k, v: v, ch: make(chan bool, 1)}) }, &commits)
	})
}

func openBolt(b *testing.B) *bolt.DB {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "b.db"), 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("r")); return err }); err != nil {
		b.Fatal(err)
	}
	return db
}
