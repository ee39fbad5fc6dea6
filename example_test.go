package idem_test

import (
	"context"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// Do runs a plain Go function once per key; a retry gets the stored result.
func ExampleDo() {
	ctx := context.Background()
	k := &idem.Keeper{Store: memstore.New(memstore.Options{})}

	type Charge struct {
		ID     string
		Amount int
	}
	charges := 0
	charge := func(ctx context.Context) (Charge, error) {
		charges++
		return Charge{ID: fmt.Sprintf("ch_%d", charges), Amount: 1999}, nil
	}

	for range 3 { // the client retries twice
		c, replayed, err := idem.Do(ctx, k, "acct_42", "order-7781", charge)
		if err != nil {
			panic(err)
		}
		fmt.Println(c.ID, c.Amount, "replayed:", replayed)
	}
	fmt.Println("cards charged:", charges)
	// Output:
	// ch_1 1999 replayed: false
	// ch_1 1999 replayed: true
	// ch_1 1999 replayed: true
	// cards charged: 1
}
