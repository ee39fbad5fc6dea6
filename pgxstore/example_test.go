package pgxstore_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// These examples need a PostgreSQL server, so they are compiled but not run
// by go test; the tests in this package run the same code against one.

func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("IDEM_POSTGRES_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	store := pgxstore.New(pool, pgxstore.Options{Schema: "billing"})
	if err := store.Migrate(ctx); err != nil { // idempotent; safe from every replica
		log.Fatal(err)
	}
	k := &idem.Keeper{Store: store}
	total, replayed, err := idem.Do(ctx, k, "tenant-1", "order-42", func(ctx context.Context) (int, error) {
		return 4200, nil // runs once per key within retention
	})
	fmt.Println(total, replayed, err)
}

// A handler writes its business row and completes its idempotency record in
// one transaction: both commit or neither does.
func ExampleStore_With() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("IDEM_POSTGRES_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store := pgxstore.New(pool, pgxstore.Options{})
	k := &idem.Keeper{Store: store}

	a, err := k.Begin(ctx, "tenant-1", "order-42", idem.Fingerprint([]byte("charge 42.00 EUR")))
	if err != nil || a.Replayed() {
		fmt.Println("replay or error:", err)
		return
	}
	l := a.Lease
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO charges (order_id, cents) VALUES ($1, $2)`, "order-42", 4200); err != nil {
			return err
		}
		// ErrLeaseLost here means a newer executor holds the key: the
		// returned error rolls the charge back.
		return store.With(tx).Complete(ctx, l.Key(), l.Fence(), []byte(`{"charged":4200}`), 24*time.Hour)
	})
	if err != nil {
		_ = l.Release(ctx) // the retry executes again
		log.Print(err)
	}
}

// A consumer claims the message id in the same transaction as its writes,
// and acks the message only after the commit: effectively-once effects.
func ExampleStore_Claim() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("IDEM_POSTGRES_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store := pgxstore.New(pool, pgxstore.Options{})

	handle := func(ctx context.Context, msgID string, amount int) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			first, err := store.Claim(ctx, tx, "ledger-consumer", msgID)
			if err != nil || !first {
				return err // a duplicate: nothing to do, ack it
			}
			_, err = tx.Exec(ctx, `UPDATE accounts SET balance = balance + $1 WHERE id = 1`, amount)
			return err
		})
	}
	if err := handle(ctx, "msg-1", 100); err != nil {
		log.Print(err) // nack: the redelivery runs again
		return
	}
	// ack msg-1 here, after the commit
}

// ClaimBatch claims a whole poll of messages in one round trip.
func ExampleStore_ClaimBatch() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("IDEM_POSTGRES_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store := pgxstore.New(pool, pgxstore.Options{})
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		fresh, err := store.ClaimBatch(ctx, tx, "ledger-consumer", []string{"msg-1", "msg-2", "msg-3"})
		if err != nil {
			return err
		}
		for _, id := range fresh { // only the ids never processed before
			if _, err := tx.Exec(ctx, `INSERT INTO ledger (msg_id) VALUES ($1)`, id); err != nil {
				return err
			}
		}
		return nil
	})
	fmt.Println(err)
}
