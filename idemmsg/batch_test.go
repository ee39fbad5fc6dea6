package idemmsg_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
)

func statuses(out []idemmsg.BatchResult) []idemmsg.Status {
	s := make([]idemmsg.Status, len(out))
	for i, o := range out {
		s[i] = o.Status
	}
	return s
}

func TestBatch(t *testing.T) {
	t.Parallel()
	const (
		E = idemmsg.Executed
		D = idemmsg.Duplicate
		I = idemmsg.InFlight
		F = idemmsg.Failed
		N = idemmsg.NotRun
	)
	for _, batched := range []bool{false, true} {
		t.Run(map[bool]string{false: "parallel begins", true: "BatchBeginner"}[batched], func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := newClock()
			fs := fakestore.New(c.Now)
			var store idem.Store = fs
			if batched {
				store = fakestore.Batch{Store: fs}
			}
			d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: store}}
			// Prior state: "done" processed, "busy" held by another consumer.
			if st, _ := d.Once(ctx, "s", "done", func(context.Context) error { return nil }); st != E {
				t.Fatal(st)
			}
			if _, err := fs.Begin(ctx, idem.RecordKey("s", "busy"), []byte{}, time.Minute); err != nil {
				t.Fatal(err)
			}
			ids := []string{"a", "done", "b", "busy", "a", "bad", "", "bad", "c"}
			var ran []string
			out := d.Batch(ctx, "s", ids, func(ctx context.Context, i int) error {
				f, ok := idem.FenceFromContext(ctx)
				if l, lok := idem.LeaseFromContext(ctx); !ok || !lok || l.Fence() != f || l.Key() != idem.RecordKey("s", ids[i]) {
					t.Error("no lease or fence in the handler's context")
				}
				ran = append(ran, ids[i])
				if ids[i] == "bad" {
					return errBoom
				}
				return nil
			})
			want := []idemmsg.Status{E, D, E, I, D, F, N, F, E}
			if got := statuses(out); !reflect.DeepEqual(got, want) {
				t.Fatalf("statuses %v, want %v", got, want)
			}
			if want := []string{"a", "b", "bad", "c"}; !reflect.DeepEqual(ran, want) {
				t.Fatalf("ran %v, want %v (in order, each once)", ran, want)
			}
			if !errors.Is(out[5].Err, errBoom) || !errors.Is(out[7].Err, errBoom) || !errors.Is(out[3].Err, idem.ErrInFlight) || !errors.Is(out[6].Err, idem.ErrInvalidKey) {
				t.Fatalf("errors: %+v", out)
			}
			if batched && fs.Calls("beginbatch") != 1 {
				t.Fatalf("beginbatch called %d times, want 1", fs.Calls("beginbatch"))
			}
			// The failed id was released: the redelivery runs it.
			out = d.Batch(ctx, "s", []string{"bad", "a"}, func(context.Context, int) error { return nil })
			if got := statuses(out); !reflect.DeepEqual(got, []idemmsg.Status{E, D}) {
				t.Fatalf("redelivery %v", got)
			}
		})
	}
}

func TestBatchStoreErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fs := fakestore.New(nil)
	// A short lease: a completion is retried for one lease period.
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.Batch{Store: fs}, Lease: 200 * time.Millisecond}}
	fs.FailNext("begin", errors.New("down"))
	ran := 0
	out := d.Batch(ctx, "s", []string{"x"}, func(context.Context, int) error { ran++; return nil })
	if out[0].Status != idemmsg.NotRun || !errors.Is(out[0].Err, idem.ErrStoreUnavailable) || ran != 0 {
		t.Fatalf("%+v ran %d", out, ran)
	}
	fs.FailN("complete", 100, errors.New("down"))
	out = d.Batch(ctx, "s", []string{"x"}, func(context.Context, int) error { ran++; return nil })
	if out[0].Status != idemmsg.Executed || !errors.Is(out[0].Err, idemmsg.ErrNotRecorded) || !out[0].Status.Ack() {
		t.Fatalf("%+v", out)
	}
	if out := d.Batch(ctx, "s", nil, nil); len(out) != 0 {
		t.Fatal(out)
	}
}

