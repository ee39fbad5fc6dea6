package redisstreams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/idemmsg"
)

// DefaultIDField is the entry field the event id is read from by default.
const DefaultIDField = "event-id"

// ErrMisconfigured reports a Consumer without a required field.
var ErrMisconfigured = errors.New("redisstreams: consumer misconfigured")

// Handler processes one stream entry. It must not XACK it.
type Handler func(ctx context.Context, msg redis.XMessage) error

// Consumer is one consumer of a Redis Streams consumer group with
// deduplication. Set the fields before first use; Client, Stream, Group, Name
// and Deduper are required. Poll and Run must not be called concurrently on
// one Consumer; run one Consumer (with its own Name) per goroutine or
// process.
type Consumer struct {
	// Client is the Redis connection. Required.
	Client redis.UniversalClient
	// Stream, Group and Name name the stream, the consumer group and this
	// consumer. Required.
	Stream, Group, Name string
	// Deduper holds the claims. Required.
	Deduper *idemmsg.Deduper
	// Scope is the scope of every event id. If empty, "<stream>/<group>".
	Scope string
	// IDField is the entry field carrying the event id. If empty,
	// DefaultIDField ("event-id"). Without it, the entry id is used.
	IDField string
	// ID, if set, replaces IDField and the fallback. An entry whose id it
	// cannot return stays pending (reported to OnError) and is reclaimed
	// after ClaimIdle, so return a fallback id rather than an error for an
	// entry that will never have one.
	ID idemmsg.IDFunc[redis.XMessage]
	// Count is the most entries read (and reclaimed) per Poll. If zero, 100.
	Count int64
	// Block is how long XREADGROUP waits for new entries. If zero, 500 ms;
	// if negative, it does not wait.
	Block time.Duration
	// ClaimIdle is how long an entry stays pending on a consumer before
	// XAUTOCLAIM reclaims it: the retry delay after a handler error and the
	// takeover delay after a crash. Keep it above the handler's usual run
	// time. If zero, 30 s.
	ClaimIdle time.Duration
	// CreateGroup makes the first Poll create the group (and the stream) at
	// the stream's start if it does not exist.
	CreateGroup bool
	// OnError, if set, is called for every entry not acknowledged and for
	// every Redis error that Poll survives (with a nil msg and status 0).
	OnError func(msg *redis.XMessage, st idemmsg.Status, err error)

	started bool   // own pending entries re-read
	cursor  string // XAUTOCLAIM cursor
}

func (c *Consumer) check() error {
	if c.Client == nil || c.Stream == "" || c.Group == "" || c.Name == "" || c.Deduper == nil {
		return fmt.Errorf("%w: Client, Stream, Group, Name and Deduper are required", ErrMisconfigured)
	}
	return nil
}

// EventID returns the id the Consumer uses for msg.
func (c *Consumer) EventID(msg redis.XMessage) (string, error) {
	if c.ID != nil {
		return c.ID(msg)
	}
	f := c.IDField
	if f == "" {
		f = DefaultIDField
	}
	switch v := msg.Values[f].(type) {
	case string:
		if v != "" {
			return v, nil
		}
	case []byte:
		if len(v) > 0 {
			return string(v), nil
		}
	}
	return msg.ID, nil
}

// Payload returns the payload of an entry for Deduper.FingerprintPayload
// and Deduper.OnPoison: its fields in sorted order, each name and value
// preceded by its length in decimal and a colon.
func Payload(msg redis.XMessage) []byte {
	names := make([]string, 0, len(msg.Values))
	for k := range msg.Values {
		names = append(names, k)
	}
	slices.Sort(names)
	var b []byte
	for _, k := range names {
		v := fmt.Sprint(msg.Values[k])
		b = strconv.AppendInt(b, int64(len(k)), 10)
		b = append(b, ':')
		b = append(b, k...)
		b = strconv.AppendInt(b, int64(len(v)), 10)
		b = append(b, ':')
		b = append(b, v...)
	}
	return b
}

func (c *Consumer) scope() string {
	if c.Scope != "" {
		return c.Scope
	}
	return c.Stream + "/" + c.Group
}

func (c *Consumer) count() int64 {
	if c.Count > 0 {
		return c.Count
	}
	return 100
}

func (c *Consumer) claimIdle() time.Duration {
	if c.ClaimIdle > 0 {
		return c.ClaimIdle
	}
	return 30 * time.Second
}

func (c *Consumer) report(msg *redis.XMessage, st idemmsg.Status, err error) {
	if c.OnError != nil && err != nil {
		c.OnError(msg, st, err)
	}
}

