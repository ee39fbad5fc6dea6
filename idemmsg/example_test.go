package idemmsg_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/idemkit/idem"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/memstore"
)

// A broker delivers the same event three times; the first attempt fails, so
// the handler runs again on the redelivery, and the last copy is skipped.
func ExampleDeduper_Once() {
	ctx := context.Background()
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}}

	sent, attempts := 0, 0
	send := func(context.Context) error {
		attempts++
		if attempts == 1 {
			return errors.New("mail server timeout")
		}
		sent++
		return nil
	}
	for range 3 { // three deliveries of event evt_1
		st, err := d.Once(ctx, "notifications", "evt_1", send)
		fmt.Printf("%-9s ack=%-5v err=%v\n", st, st.Ack(), err)
	}
	fmt.Println("emails sent:", sent)
	// Output:
	// failed    ack=false err=mail server timeout
	// executed  ack=true  err=<nil>
	// duplicate ack=true  err=<nil>
	// emails sent: 1
}

// Batch claims a whole poll's worth of messages together and runs the
// handler for the new ones only.
func ExampleDeduper_Batch() {
	ctx := context.Background()
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}}

	ids := []string{"evt_1", "evt_2", "evt_1", "evt_3"}
	out := d.Batch(ctx, "notifications", ids, func(ctx context.Context, i int) error {
		fmt.Println("send", ids[i])
		return nil
	})
	for i, o := range out {
		fmt.Println(ids[i], o.Status)
	}
	// Output:
	// send evt_1
	// send evt_2
	// send evt_3
	// evt_1 executed
	// evt_2 executed
	// evt_1 duplicate
	// evt_3 executed
}

// OnceTx runs the handler in the caller's database transaction together
// with the claim. Here a map stands in for the transaction-bound claim
// (pgxstore.Store.Claim in a real service; see examples/notifications).
func ExampleOnceTx() {
	ctx := context.Background()
	claimed := map[string]bool{}
	claim := idemmsg.ClaimerFunc(func(_ context.Context, scope, id string) (bool, error) {
		if claimed[scope+"/"+id] {
			return false, nil
		}
		claimed[scope+"/"+id] = true // in SQL: INSERT ... ON CONFLICT DO NOTHING
		return true, nil
	})
	for range 2 {
		st, _ := idemmsg.OnceTx(ctx, claim, "billing", "evt_9", func(ctx context.Context) error {
			fmt.Println("insert the invoice row in the same transaction")
			return nil
		})
		fmt.Println(st, "→ commit, then ack")
	}
	// Output:
	// insert the invoice row in the same transaction
	// executed → commit, then ack
	// duplicate → commit, then ack
}

// A message whose handler always fails is handed to OnPoison after
// MaxAttempts deliveries and then acknowledged, so it stops blocking its
// partition; a redelivery afterwards is a duplicate.
func ExampleDeduper_OnceMessage() {
	ctx := context.Background()
	d := &idemmsg.Deduper{
		Keeper:      &idem.Keeper{Store: memstore.New(memstore.Options{})},
		MaxAttempts: 3,
		OnPoison: func(_ context.Context, p idemmsg.Poison) error {
			fmt.Printf("dead-letter %s %q after %d attempts: %v\n", p.ID, p.Payload, p.Attempts, p.Err)
			return nil
		},
	}
	m := idemmsg.Message{ID: "evt_7", Payload: []byte(`{"to":"nobody"}`)}
	fail := func(context.Context) error { return errors.New("invalid address") }
	for range 4 {
		st, _ := d.OnceMessage(ctx, "notifications", m, fail)
		fmt.Printf("%-9s ack=%v\n", st, st.Ack())
	}
	// Output:
	// failed    ack=false
	// failed    ack=false
	// dead-letter evt_7 "{\"to\":\"nobody\"}" after 3 attempts: invalid address
	// poisoned  ack=true
	// duplicate ack=true
}
