package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go.uber.org/goleak"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/pgxstore"
)

type env struct {
	dsn, schema string
	pool        *pgxpool.Pool
	store       *pgxstore.Store
}

var schemaSeq atomic.Int64

// newEnv gives the test a fresh schema on the real PostgreSQL
// (IDEM_POSTGRES_DSN), dropped at the end.
func newEnv(t testing.TB) *env {
	t.Helper()
	dsn := testenv.Need(t, "IDEM_POSTGRES_DSN")
	schema := fmt.Sprintf("notif_%d_%d", time.Now().UnixNano(), schemaSeq.Add(1))
	pool, store, err := open(context.Background(), dsn, schema, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, schema))
		pool.Close()
	})
	return &env{dsn: dsn, schema: schema, pool: pool, store: store}
}

func (e *env) consumer() *Consumer { return &Consumer{Pool: e.pool, Store: e.store, Scope: "mailer"} }

// rows counts the outbox rows per event id.
func (e *env) rows(t testing.TB) map[string]int {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT event_id, count(*) FROM notification_outbox GROUP BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	var id string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { got[id] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

func (e *env) exactlyOnce(t testing.TB, ids ...string) {
	t.Helper()
	got := e.rows(t)
	for _, id := range ids {
		if got[id] != 1 {
			t.Errorf("event %s has %d outbox rows, want 1", id, got[id])
		}
	}
	if len(got) != len(ids) {
		t.Errorf("%d events have outbox rows, want %d", len(got), len(ids))
	}
}

func ev(id string) Event { return Event{ID: id, To: id + "@example.com", Template: "welcome"} }

func TestRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	schema := e.schema + "_demo"
	t.Cleanup(func() {
		_, _ = e.pool.Exec(context.Background(), fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, schema))
	})
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"-dsn", e.dsn, "-schema", schema, "-events", "40", "-seed", "7"}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "outbox rows sent 40, notifications the provider delivered 40\n") {
		t.Fatalf("output:\n%s", out.String())
	}
	if err := run(context.Background(), []string{"-dsn", ""}, &out, &errb); err == nil {
		t.Fatal("no error without a DSN")
	}
}

func TestCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.consumer()
	crashed := false
	c.beforeCommit = func() error {
		if !crashed {
			crashed = true
			return errCrash
		}
		return nil
	}
	if st, err := c.Handle(ctx, ev("a")); st.Ack() || !errors.Is(err, errCrash) {
		t.Fatalf("crashed delivery: %v %v", st, err)
	}
	if st, err := c.Handle(ctx, ev("a")); st != idemmsg.Executed || err != nil {
		t.Fatalf("redelivery: %v %v", st, err)
	}
	e.exactlyOnce(t, "a")
}

func TestCrashAfterCommitBeforeAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.consumer()
	if st, err := c.Handle(ctx, ev("a")); st != idemmsg.Executed || err != nil {
		t.Fatal(st, err)
	}
	// The ack was lost; the broker redelivers.
	if st, err := c.Handle(ctx, ev("a")); st != idemmsg.Duplicate || err != nil {
		t.Fatalf("redelivery: %v %v", st, err)
	}
	e.exactlyOnce(t, "a")
}

func TestHandlerErrorRedelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.consumer()
	// The insert fails (a constraint the row violates, as a transient
	// database failure would), so the transaction and the claim roll back.
	if _, err := e.pool.Exec(ctx, `ALTER TABLE notification_outbox ADD CONSTRAINT no_a CHECK (event_id <> 'a')`); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Handle(ctx, ev("a")); st != idemmsg.Failed || err == nil {
		t.Fatalf("%v %v", st, err)
	}
	if _, err := e.pool.Exec(ctx, `ALTER TABLE notification_outbox DROP CONSTRAINT no_a`); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Handle(ctx, ev("a")); st != idemmsg.Executed || err != nil {
		t.Fatalf("redelivery: %v %v", st, err)
	}
	e.exactlyOnce(t, "a")
}

// Two consumers get the same event at once. The second's claim waits for the
// first transaction: a commit makes it a duplicate, a rollback lets it
// process the event.
func TestConcurrentSameEvent(t *testing.T) {
	t.Parallel()
	for _, firstCommits := range []bool{true, false} {
		t.Run(fmt.Sprintf("first commits %v", firstCommits), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			ctx := context.Background()
			first, second := e.consumer(), e.consumer()
			holding, release := make(chan struct{}), make(chan struct{})
			first.beforeCommit = func() error {
				close(holding)
				<-release
				if !firstCommits {
					return errCrash
				}
				return nil
			}
			var st1 idemmsg.Status
			var wg sync.WaitGroup
			wg.Go(func() { st1, _ = first.Handle(ctx, ev("a")) })
			<-holding
			done := make(chan idemmsg.Status)
			go func() {
				st, _ := second.Handle(ctx, ev("a"))
				done <- st
			}()
			select {
			case st := <-done:
				t.Fatalf("the second claim did not wait for the first transaction: %v", st)
			case <-time.After(200 * time.Millisecond):
			}
			close(release)
			st2 := <-done
			wg.Wait()
			want1, want2 := idemmsg.Executed, idemmsg.Duplicate
			if !firstCommits {
				want1, want2 = idemmsg.NotRun, idemmsg.Executed
			}
			if st1 != want1 || st2 != want2 {
				t.Fatalf("statuses %v, %v; want %v, %v", st1, st2, want1, want2)
			}
			e.exactlyOnce(t, "a")
		})
	}
}

