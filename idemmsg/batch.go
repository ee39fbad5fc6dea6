package idemmsg

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
)

// BatchBeginner is implemented by stores that can apply SPEC §2's begin step
// to many keys in one round trip (a pipeline, a multi-key script, one SQL
// statement). Batch uses it when the Deduper's store implements it, and
// otherwise calls Begin for each key concurrently.
type BatchBeginner interface {
	// BeginBatch applies idem.Store.Begin to every key with the same
	// fingerprint and lease and returns the results in the order of keys.
	// Each key is atomic on its own; the batch as a whole need not be. An
	// error means that none of the results are known.
	BeginBatch(ctx context.Context, keys []string, fp []byte, lease time.Duration) ([]idem.Begun, error)
}

// BatchFinisher is implemented by stores that can complete and release many
// keys in one round trip. Batch uses it, when the Deduper's store implements
// it, to finish a batch's claims: one CompleteBatch for the messages whose
// handler succeeded and one ReleaseBatch for the others.
type BatchFinisher interface {
	// CompleteBatch applies idem.Store.Complete to keys[i] with fences[i],
	// the same result and retention, and returns one error per key (nil on
	// success, ErrLeaseLost-wrapping when fenced out). A non-nil second
	// result means that none of the outcomes are known.
	CompleteBatch(ctx context.Context, keys []string, fences []uint64, result []byte, retention time.Duration) ([]error, error)
	// ReleaseBatch applies idem.Store.Release to keys[i] with fences[i], with
	// the same error reporting as CompleteBatch.
	ReleaseBatch(ctx context.Context, keys []string, fences []uint64) ([]error, error)
}

// Outcome is what Batch or BatchTx did with one message of a batch.
type Outcome struct {
	Status Status
	// Err is the error for this message: fn's error (Failed), an
	// *idem.InFlightError (InFlight), a store or key error (NotRun), or an
	// error matching ErrNotRecorded (Executed). Nil otherwise.
	Err error
}

// Batch is Once for many messages of one scope, with the claims made
// together: in one store round trip when the store implements BatchBeginner,
// otherwise concurrently (at most Parallelism at a time). It then calls
// fn(ctx, i) for each claimed ids[i], in order and one at a time, renews
// the claims while fn runs, and finally completes the ids whose fn returned
// nil and releases the others, concurrently.
//
// The returned outcomes are in the order of ids, with the same meaning as
// Once's results. An id that occurs more than once in ids is claimed and
// processed once; its later occurrences are Duplicate when the first one is
// acknowledged, and share its outcome otherwise. If fn panics, every claim
// not yet completed is released and the panic is re-raised.
func (d *Deduper) Batch(ctx context.Context, scope string, ids []string, fn func(ctx context.Context, i int) error) []Outcome {
	return d.batch(ctx, scope, ids, fn, false)
}

// ErrSkipped reports that BatchInOrder did not process a message because an
// earlier message of the batch was not processed. Its claim, if any, was
// released; redeliver it.
var ErrSkipped = errors.New("idemmsg: skipped after an earlier message was not processed")

// BatchInOrder is Batch for an ordered log (a Kafka partition, a stream): it
// claims every id together but processes the messages strictly in order and
// stops at the first message that cannot be acknowledged (in flight, store
// error, or fn failed). Every later message is reported NotRun with
// ErrSkipped, without running fn, and its claim is released. So the
// acknowledged messages are always a prefix of ids: commit the offset of the
// last one, and resume from the first one that is not.
func (d *Deduper) BatchInOrder(ctx context.Context, scope string, ids []string, fn func(ctx context.Context, i int) error) []Outcome {
	return d.batch(ctx, scope, ids, fn, true)
}

