package redisstore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// ExampleNew runs an operation at most once per key with records in Redis.
// (It needs a Redis server, so it is compiled but not run.)
func ExampleNew() {
	// MaxRetries -1: go-redis never resends a script whose reply was lost;
	// the Keeper settles that unknown outcome with the store's Get.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", MaxRetries: -1})
	defer rdb.Close()
	st := redisstore.New(rdb, redisstore.Options{Prefix: "payments:"})
	defer st.Close() // stops the wait-mode subscription, if any

	k := &idem.Keeper{Store: st}
	ctx := context.Background()
	charge, replayed, err := idem.Do(ctx, k, "tenant-42", "order-1001", func(ctx context.Context) (string, error) {
		return "ch_1", nil // charge the card
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(charge, replayed)
}

// ExampleNew_cluster uses a Redis Cluster, waiting for one replica to
// acknowledge every acquisition and completion before going on.
func ExampleNew_cluster() {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:      []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"},
		MaxRetries: -1, // the cluster client's default; spelled out
	})
	defer rdb.Close()
	st := redisstore.New(rdb, redisstore.Options{WaitReplicas: 1})
	defer st.Close()
	_ = &idem.Keeper{Store: st}
}