func TestBatchPanicReleasesAll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fs := fakestore.New(nil)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}}
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v", r)
			}
		}()
		d.Batch(ctx, "s", []string{"a", "b", "c"}, func(_ context.Context, i int) error {
			if i == 1 {
				panic("kaboom")
			}
			return nil
		})
	}()
	if fs.Len() != 0 {
		t.Fatalf("%d records left after a panic, want all released", fs.Len())
	}
}

func TestBatchRenews(t *testing.T) {
	t.Parallel()
	fs := fakestore.New(nil)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs, Lease: 120 * time.Millisecond}}
	out := d.Batch(context.Background(), "s", []string{"a", "b"}, func(_ context.Context, i int) error {
		time.Sleep(200 * time.Millisecond) // longer than the lease: survives only if renewed
		return nil
	})
	for i, o := range out {
		if o.Status != idemmsg.Executed || o.Err != nil {
			t.Fatalf("message %d: %+v (lease not renewed?)", i, o)
		}
	}
	if fs.Calls("extend") == 0 {
		t.Fatal("no extension")
	}
}

// txClaimer models INSERT ... ON CONFLICT DO NOTHING in a transaction: claims
// become visible to others only at commit.
type txClaimer struct {
	committed map[string]bool
	pending   map[string]bool
}

func newTx(committed map[string]bool) *txClaimer {
	return &txClaimer{committed: committed, pending: map[string]bool{}}
}

func (c *txClaimer) Claim(_ context.Context, scope, id string) (bool, error) {
	k := idem.RecordKey(scope, id)
	if c.committed[k] || c.pending[k] {
		return false, nil
	}
	c.pending[k] = true
	return true, nil
}

func (c *txClaimer) ClaimBatch(ctx context.Context, scope string, ids []string) ([]string, error) {
	var fresh []string
	for _, id := range ids {
		if ok, _ := c.Claim(ctx, scope, id); ok {
			fresh = append(fresh, id)
		}
	}
	return fresh, nil
}

func (c *txClaimer) commit() {
	for k := range c.pending {
		c.committed[k] = true
	}
}

func TestOnceTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := map[string]bool{}
	ok := func(context.Context) error { return nil }

	tx := newTx(db)
	if st, err := idemmsg.OnceTx(ctx, tx, "s", "m", func(context.Context) error { return errBoom }); st != idemmsg.Failed || !errors.Is(err, errBoom) {
		t.Fatalf("%v %v", st, err)
	}
	// rolled back: nothing committed
	tx = newTx(db)
	if st, err := idemmsg.OnceTx(ctx, tx, "s", "m", ok); st != idemmsg.Executed || err != nil {
		t.Fatalf("%v %v", st, err)
	}
	tx.commit()
	if st, _ := idemmsg.OnceTx(ctx, newTx(db), "s", "m", ok); st != idemmsg.Duplicate {
		t.Fatalf("after commit: %v", st)
	}
	if st, err := idemmsg.OnceTx(ctx, newTx(db), "s", "", ok); st != idemmsg.NotRun || !errors.Is(err, idem.ErrInvalidKey) {
		t.Fatalf("%v %v", st, err)
	}
	failing := idemmsg.ClaimerFunc(func(context.Context, string, string) (bool, error) { return false, errBoom })
	if st, err := idemmsg.OnceTx(ctx, failing, "s", "n", ok); st != idemmsg.NotRun || !errors.Is(err, errBoom) {
		t.Fatalf("%v %v", st, err)
	}
}

func TestBatchTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := map[string]bool{idem.RecordKey("s", "old"): true}
	tx := newTx(db)
	ids := []string{"a", "old", "b", "a"}
	var got []int
	out, err := idemmsg.BatchTx(ctx, tx, "s", ids, func(_ context.Context, fresh []int) error {
		got = fresh
		return nil
	})
	if err != nil || !reflect.DeepEqual(got, []int{0, 2}) {
		t.Fatalf("fresh %v err %v", got, err)
	}
	want := []idemmsg.Status{idemmsg.Executed, idemmsg.Duplicate, idemmsg.Executed, idemmsg.Duplicate}
	if !reflect.DeepEqual(statuses(out), want) {
		t.Fatalf("%v", statuses(out))
	}
	// A failing handler fails the whole batch.
	out, err = idemmsg.BatchTx(ctx, newTx(db), "s", []string{"x", "y"}, func(context.Context, []int) error { return errBoom })
	if !errors.Is(err, errBoom) || out[0].Status != idemmsg.Failed || out[1].Status != idemmsg.Failed {
		t.Fatalf("%+v %v", out, err)
	}
	// A claimer returning an id it was not asked for is refused.
	bogus := idemmsg.BatchClaimerFunc(func(context.Context, string, []string) ([]string, error) { return []string{"zzz"}, nil })
	if _, err := idemmsg.BatchTx(ctx, bogus, "s", []string{"x"}, nil); err == nil {
		t.Fatal("bogus claim accepted")
	}
	if _, err := idemmsg.BatchTx(ctx, newTx(db), "s", []string{"x", ""}, nil); !errors.Is(err, idem.ErrInvalidKey) {
		t.Fatal(err)
	}
}

func TestBatchInOrder(t *testing.T) {
	t.Parallel()
	const (
		E = idemmsg.Executed
		D = idemmsg.Duplicate
		I = idemmsg.InFlight
		F = idemmsg.Failed
		N = idemmsg.NotRun
	)
	for _, tc := range []struct {
		name string
		ids  []string
		want []idemmsg.Status
		ran  string
	}{
		{"all fine", []string{"a", "done", "b", "a"}, []idemmsg.Status{E, D, E, D}, "ab"},
		{"stops at a failure", []string{"a", "bad", "b", "done", "a"}, []idemmsg.Status{E, F, N, N, N}, "a,bad"},
		{"stops at an in-flight id", []string{"a", "busy", "b", "done"}, []idemmsg.Status{E, I, N, N}, "a"},
		{"in flight first", []string{"busy", "a"}, []idemmsg.Status{I, N}, ""},
		{"empty id stops", []string{"a", "", "b"}, []idemmsg.Status{E, N, N}, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			fs := fakestore.New(nil)
			d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.Batch{Store: fs}}}
			d.Once(ctx, "s", "done", func(context.Context) error { return nil })
			fs.Begin(ctx, idem.RecordKey("s", "busy"), []byte{}, time.Minute)
			ran := ""
			out := d.BatchInOrder(ctx, "s", tc.ids, func(_ context.Context, i int) error {
				if ran != "" && tc.ids[i] == "bad" {
					ran += ","
				}
				ran += tc.ids[i]
				if tc.ids[i] == "bad" {
					return errBoom
				}
				return nil
			})
			if got := statuses(out); !reflect.DeepEqual(got, tc.want) || ran != tc.ran {
				t.Fatalf("statuses %v ran %q; want %v ran %q", got, ran, tc.want, tc.ran)
			}
			for i, o := range out {
				if i > 0 && o.Status.Ack() && !out[i-1].Status.Ack() {
					t.Fatalf("acknowledged messages are not a prefix: %v", statuses(out))
				}
				if o.Status == N && tc.ids[i] != "" && !errors.Is(o.Err, idemmsg.ErrSkipped) {
					t.Fatalf("message %d: %v, want ErrSkipped", i, o.Err)
				}
			}
			// Every skipped claim was released: the next batch runs them.
			if fs.Len() != 2+countExecuted(out) {
				t.Fatalf("%d records, want %d", fs.Len(), 2+countExecuted(out))
			}
		})
	}
}

func countExecuted(out []idemmsg.BatchResult) int {
	n := 0
	for _, o := range out {
		if o.Status == idemmsg.Executed {
			n++
		}
	}
	return n
}