func (d *Deduper) batch(ctx context.Context, scope string, ids []string, fn func(ctx context.Context, i int) error, ordered bool) []Outcome {
	out := make([]Outcome, len(ids))
	if len(ids) == 0 {
		return out
	}
	if d.Store == nil {
		for i := range out {
			out[i] = Outcome{NotRun, ErrNoStore}
		}
		return out
	}
	// Unique, valid ids, in order of first occurrence. firstOf[i] is the
	// index of the first occurrence of ids[i] (-1 for an empty id).
	seen := make(map[string]int, len(ids))
	firstOf := make([]int, len(ids))
	uniq := make([]int, 0, len(ids)) // indexes into ids
	for i, id := range ids {
		if id == "" {
			firstOf[i] = -1
			out[i] = Outcome{NotRun, fmt.Errorf("idemmsg: message %d: %w: empty", i, idem.ErrInvalidKey)}
			continue
		}
		f, ok := seen[id]
		if !ok {
			f = i
			seen[id] = i
			uniq = append(uniq, i)
		}
		firstOf[i] = f
	}
	keys := make([]string, len(uniq))
	for j, i := range uniq {
		keys[j] = idem.RecordKey(scope, ids[i])
	}

	begun, errs := d.beginAll(ctx, keys)
	type claim struct {
		i, j  int // index in ids, index in keys
		fence uint64
	}
	claims := make([]claim, 0, len(uniq))
	for j, i := range uniq {
		if errs[j] != nil {
			d.observe(ctx, idem.Event{Kind: idem.EventStoreError, Key: keys[j], Op: "begin", Err: errs[j]})
			out[i] = Outcome{NotRun, fmt.Errorf("idem: begin %q: %w", keys[j], errs[j])}
			continue
		}
		b := begun[j]
		switch b.Outcome {
		case idem.Acquired:
			if b.Takeover {
				d.observe(ctx, idem.Event{Kind: idem.EventTakeover, Key: keys[j], Fence: b.Fence, Op: "begin"})
			}
			claims = append(claims, claim{i: i, j: j, fence: b.Fence})
		case idem.Replay:
			d.observe(ctx, idem.Event{Kind: idem.EventReplayed, Key: keys[j], Op: "begin"})
			out[i] = Outcome{Status: Duplicate}
		case idem.InFlight:
			d.observe(ctx, idem.Event{Kind: idem.EventConflict, Key: keys[j], Fence: b.Fence, Op: "begin"})
			out[i] = Outcome{InFlight, &idem.InFlightError{LeaseLeft: b.LeaseLeft}}
		case idem.Mismatch:
			d.observe(ctx, idem.Event{Kind: idem.EventMismatch, Key: keys[j], Op: "begin"})
			out[i] = Outcome{NotRun, idem.ErrMismatch}
		default:
			out[i] = Outcome{NotRun, fmt.Errorf("idem: begin %q: store returned unknown outcome %d", keys[j], b.Outcome)}
		}
	}

	if len(claims) > 0 {
		held := make([]heldKey, len(claims))
		for c, cl := range claims {
			held[c] = heldKey{key: keys[cl.j], fence: cl.fence}
		}
		r := d.startRenewal(held)
		start := time.Now()
		ferrs := make([]error, len(claims))
		// stop is the index of the first message that will not be
		// acknowledged, for an ordered batch.
		stop := len(ids)
		if ordered {
			for i := range ids {
				if out[i].Status != 0 && !out[i].Status.Ack() {
					stop = i
					break
				}
			}
		}
		panicked := true
		func() {
			defer func() {
				if panicked { // fn panicked: release every claim, then re-panic
					r.stop()
					d.finishAll(ctx, held, make([]error, len(claims)), true, start)
				}
			}()
			for c, cl := range claims {
				if cl.i > stop {
					ferrs[c] = ErrSkipped
					continue
				}
				ferrs[c] = fn(idem.WithFence(ctx, cl.fence), cl.i)
				if ferrs[c] != nil && ordered {
					stop = cl.i
				}
			}
			panicked = false
		}()
		r.stop()
		ferrs2 := d.finishAll(ctx, held, ferrs, false, start)
		for c, cl := range claims {
			switch {
			case ferrs[c] == ErrSkipped:
				out[cl.i] = Outcome{NotRun, errors.Join(ErrSkipped, ferrs2[c])}
			case ferrs[c] != nil:
				out[cl.i] = Outcome{Failed, errors.Join(ferrs[c], ferrs2[c])}
			case ferrs2[c] != nil:
				out[cl.i] = Outcome{Executed, fmt.Errorf("%w: %w", ErrNotRecorded, ferrs2[c])}
			default:
				out[cl.i] = Outcome{Status: Executed}
			}
		}
	}

	// Later occurrences of an id follow the first.
	stopped := false
	for i, f := range firstOf {
		if ordered && stopped {
			if out[i].Status.Ack() || out[i].Status == 0 || f != i {
				out[i] = Outcome{NotRun, ErrSkipped}
			}
			continue
		}
		if f < 0 { // empty id
			stopped = ordered
			continue
		}
		if f != i {
			if out[f].Status.Ack() {
				out[i] = Outcome{Status: Duplicate}
			} else {
				out[i] = out[f]
			}
		}
		stopped = ordered && !out[i].Status.Ack()
	}
	return out
}

