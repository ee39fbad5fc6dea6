package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/pgxstore"
)

// Event asks for one notification.
type Event struct {
	// ID is the event's id, unique per event and the same on every
	// redelivery.
	ID       string
	To       string
	Template string
}

// Notification is what the relay hands to the provider.
type Notification struct {
	// Key is the provider-side idempotency key: stable for one event.
	Key      string
	To       string
	Template string
}

// Sender sends a notification. A real provider deduplicates by Key.
type Sender interface {
	Send(ctx context.Context, n Notification) error
}

// setupSQL creates the outbox table. There is deliberately no unique
// constraint on event_id: the claim alone keeps the rows unique, and the
// tests check that.
const setupSQL = `
CREATE TABLE IF NOT EXISTS notification_outbox (
	id         bigserial PRIMARY KEY,
	event_id   text        NOT NULL,
	recipient  text        NOT NULL,
	template   text        NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	sent_at    timestamptz
)`

// Setup creates the claim tables (pgxstore.Migrate) and the outbox.
func Setup(ctx context.Context, pool *pgxpool.Pool, store *pgxstore.Store) error {
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, setupSQL)
	return err
}

// Consumer turns events into outbox rows, once per event id.
type Consumer struct {
	Pool  *pgxpool.Pool
	Store *pgxstore.Store
	// Scope of the claims: one per consumer group.
	Scope string

	// beforeCommit, if set, runs just before the commit; a test makes it
	// fail to simulate a crash before the commit.
	beforeCommit func() error
}

const (
	insertOutbox      = `INSERT INTO notification_outbox (event_id, recipient, template) VALUES ($1, $2, $3)`
	insertOutboxBatch = `INSERT INTO notification_outbox (event_id, recipient, template)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[])`
)

// Handle processes one event in its own transaction (steps 1–4) and returns
// the idemmsg status. Acknowledge the event when st.Ack() (step 5).
func (c *Consumer) Handle(ctx context.Context, ev Event) (st idemmsg.Status, err error) {
	tx, err := c.Pool.Begin(ctx)
	if err != nil {
		return idemmsg.NotRun, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) // no-op after Commit
	claim := idemmsg.ClaimerFunc(func(ctx context.Context, scope, id string) (bool, error) {
		return c.Store.Claim(ctx, tx, scope, id)
	})
	st, err = idemmsg.OnceTx(ctx, claim, c.Scope, ev.ID, func(ctx context.Context) error {
		_, err := tx.Exec(ctx, insertOutbox, ev.ID, ev.To, ev.Template)
		return err
	})
	if err != nil {
		return st, err
	}
	if err := c.commit(ctx, tx); err != nil {
		return idemmsg.NotRun, err
	}
	return st, nil
}

// HandleBatch processes a batch of events (for example one broker poll) in
// one transaction: one ClaimBatch statement, one multi-row insert (unnest)
// for the new events, one commit. Acknowledge all of them when err is nil; none
// otherwise.
func (c *Consumer) HandleBatch(ctx context.Context, evs []Event) ([]idemmsg.BatchResult, error) {
	tx, err := c.Pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	claim := idemmsg.BatchClaimerFunc(func(ctx context.Context, scope string, ids []string) ([]string, error) {
		return c.Store.ClaimBatch(ctx, tx, scope, ids)
	})
	out, err := idemmsg.BatchTx(ctx, claim, c.Scope, ids, func(ctx context.Context, fresh []int) error {
		ids, tos, tpls := make([]string, len(fresh)), make([]string, len(fresh)), make([]string, len(fresh))
		for j, i := range fresh {
			ids[j], tos[j], tpls[j] = evs[i].ID, evs[i].To, evs[i].Template
		}
		_, err := tx.Exec(ctx, insertOutboxBatch, ids, tos, tpls)
		return err
	})
	if err != nil {
		return out, err
	}
	if err := c.commit(ctx, tx); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *Consumer) commit(ctx context.Context, tx pgx.Tx) error {
	if c.beforeCommit != nil {
		if err := c.beforeCommit(); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// Relay sends the outbox's unsent notifications.
type Relay struct {
	Pool   *pgxpool.Pool
	Sender Sender
	// Batch is the most rows locked per transaction. If zero, 100.
	Batch int

	// afterSend, if set, runs after the sends and before the commit; a test
	// makes it fail to simulate a crash there.
	afterSend func() error
}

// Flush sends every unsent notification (steps 6–8) and reports how many
// rows it marked sent. A failed send stops the batch: the rows stay unsent
// and are retried by the next Flush, with the same keys.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	batch := r.Batch
	if batch <= 0 {
		batch = 100
	}
	total := 0
	for {
		n, err := r.flushOne(ctx, batch)
		total += n
		if err != nil || n == 0 {
			return total, err
		}
	}
}

func (r *Relay) flushOne(ctx context.Context, batch int) (int, error) {
	tx, err := r.Pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `SELECT id, event_id, recipient, template FROM notification_outbox
		WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, batch)
	if err != nil {
		return 0, err
	}
	type row struct {
		id                  int64
		event, to, template string
	}
	var todo []row
	var rw row
	if _, err := pgx.ForEachRow(rows, []any{&rw.id, &rw.event, &rw.to, &rw.template}, func() error {
		todo = append(todo, rw)
		return nil
	}); err != nil {
		return 0, err
	}
	var sent []int64
	var serr error
	for _, rw := range todo {
		if serr = r.Sender.Send(ctx, Notification{Key: "notification/" + rw.event, To: rw.to, Template: rw.template}); serr != nil {
			break
		}
		sent = append(sent, rw.id)
	}
	if len(sent) == 0 {
		return 0, serr
	}
	if r.afterSend != nil {
		if err := r.afterSend(); err != nil {
			return 0, err
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE notification_outbox SET sent_at = now() WHERE id = ANY($1)`, sent); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("marking %d notifications sent (they will be sent again with the same keys): %w", len(sent), err)
	}
	return len(sent), serr
}

// errCrash stands for a process dying at a chosen point.
var errCrash = errors.New("simulated crash")
