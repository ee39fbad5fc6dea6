package idemmsg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/idemkit/idem"
)

// BatchResult is what Batch or BatchTx did with one message of a batch.
type BatchResult struct {
	Status Status
	// Err is the error for this message: fn's error (Failed), an
	// *idem.InFlightError (InFlight), a store or key error (NotRun), an
	// error matching idem.ErrMismatch (Mismatched) or ErrPoisoned
	// (Poisoned), or an error matching ErrNotRecorded (Executed, or added to
	// Poisoned's). Nil otherwise.
	Err error
}

// Batch is Once for many messages of one scope, with the claims made
// together by idem.Keeper.BeginBatch: in one store round trip when the store
// implements idem.BatchBeginner, otherwise concurrently (at most Parallelism
// at a time). It then calls fn(ctx, i) for each claimed ids[i], in order and
// one at a time, with a context carrying the message's lease (see Once); the
// leases are renewed while the batch runs. Finally it completes the leases
// of the ids whose fn returned nil and releases the others, concurrently.
//
// The returned outcomes are in the order of ids, with the same meaning as
// Once's results. An id that occurs more than once in ids is claimed and
// processed once; its later occurrences are Duplicate when the first one is
// acknowledged, and share its outcome otherwise. If fn panics, every lease
// not yet completed is released and the panic is re-raised.
func (d *Deduper) Batch(ctx context.Context, scope string, ids []string, fn func(ctx context.Context, i int) error) []BatchResult {
	return d.batch(ctx, scope, messages(ids), fn, false)
}

// BatchMessages is Batch for messages with their payloads (see
// OnceMessage).
func (d *Deduper) BatchMessages(ctx context.Context, scope string, msgs []Message, fn func(ctx context.Context, i int) error) []BatchResult {
	return d.batch(ctx, scope, msgs, fn, false)
}

// messages returns ids as messages without payloads.
func messages(ids []string) []Message {
	msgs := make([]Message, len(ids))
	for i, id := range ids {
		msgs[i].ID = id
	}
	return msgs
}

// ErrSkipped reports that BatchInOrder did not process a message because an
// earlier message of the batch was not processed. Its claim, if any, was
// released; redeliver it.
var ErrSkipped = errors.New("idemmsg: skipped after an earlier message was not processed")

// BatchInOrder is Batch for an ordered log (a Kafka partition, a stream): it
// claims every id together but processes the messages strictly in order and
// stops at the first message that cannot be acknowledged (in flight, store
// error, or fn failed; a Poisoned or Mismatched message is acknowledged and
// does not stop it). Every later message is reported NotRun with
// ErrSkipped, without running fn, and its claim is released. So the
// acknowledged messages are always a prefix of ids: commit the offset of the
// last one, and resume from the first one that is not.
func (d *Deduper) BatchInOrder(ctx context.Context, scope string, ids []string, fn func(ctx context.Context, i int) error) []BatchResult {
	return d.batch(ctx, scope, messages(ids), fn, true)
}

// BatchMessagesInOrder is BatchInOrder for messages with their payloads
// (see OnceMessage).
func (d *Deduper) BatchMessagesInOrder(ctx context.Context, scope string, msgs []Message, fn func(ctx context.Context, i int) error) []BatchResult {
	return d.batch(ctx, scope, msgs, fn, true)
}

