package natsdedup

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
)

// DefaultIDHeader is the header the message id is read from by default.
const DefaultIDHeader = "Nats-Msg-Id"

// Handler processes one message. It must not ack or nak the message;
// Consumer does that according to the outcome.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// Consumer deduplicates JetStream messages. Set the fields before first use;
// only Deduper is required. A Consumer is safe for concurrent use.
type Consumer struct {
	// Deduper holds the claims. Required.
	Deduper *idemmsg.Deduper
	// Scope is the scope of every message id. If empty,
	// "<stream>/<consumer>" from the message's metadata is used, so two
	// durable consumers of one stream each process every message once.
	Scope string
	// IDHeader is the header carrying the message id. If empty,
	// DefaultIDHeader (Nats-Msg-Id) is used. Without the header, the id is
	// "<stream>:<stream sequence>".
	IDHeader string
	// ID, if set, replaces IDHeader and the fallback: it returns the id of a
	// message (for example from a field of the payload).
	ID idemmsg.IDFunc[jetstream.Msg]
	// RetryDelay is the nak delay after a handler error. If zero, the message
	// is nak'ed without delay (the consumer's BackOff, if any, applies).
	RetryDelay time.Duration
	// MaxInFlightDelay bounds the nak delay for a message in flight elsewhere,
	// which is otherwise the holder's lease time left (rounded up to at least
	// 100 ms). If zero, 30 s.
	MaxInFlightDelay time.Duration
	// StoreDelay is the nak delay when the dedup store fails. If zero, 1 s.
	StoreDelay time.Duration
	// DoubleAck makes the ack wait for the server's confirmation
	// (jetstream.Msg.DoubleAck), so Handle reports a lost ack. A lost ack is
	// harmless either way: the redelivery is a duplicate.
	DoubleAck bool
	// OnError, if set, is called for every message not acknowledged and for
	// every ack, nak or completion error.
	OnError func(msg jetstream.Msg, st idemmsg.Status, err error)
}

// id returns the message id Handle uses for msg.
func (c *Consumer) id(msg jetstream.Msg) (string, error) {
	if c.ID != nil {
		return c.ID(msg)
	}
	h := c.IDHeader
	if h == "" {
		h = DefaultIDHeader
	}
	if v := msg.Headers().Get(h); v != "" {
		return v, nil
	}
	md, err := msg.Metadata()
	if err != nil {
		return "", fmt.Errorf("natsdedup: message has no %s header and no metadata: %w", h, err)
	}
	return md.Stream + ":" + strconv.FormatUint(md.Sequence.Stream, 10), nil
}

func (c *Consumer) scope(msg jetstream.Msg) (string, error) {
	if c.Scope != "" {
		return c.Scope, nil
	}
	md, err := msg.Metadata()
	if err != nil {
		return "", fmt.Errorf("natsdedup: no Scope set and message has no metadata: %w", err)
	}
	return md.Stream + "/" + md.Consumer, nil
}

// Handle runs h for msg at most once per id and then acks or naks msg (see
// the package documentation). It returns the idemmsg status and the error
// from the dedup step, the handler, or the ack or nak. A message whose id
// cannot be determined is nak'ed with StoreDelay and reported NotRun.
func (c *Consumer) Handle(ctx context.Context, msg jetstream.Msg, h Handler) (idemmsg.Status, error) {
	st, err := c.process(ctx, msg, h)
	var aerr error
	switch st {
	case idemmsg.Executed, idemmsg.Duplicate, idemmsg.Mismatched, idemmsg.Poisoned:
		if c.DoubleAck {
			aerr = msg.DoubleAck(ctx)
		} else {
			aerr = msg.Ack()
		}
	case idemmsg.InFlight:
		aerr = msg.NakWithDelay(c.inFlightDelay(err))
	case idemmsg.Failed:
		if c.RetryDelay > 0 {
			aerr = msg.NakWithDelay(c.RetryDelay)
		} else {
			aerr = msg.Nak()
		}
	default:
		d := c.StoreDelay
		if d <= 0 {
			d = time.Second
		}
		aerr = msg.NakWithDelay(d)
	}
	if aerr != nil {
		err = errors.Join(err, fmt.Errorf("natsdedup: acknowledging %s message: %w", st, aerr))
	}
	if err != nil && c.OnError != nil {
		c.OnError(msg, st, err)
	}
	return st, err
}

func (c *Consumer) process(ctx context.Context, msg jetstream.Msg, h Handler) (idemmsg.Status, error) {
	id, err := c.id(msg)
	if err != nil {
		return idemmsg.NotRun, err
	}
	scope, err := c.scope(msg)
	if err != nil {
		return idemmsg.NotRun, err
	}
	m := idemmsg.Message{ID: id}
	if c.Deduper.FingerprintPayload || c.Deduper.MaxAttempts > 0 {
		m.Payload = msg.Data()
	}
	return c.Deduper.OnceMessage(ctx, scope, m, func(ctx context.Context) error { return h(ctx, msg) })
}

func (c *Consumer) inFlightDelay(err error) time.Duration {
	limit := c.MaxInFlightDelay
	if limit <= 0 {
		limit = 30 * time.Second
	}
	var ife *idem.InFlightError
	if errors.As(err, &ife) {
		return min(max(ife.LeaseLeft, 100*time.Millisecond), limit)
	}
	return limit
}

// MessageHandler returns a jetstream.MessageHandler for Consumer.Consume
// that calls Handle with ctx for every message.
func (c *Consumer) MessageHandler(ctx context.Context, h Handler) jetstream.MessageHandler {
	return func(msg jetstream.Msg) { _, _ = c.Handle(ctx, msg, h) }
}