func TestBatchRetriesTransientCompleteFailures(t *testing.T) {
	t.Parallel()
	fs := fakestore.New(nil)
	// A short lease: a completion is retried for one lease period.
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs, Lease: 200 * time.Millisecond}}
	fs.FailN("complete", 2, errors.New("blip"))
	out := d.Batch(context.Background(), "s", []string{"a"}, func(context.Context, int) error { return nil })
	if out[0].Status != idemmsg.Executed || out[0].Err != nil {
		t.Fatalf("%+v", out[0])
	}
	fs.FailN("complete", 100, errors.New("down"))
	out = d.Batch(context.Background(), "s", []string{"b"}, func(context.Context, int) error { return nil })
	if out[0].Status != idemmsg.Executed || !errors.Is(out[0].Err, idemmsg.ErrNotRecorded) {
		t.Fatalf("%+v", out[0])
	}
}

func TestNoStore(t *testing.T) {
	t.Parallel()
	var d idemmsg.Deduper
	if st, err := d.Once(context.Background(), "s", "m", nil); st != idemmsg.NotRun || !errors.Is(err, idemmsg.ErrNoStore) {
		t.Fatal(st, err)
	}
	if out := d.Batch(context.Background(), "s", []string{"m"}, nil); out[0].Status != idemmsg.NotRun || !errors.Is(out[0].Err, idemmsg.ErrNoStore) {
		t.Fatal(out)
	}
}

func TestBatchLeaseLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClock()
	fs := fakestore.New(c.Now)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.Batch{Store: fs}, Lease: time.Minute}}
	out := d.Batch(ctx, "s", []string{"slow", "ok", "bad"}, func(_ context.Context, i int) error {
		switch i {
		case 0: // outlives its lease and is taken over meanwhile
			c.Advance(2 * time.Minute)
			if b, _ := fs.Begin(ctx, idem.RecordKey("s", "slow"), []byte{}, time.Minute); b.Outcome != idem.Acquired {
				t.Errorf("takeover: %v", b.Outcome)
			}
		case 2:
			return errBoom
		}
		return nil
	})
	if out[0].Status != idemmsg.Executed || !errors.Is(out[0].Err, idemmsg.ErrNotRecorded) || !errors.Is(out[0].Err, idem.ErrLeaseLost) {
		t.Fatalf("taken over: %+v", out[0])
	}
	if out[1].Status != idemmsg.Executed || out[1].Err != nil || out[2].Status != idemmsg.Failed {
		t.Fatalf("%+v", out)
	}
	if fs.Calls("beginbatch") != 1 {
		t.Fatalf("beginbatch %d", fs.Calls("beginbatch"))
	}
}

func TestNoKeeperStore(t *testing.T) {
	t.Parallel()
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{}}
	if st, err := d.Once(context.Background(), "s", "m", nil); st != idemmsg.NotRun || !errors.Is(err, idemmsg.ErrNoStore) {
		t.Fatal(st, err)
	}
}

func TestRetentionPrecedence(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		deduper, keeper, want time.Duration
	}{
		{0, 0, idemmsg.DefaultMessageRetention},
		{0, time.Hour, time.Hour},
		{time.Minute, time.Hour, time.Minute},
		{time.Minute, 0, time.Minute},
	} {
		c := newClock()
		k := &idem.Keeper{Store: fakestore.New(c.Now), Retention: tc.keeper}
		d := &idemmsg.Deduper{Keeper: k, Retention: tc.deduper}
		ok := func(context.Context) error { return nil }
		for _, step := range []struct {
			advance time.Duration
			want    idemmsg.Status
		}{{0, idemmsg.Executed}, {tc.want - time.Second, idemmsg.Duplicate}, {2 * time.Second, idemmsg.Executed}} {
			c.Advance(step.advance)
			if st, err := d.Once(context.Background(), "s", "m", ok); st != step.want || err != nil {
				t.Fatalf("%+v after %v: %v %v, want %v", tc, step.advance, st, err, step.want)
			}
		}
		if got := d.EffectiveRetention(); got != tc.want {
			t.Errorf("%+v: EffectiveRetention = %v", tc, got)
		}
		if k.Retention != tc.keeper {
			t.Errorf("%+v: the caller's Keeper was modified: Retention = %v", tc, k.Retention)
		}
	}
}