func (d *Deduper) observe(ctx context.Context, e idem.Event) {
	if d.Observer != nil {
		d.Observer.Observe(ctx, e)
	}
}

func (d *Deduper) parallelism() int {
	if d.Parallelism > 0 {
		return d.Parallelism
	}
	return 32
}

// each calls f(i) for i in [0, n), at most parallelism at a time.
func (d *Deduper) each(n int, f func(i int)) {
	if n == 1 || d.parallelism() == 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, d.parallelism()) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				f(i)
			}
		})
	}
	wg.Wait()
}

// beginAll begins every key: one call when the store is a BatchBeginner,
// otherwise concurrent Begin calls. errs[j] is the error for keys[j].
func (d *Deduper) beginAll(ctx context.Context, keys []string) ([]idem.Begun, []error) {
	begun := make([]idem.Begun, len(keys))
	errs := make([]error, len(keys))
	if len(keys) == 0 {
		return begun, errs
	}
	if bb, ok := d.Store.(BatchBeginner); ok {
		res, err := bb.BeginBatch(ctx, keys, fingerprint, d.lease())
		if err == nil && len(res) != len(keys) {
			err = fmt.Errorf("idemmsg: BeginBatch returned %d results for %d keys", len(res), len(keys))
		}
		if err != nil {
			for j := range errs {
				errs[j] = err
			}
			return begun, errs
		}
		return res, errs
	}
	d.each(len(keys), func(j int) {
		begun[j], errs[j] = d.Store.Begin(ctx, keys[j], fingerprint, d.lease())
	})
	return begun, errs
}

type heldKey struct {
	key   string
	fence uint64
}

// finishAll completes held[c] when ferrs[c] is nil (and release is false)
// and releases it otherwise: in two calls when the store is a BatchFinisher,
// concurrently otherwise. It returns the store errors.
func (d *Deduper) finishAll(ctx context.Context, held []heldKey, ferrs []error, release bool, start time.Time) []error {
	sctx := context.WithoutCancel(ctx)
	errs := make([]error, len(held))
	ran := time.Since(start)
	if bf, ok := d.Store.(BatchFinisher); ok {
		d.finishBatched(sctx, bf, held, ferrs, release, ran, errs)
		return errs
	}
	d.each(len(held), func(c int) {
		h := held[c]
		op := "complete"
		var t time.Time
		if d.Observer != nil {
			t = time.Now()
		}
		var err error
		// Transient store failures are retried a few times (10, 20, 40 ms),
		// as idem.Lease does for Once.
		for attempt, backoff := 0, 10*time.Millisecond; ; attempt, backoff = attempt+1, backoff*2 {
			if release || ferrs[c] != nil {
				op = "release"
				err = d.Store.Release(sctx, h.key, h.fence)
			} else {
				err = d.Store.Complete(sctx, h.key, h.fence, result, d.retention())
			}
			if err == nil || attempt == 3 || !errors.Is(err, idem.ErrStoreUnavailable) {
				break
			}
			time.Sleep(backoff)
		}
		if d.Observer != nil {
			d.observe(ctx, idem.Event{Kind: idem.EventExecuted, Key: h.key, Fence: h.fence, Op: op, Duration: ran})
		}
		if err != nil {
			kind := idem.EventStoreError
			if errors.Is(err, idem.ErrLeaseLost) {
				kind = idem.EventLeaseLost
			}
			d.observe(ctx, idem.Event{Kind: kind, Key: h.key, Fence: h.fence, Op: op, Duration: time.Since(t), Err: err})
			errs[c] = fmt.Errorf("idem: %s %q: %w", op, h.key, err)
		}
	})
	return errs
}

