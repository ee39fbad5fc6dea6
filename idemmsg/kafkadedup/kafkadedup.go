package kafkadedup

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
)

// DefaultHeader is the record header the event id is read from by default.
const DefaultHeader = "event-id"

// ErrMisconfigured reports a client built without the options Consumer
// needs (see ClientOpts).
var ErrMisconfigured = errors.New("kafkadedup: client misconfigured")

// ClientOpts returns the kgo options a Consumer's client must be built with,
// in addition to ConsumerGroup and ConsumeTopics: auto-commit disabled (the
// Consumer commits processed records itself) and rebalances blocked while
// polled records are processed.
func ClientOpts() []kgo.Opt {
	return []kgo.Opt{kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll()}
}

// Handler processes one record. It must not commit offsets.
type Handler func(ctx context.Context, r *kgo.Record) error

// Consumer deduplicates the records of a consumer group. Set the fields
// before first use; Client and Deduper are required. Poll and Run must not be
// called concurrently on one Consumer.
type Consumer struct {
	// Client is a group consumer built with ClientOpts. Required.
	Client *kgo.Client
	// Deduper holds the claims. Required.
	Deduper *idemmsg.Deduper
	// Scope is the scope of every event id. If empty, the consumer group's
	// name is used, so each group processes every event once.
	Scope string
	// Header is the record header carrying the event id. If empty,
	// DefaultHeader ("event-id"). Without the header (or with an empty
	// value), the id is "<topic>:<partition>:<offset>".
	Header string
	// ID, if set, replaces Header and the fallback. An error stops the
	// record's partition at that record (it is reported to OnError and
	// fetched again after the backoff), so return a fallback id rather than
	// an error for a record that will never have one.
	ID idemmsg.IDFunc[*kgo.Record]
	// MaxPollRecords bounds the records of one Poll. If zero, 1000.
	MaxPollRecords int
	// RetryBackoff is the wait before a record that failed, or was in flight
	// on another consumer, is fetched again; it doubles at each consecutive
	// attempt at the same record up to MaxRetryBackoff, and an in-flight
	// record's wait never exceeds the holder's lease time left. If zero,
	// 100 ms.
	RetryBackoff time.Duration
	// MaxRetryBackoff bounds RetryBackoff's growth. If zero, 5 s.
	MaxRetryBackoff time.Duration
	// OnError, if set, is called for every record not acknowledged (with the
	// idemmsg status and error) and for every commit error (with a nil
	// record and status 0). It runs on the polling goroutines and must be
	// safe for concurrent use.
	OnError func(r *kgo.Record, st idemmsg.Status, err error)

	mu    sync.Mutex
	fails map[tp]failure
}

type tp struct {
	topic     string
	partition int32
}

type failure struct {
	offset int64
	n      int
}

// check validates the client's options.
func (c *Consumer) check() (scope string, err error) {
	if c.Client == nil || c.Deduper == nil {
		return "", fmt.Errorf("%w: Client and Deduper are required", ErrMisconfigured)
	}
	if v, _ := c.Client.OptValue(kgo.DisableAutoCommit).(bool); !v {
		return "", fmt.Errorf("%w: build the client with kgo.DisableAutoCommit() (see ClientOpts)", ErrMisconfigured)
	}
	if v, _ := c.Client.OptValue(kgo.BlockRebalanceOnPoll).(bool); !v {
		return "", fmt.Errorf("%w: build the client with kgo.BlockRebalanceOnPoll() (see ClientOpts)", ErrMisconfigured)
	}
	group, _ := c.Client.OptValue(kgo.ConsumerGroup).(string)
	if group == "" {
		return "", fmt.Errorf("%w: the client is not a group consumer (kgo.ConsumerGroup)", ErrMisconfigured)
	}
	if c.Scope != "" {
		return c.Scope, nil
	}
	return group, nil
}

// EventID returns the id the Consumer uses for r.
func (c *Consumer) EventID(r *kgo.Record) (string, error) {
	if c.ID != nil {
		return c.ID(r)
	}
	h := c.Header
	if h == "" {
		h = DefaultHeader
	}
	for _, rh := range r.Headers {
		if rh.Key == h && len(rh.Value) > 0 {
			return string(rh.Value), nil
		}
	}
	return r.Topic + ":" + strconv.FormatInt(int64(r.Partition), 10) + ":" + strconv.FormatInt(r.Offset, 10), nil
}

// Run calls Poll until ctx is done or the client is closed, and returns
// ctx's error or kgo.ErrClientClosed. Other errors are reported to OnError
// and do not stop Run.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	for {
		if _, err := c.Poll(ctx, h); err != nil {
			return err
		}
	}
}