// Run calls Poll until ctx is done and returns ctx's error. Redis errors are
// reported to OnError, followed by a short pause, and do not stop Run.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	for {
		if _, err := c.Poll(ctx, h); err != nil {
			if errors.Is(err, ErrMisconfigured) || ctx.Err() != nil {
				return err
			}
			c.report(nil, 0, err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

// Poll processes one round of entries (see the package documentation) and
// reports how many entries its XACKs removed from the pending entries list. It returns an error when the consumer
// is misconfigured, ctx is done, or Redis fails; entries it read but could
// not acknowledge stay pending and are reclaimed later.
func (c *Consumer) Poll(ctx context.Context, h Handler) (acked int, err error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if !c.started {
		if c.CreateGroup {
			err := c.Client.XGroupCreateMkStream(ctx, c.Stream, c.Group, "0").Err()
			if err != nil && !isBusyGroup(err) {
				return 0, fmt.Errorf("redisstreams: create group %s on %s: %w", c.Group, c.Stream, err)
			}
		}
		// Own pending entries, left by a previous run of this consumer.
		for {
			msgs, err := c.read(ctx, "0", -1)
			if err != nil {
				return acked, err
			}
			if len(msgs) == 0 {
				break
			}
			n, err := c.process(ctx, msgs, h)
			acked += n
			if err != nil {
				return acked, err
			}
			if n < len(msgs) {
				break // the rest is retried through XAUTOCLAIM after ClaimIdle
			}
		}
		c.started = true
	}

	start := c.cursor
	if start == "" {
		start = "0-0"
	}
	msgs, next, err := c.Client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: c.Stream, Group: c.Group, Consumer: c.Name,
		MinIdle: c.claimIdle(), Start: start, Count: c.count(),
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return acked, fmt.Errorf("redisstreams: XAUTOCLAIM %s %s: %w", c.Stream, c.Group, err)
	}
	c.cursor = next
	if len(msgs) > 0 {
		n, err := c.process(ctx, msgs, h)
		acked += n
		if err != nil {
			return acked, err
		}
	}

	block := c.Block
	if block == 0 {
		block = 500 * time.Millisecond
	}
	msgs, err = c.read(ctx, ">", block)
	if err != nil {
		return acked, err
	}
	n, err := c.process(ctx, msgs, h)
	return acked + n, err
}

// read runs XREADGROUP from id ("0": own pending entries; ">": new ones).
func (c *Consumer) read(ctx context.Context, id string, block time.Duration) ([]redis.XMessage, error) {
	res, err := c.Client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: c.Group, Consumer: c.Name, Streams: []string{c.Stream, id},
		Count: c.count(), Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("redisstreams: XREADGROUP %s %s: %w", c.Stream, c.Group, err)
	}
	var msgs []redis.XMessage
	for _, s := range res {
		for _, m := range s.Messages {
			if m.Values == nil && id == "0" {
				// A pending entry that was trimmed from the stream: nothing
				// to process; acknowledge it so it leaves the PEL.
				_ = c.Client.XAck(context.WithoutCancel(ctx), c.Stream, c.Group, m.ID).Err()
				continue
			}
			msgs = append(msgs, m)
		}
	}
	return msgs, nil
}

// process dedups and handles msgs and XACKs the acknowledged ones.
func (c *Consumer) process(ctx context.Context, msgs []redis.XMessage, h Handler) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	batch := make([]idemmsg.Message, 0, len(msgs))
	idx := make([]int, 0, len(msgs)) // batch[j] is msgs[idx[j]]
	for i, m := range msgs {
		id, err := c.EventID(m)
		if err != nil {
			c.report(&msgs[i], idemmsg.NotRun, fmt.Errorf("redisstreams: event id of %s: %w", m.ID, err))
			continue
		}
		var p []byte
		if c.Deduper.FingerprintPayload || c.Deduper.MaxAttempts > 0 {
			p = Payload(m)
		}
		batch = append(batch, idemmsg.Message{ID: id, Payload: p})
		idx = append(idx, i)
	}
	out := c.Deduper.BatchMessages(ctx, c.scope(), batch, func(ctx context.Context, j int) error {
		return h(ctx, msgs[idx[j]])
	})
	ack := make([]string, 0, len(msgs))
	for j, o := range out {
		m := &msgs[idx[j]]
		if o.Status.Ack() {
			ack = append(ack, m.ID)
		}
		if o.Err != nil {
			c.report(m, o.Status, o.Err)
		}
	}
	if len(ack) == 0 {
		return 0, nil
	}
	// Acknowledge even when ctx is done: the entries are processed.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	n, err := c.Client.XAck(actx, c.Stream, c.Group, ack...).Result()
	if err != nil {
		return 0, fmt.Errorf("redisstreams: XACK %d entries: %w", len(ack), err)
	}
	// n counts only the entries still pending: an entry another consumer
	// acknowledged meanwhile (after reclaiming it) is not counted twice.
	return int(n), nil
}

func isBusyGroup(err error) bool {
	return err != nil && len(err.Error()) >= 9 && err.Error()[:9] == "BUSYGROUP"
}
