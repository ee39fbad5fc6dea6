package filestore_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/filestore"
)

// Charge is the result of the example's side effect.
type Charge struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

func ExampleOpen() {
	dir, err := os.MkdirTemp("", "idem")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	store, err := filestore.Open(filepath.Join(dir, "idem.db"), filestore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	k := &idem.Keeper{Store: store}
	ctx := context.Background()
	for range 2 {
		c, replayed, err := idem.Do(ctx, k, "tenant-1", "order-42", func(context.Context) (Charge, error) {
			fmt.Println("charging the card")
			return Charge{ID: "ch_1", Amount: 1000}, nil
		})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%+v replayed=%v\n", c, replayed)
	}
	// Output:
	// charging the card
	// {ID:ch_1 Amount:1000} replayed=false
	// {ID:ch_1 Amount:1000} replayed=true
}