// Poll fetches up to MaxPollRecords records, processes them (see the package
// documentation), commits the processed ones, allows a pending rebalance,
// and then waits the backoff of any record that must be retried. It reports
// how many records were acknowledged (processed or duplicate). It returns an
// error only when the client is misconfigured or closed, or ctx is done.
func (c *Consumer) Poll(ctx context.Context, h Handler) (acked int, err error) {
	scope, err := c.check()
	if err != nil {
		return 0, err
	}
	limit := c.MaxPollRecords
	if limit <= 0 {
		limit = 1000
	}
	fetches := c.Client.PollRecords(ctx, limit)
	defer c.Client.AllowRebalance()
	if fetches.IsClientClosed() {
		return 0, kgo.ErrClientClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	fetches.EachError(func(topic string, p int32, err error) {
		if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			c.report(nil, 0, fmt.Errorf("kafkadedup: fetch %s/%d: %w", topic, p, err))
		}
	})

	var (
		mu       sync.Mutex
		commit   []*kgo.Record
		rewind   = map[string]map[int32]kgo.EpochOffset{}
		wait     time.Duration
		wg       sync.WaitGroup
		nonEmpty []kgo.FetchTopicPartition
	)
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) > 0 {
			nonEmpty = append(nonEmpty, p)
		}
	})
	for _, p := range nonEmpty {
		wg.Go(func() {
			n, stuck, w := c.partition(ctx, scope, p.Records, h)
			mu.Lock()
			defer mu.Unlock()
			acked += n
			if n > 0 {
				commit = append(commit, p.Records[n-1])
			}
			if stuck != nil {
				if rewind[stuck.Topic] == nil {
					rewind[stuck.Topic] = map[int32]kgo.EpochOffset{}
				}
				rewind[stuck.Topic][stuck.Partition] = kgo.EpochOffset{Epoch: stuck.LeaderEpoch, Offset: stuck.Offset}
				wait = max(wait, w)
			}
		})
	}
	wg.Wait()

	if len(commit) > 0 {
		// Commit even when ctx is done: the records are processed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err := c.Client.CommitRecords(cctx, commit...); err != nil {
			c.report(nil, 0, fmt.Errorf("kafkadedup: commit: %w", err))
		}
		cancel()
	}
	if len(rewind) > 0 {
		c.Client.SetOffsets(rewind)
	}
	c.Client.AllowRebalance()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	return acked, nil
}

// partition processes one partition's records in order. It returns the
// number acknowledged (a prefix), the first record not acknowledged (nil if
// none) and how long to wait before fetching it again.
func (c *Consumer) partition(ctx context.Context, scope string, recs []*kgo.Record, h Handler) (int, *kgo.Record, time.Duration) {
	msgs := make([]idemmsg.Message, 0, len(recs))
	var idErr error // the id error of recs[len(msgs)], which stops the batch
	for _, r := range recs {
		id, err := c.EventID(r)
		if err != nil {
			idErr = fmt.Errorf("kafkadedup: event id of %s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
			break
		}
		msgs = append(msgs, idemmsg.Message{ID: id, Payload: r.Value})
	}
	out := c.Deduper.BatchMessagesInOrder(ctx, scope, msgs, func(ctx context.Context, i int) error {
		return h(ctx, recs[i])
	})
	if idErr != nil && (len(out) == 0 || out[len(out)-1].Status.Ack()) {
		out = append(out, idemmsg.BatchResult{Status: idemmsg.NotRun, Err: idErr})
	}
	n := 0
	for n < len(out) && out[n].Status.Ack() {
		if out[n].Err != nil { // processed but not recorded
			c.report(recs[n], out[n].Status, out[n].Err)
		}
		n++
	}
	key := tp{recs[0].Topic, recs[0].Partition}
	if n == len(recs) {
		c.mu.Lock()
		delete(c.fails, key)
		c.mu.Unlock()
		return n, nil, 0
	}
	stuck, o := recs[n], out[n]
	c.report(stuck, o.Status, o.Err)
	limit := c.MaxRetryBackoff
	if limit <= 0 {
		limit = 5 * time.Second
	}
	base := c.RetryBackoff
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fails == nil {
		c.fails = map[tp]failure{}
	}
	f := c.fails[key]
	if f.offset != stuck.Offset {
		f = failure{offset: stuck.Offset}
	}
	f.n++
	c.fails[key] = f
	w := base
	for i := 1; i < f.n && w < limit; i++ {
		w *= 2
	}
	// A record in flight elsewhere is usually finished soon (often by
	// another partition of this very poll): back off as for a failure, but
	// never past the holder's lease, when a takeover becomes possible.
	var ife *idem.InFlightError
	if errors.As(o.Err, &ife) {
		w = min(w, max(ife.LeaseLeft, time.Millisecond))
	}
	return n, stuck, min(w, limit)
}

func (c *Consumer) report(r *kgo.Record, st idemmsg.Status, err error) {
	if c.OnError != nil && err != nil {
		c.OnError(r, st, err)
	}
}
