package memstore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

func ExampleNew() {
	ctx := context.Background()
	s := memstore.New(memstore.Options{MaxRecords: 100_000})
	k := &idem.Keeper{Store: s, Lease: 10 * time.Second, Retention: time.Hour}

	charge := func() (string, bool) {
		a, err := k.Begin(ctx, "tenant-1", "order-42", []byte("charge 10 EUR"))
		if err != nil {
			panic(err)
		}
		if a.Replayed() {
			return string(a.Result), true
		}
		result := "charged 10 EUR" // the operation runs here, once
		if err := a.Lease.Complete(ctx, []byte(result)); err != nil {
			panic(err)
		}
		return result, false
	}

	fmt.Println(charge())
	fmt.Println(charge()) // a retry replays the stored result
	fmt.Println(s.Len())

	_, err := k.Begin(ctx, "tenant-1", "order-42", []byte("charge 99 EUR"))
	fmt.Println(err)
	// Output:
	// charged 10 EUR false
	// charged 10 EUR true
	// 1
	// idem: key reused with a different request
}