// Property (transactional form): 10,000 deliveries with 30% duplicates,
// four consumers handling batches of up to 100 concurrently, one batch in
// ten crashing before its commit and redelivered, duplicates both within a
// batch, across concurrent batches and after redelivery → exactly one
// outbox row per distinct event, and every notification delivered once.
func TestPropertyTransactional(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const total = 10_000
	rng := rand.New(rand.NewPCG(8, 9))
	var evs []Event
	var distinct []string
	for range total {
		if len(distinct) > 0 && rng.IntN(100) < 30 {
			evs = append(evs, ev(distinct[rng.IntN(len(distinct))]))
		} else {
			id := fmt.Sprintf("evt-%d", len(distinct))
			distinct = append(distinct, id)
			evs = append(evs, ev(id))
		}
	}
	queue := make(chan []Event, total)
	for i := 0; i < total; i += 100 {
		queue <- evs[i : i+100]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var pending sync.WaitGroup
	pending.Add(total / 100)
	var crashes atomic.Int32
	var wg sync.WaitGroup
	for w := range 4 {
		c := e.consumer()
		wrng := rand.New(rand.NewPCG(uint64(w), 1))
		c.beforeCommit = func() error {
			if wrng.IntN(10) == 0 {
				crashes.Add(1)
				return errCrash
			}
			return nil
		}
		wg.Go(func() {
			for batch := range queue {
				if _, err := c.HandleBatch(ctx, batch); err != nil {
					if ctx.Err() != nil {
						return
					}
					// Not acknowledged: redelivered, reshuffled into two
					// smaller batches so duplicates meet other company.
					h := len(batch) / 2
					if h == 0 {
						queue <- batch
						continue
					}
					pending.Add(1)
					queue <- batch[:h]
					queue <- batch[h:]
					continue
				}
				pending.Done()
			}
		})
	}
	finished := make(chan struct{})
	go func() { pending.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-ctx.Done():
		t.Fatal("deliveries not all acknowledged within 20 s")
	}
	close(queue)
	wg.Wait()
	if crashes.Load() == 0 {
		t.Fatal("no crash injected")
	}
	e.exactlyOnce(t, distinct...)
	provider := &fakeProvider{}
	n, err := (&Relay{Pool: e.pool, Sender: provider}).Flush(context.Background())
	if err != nil || n != len(distinct) || provider.delivered() != len(distinct) || provider.sends != len(distinct) {
		t.Fatalf("relay: %d sent (%v), provider delivered %d with %d sends; want %d", n, err, provider.delivered(), provider.sends, len(distinct))
	}
}

// The relay crashes after sending and before marking the rows sent: the next
// flush sends them again with the same keys, and the provider delivers once.
func TestRelayCrashAfterSend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.consumer()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := c.Handle(ctx, ev(id)); err != nil {
			t.Fatal(err)
		}
	}
	provider := &fakeProvider{}
	crashed := false
	r := &Relay{Pool: e.pool, Sender: provider, afterSend: func() error {
		if !crashed {
			crashed = true
			return errCrash
		}
		return nil
	}}
	if _, err := r.Flush(ctx); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	n, err := r.Flush(ctx)
	if err != nil || n != 3 {
		t.Fatalf("second flush: %d %v", n, err)
	}
	if provider.delivered() != 3 || provider.sends != 6 {
		t.Fatalf("provider delivered %d with %d sends; want 3 with 6 (every key twice)", provider.delivered(), provider.sends)
	}
	if n, _ := r.Flush(ctx); n != 0 {
		t.Fatalf("third flush sent %d", n)
	}
}

// A failed send stops the batch; the rest is sent by the next flush.
func TestRelaySendFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.consumer()
	if _, err := c.HandleBatch(ctx, []Event{ev("a"), ev("b"), ev("c")}); err != nil {
		t.Fatal(err)
	}
	fails := 1
	provider := &fakeProvider{fail: func(n Notification) error {
		if n.Key == "notification/b" && fails > 0 {
			fails--
			return errors.New("provider 503")
		}
		return nil
	}}
	r := &Relay{Pool: e.pool, Sender: provider}
	if n, err := r.Flush(ctx); n != 1 || err == nil {
		t.Fatalf("first flush: %d %v; want 1 and the send error", n, err)
	}
	if n, err := r.Flush(ctx); n != 2 || err != nil {
		t.Fatalf("second flush: %d %v", n, err)
	}
	if provider.delivered() != 3 || provider.sends != 3 {
		t.Fatalf("delivered %d, sends %d", provider.delivered(), provider.sends)
	}
}

func TestHandleBatchOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.consumer()
	if _, err := c.Handle(ctx, ev("old")); err != nil {
		t.Fatal(err)
	}
	out, err := c.HandleBatch(ctx, []Event{ev("a"), ev("old"), ev("a"), ev("b")})
	if err != nil {
		t.Fatal(err)
	}
	want := []idemmsg.Status{idemmsg.Executed, idemmsg.Duplicate, idemmsg.Duplicate, idemmsg.Executed}
	for i, o := range out {
		if o.Status != want[i] {
			t.Fatalf("outcome %d: %v, want %v", i, o.Status, want[i])
		}
	}
	e.exactlyOnce(t, "old", "a", "b")
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