// renewal extends a batch's claims every third of the lease until stopped.
type renewal struct {
	stopOnce sync.Once
	stopc    chan struct{}
	done     chan struct{}
}

func (r *renewal) stop() {
	if r.stopc == nil {
		return
	}
	r.stopOnce.Do(func() { close(r.stopc) })
	<-r.done
}

func (d *Deduper) startRenewal(held []heldKey) *renewal {
	r := &renewal{}
	x, ok := d.Store.(idem.Extender)
	if !ok {
		return r
	}
	r.stopc, r.done = make(chan struct{}), make(chan struct{})
	every := max(d.lease()/3, time.Millisecond) // NewTicker panics on <= 0
	go func() {
		defer close(r.done)
		t := time.NewTicker(every)
		defer t.Stop()
		lost := make([]bool, len(held))
		for {
			select {
			case <-r.stopc:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), every)
			d.each(len(held), func(c int) {
				if lost[c] {
					return
				}
				if err := x.Extend(ctx, held[c].key, held[c].fence, d.lease()); errors.Is(err, idem.ErrLeaseLost) {
					lost[c] = true
					d.observe(ctx, idem.Event{Kind: idem.EventLeaseLost, Key: held[c].key, Fence: held[c].fence, Op: "extend", Err: err})
				}
			})
			cancel()
		}
	}()
	return r
}

// finishBatched is finishAll for a BatchFinisher. Whole-call failures that
// are transient are retried as for single calls.
func (d *Deduper) finishBatched(ctx context.Context, bf BatchFinisher, held []heldKey, ferrs []error, release bool, ran time.Duration, errs []error) {
	var comp, rel []int
	for c := range held {
		if release || ferrs[c] != nil {
			rel = append(rel, c)
		} else {
			comp = append(comp, c)
		}
	}
	run := func(op string, idx []int, call func(keys []string, fences []uint64) ([]error, error)) {
		if len(idx) == 0 {
			return
		}
		keys, fences := make([]string, len(idx)), make([]uint64, len(idx))
		for j, c := range idx {
			keys[j], fences[j] = held[c].key, held[c].fence
		}
		var per []error
		var err error
		for attempt, backoff := 0, 10*time.Millisecond; ; attempt, backoff = attempt+1, backoff*2 {
			per, err = call(keys, fences)
			if err == nil && len(per) != len(keys) {
				err = fmt.Errorf("idemmsg: %s batch returned %d results for %d keys", op, len(per), len(keys))
			}
			if err == nil || attempt == 3 || !errors.Is(err, idem.ErrStoreUnavailable) {
				break
			}
			time.Sleep(backoff)
		}
		for j, c := range idx {
			e := err
			if e == nil {
				e = per[j]
			}
			h := held[c]
			if d.Observer != nil {
				d.observe(ctx, idem.Event{Kind: idem.EventExecuted, Key: h.key, Fence: h.fence, Op: op, Duration: ran})
			}
			if e != nil {
				kind := idem.EventStoreError
				if errors.Is(e, idem.ErrLeaseLost) {
					kind = idem.EventLeaseLost
				}
				d.observe(ctx, idem.Event{Kind: kind, Key: h.key, Fence: h.fence, Op: op, Err: e})
				errs[c] = fmt.Errorf("idem: %s %q: %w", op, h.key, e)
			}
		}
	}
	run("complete", comp, func(keys []string, fences []uint64) ([]error, error) {
		return bf.CompleteBatch(ctx, keys, fences, result, d.retention())
	})
	run("release", rel, func(keys []string, fences []uint64) ([]error, error) {
		return bf.ReleaseBatch(ctx, keys, fences)
	})
}