func (d *Deduper) batch(ctx context.Context, scope string, msgs []Message, fn func(ctx context.Context, i int) error, ordered bool) []BatchResult {
	out := make([]BatchResult, len(msgs))
	if len(msgs) == 0 {
		return out
	}
	if !d.usable() {
		for i := range out {
			out[i] = BatchResult{NotRun, ErrNoStore}
		}
		return out
	}
	// Unique, valid ids, in order of first occurrence. firstOf[i] is the
	// index of the first occurrence of msgs[i].ID (-1 for an empty id).
	seen := make(map[string]int, len(msgs))
	firstOf := make([]int, len(msgs))
	uniq := make([]int, 0, len(msgs)) // indexes into msgs
	for i, m := range msgs {
		if m.ID == "" {
			firstOf[i] = -1
			out[i] = BatchResult{NotRun, fmt.Errorf("idemmsg: message %d: %w: empty", i, idem.ErrInvalidKey)}
			continue
		}
		f, ok := seen[m.ID]
		if !ok {
			f = i
			seen[m.ID] = i
			uniq = append(uniq, i)
		}
		firstOf[i] = f
	}
	ids := make([]string, len(uniq))
	fps := make([][]byte, len(uniq))
	for j, i := range uniq {
		ids[j], fps[j] = msgs[i].ID, d.fp(msgs[i])
	}

	atts, errs := d.keeper().BeginBatch(ctx, scope, ids, fps)
	type claim struct {
		i int // index in msgs
		l *idem.Lease
	}
	claims := make([]claim, 0, len(uniq))
	for j, i := range uniq {
		switch {
		case errs[j] != nil:
			out[i] = beginFailed(ids[j], errs[j])
		case atts[j].Replayed():
			out[i] = BatchResult{Status: Duplicate}
			if d.MaxAttempts > 0 {
				d.tries.forget(idem.RecordKey(scope, ids[j]))
			}
		default:
			atts[j].Lease.StartRenewal()
			claims = append(claims, claim{i: i, l: atts[j].Lease})
		}
	}

	if len(claims) > 0 {
		res := make([]BatchResult, len(claims))
		// stop is the index of the first message that will not be
		// acknowledged, for an ordered batch.
		stop := len(msgs)
		if ordered {
			for i := range msgs {
				if out[i].Status != 0 && !out[i].Status.Ack() {
					stop = i
					break
				}
			}
		}
		panicked := true
		func() {
			defer func() {
				if panicked { // fn panicked: release every lease, then re-panic
					sctx := context.WithoutCancel(ctx)
					d.each(len(claims), func(c int) { _ = claims[c].l.Release(sctx) })
				}
			}()
			for c, cl := range claims {
				if cl.i > stop {
					res[c] = BatchResult{NotRun, ErrSkipped}
					continue
				}
				st, err := d.execute(ctx, scope, msgs[cl.i], cl.l, func(ctx context.Context) error { return fn(ctx, cl.i) })
				res[c] = BatchResult{st, err}
				if ordered && !st.Ack() {
					stop = cl.i
				}
			}
			panicked = false
		}()
		d.each(len(claims), func(c int) { res[c] = d.finish(ctx, claims[c].l, res[c]) })
		for c, cl := range claims {
			out[cl.i] = res[c]
		}
	}

	// Later occurrences of an id follow the first (or are Mismatched, with
	// FingerprintPayload, when their payload differs).
	stopped := false
	for i, f := range firstOf {
		if ordered && stopped {
			if out[i].Status.Ack() || out[i].Status == 0 || f != i {
				out[i] = BatchResult{NotRun, ErrSkipped}
			}
			continue
		}
		if f < 0 { // empty id
			stopped = ordered
			continue
		}
		if f != i {
			switch {
			case out[f].Status.Ack() && d.FingerprintPayload && !bytes.Equal(d.fp(msgs[i]), d.fp(msgs[f])):
				// Reported even if it matches the stored payload (when the
				// first occurrence was Mismatched): never taken silently.
				out[i] = beginFailed(msgs[i].ID, idem.ErrMismatch)
			case out[f].Status == Mismatched:
				out[i] = out[f]
			case out[f].Status.Ack():
				out[i] = BatchResult{Status: Duplicate}
			default:
				out[i] = out[f]
			}
		}
		stopped = ordered && !out[i].Status.Ack()
	}
	return out
}

// parallelism is Parallelism, else Keeper.BatchParallelism, else 32.
func (d *Deduper) parallelism() int {
	if p := d.keeper().BatchParallelism; p > 0 {
		return p
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
