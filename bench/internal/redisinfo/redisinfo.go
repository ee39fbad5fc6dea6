// Package redisinfo is what the benchmarks need from a Redis server: from
// its INFO, the calls of every command (commandstats) and the server's CPU
// time; and the clean-up of the keys a benchmark wrote.
package redisinfo

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// CommandStats returns the calls of every command so far (INFO
// commandstats; the commands run by scripts are counted too).
func CommandStats(ctx context.Context, c *redis.Client) (map[string]int64, error) {
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	return ParseCommandStats(info)
}

// ParseCommandStats reads the calls of INFO commandstats lines such as
// "cmdstat_evalsha:calls=10,usec=55,usec_per_call=5.50,...", keyed by the
// command's name ("evalsha", "pubsub|numsub"). Other lines are ignored; a
// count that is not a whole number ≥ 0 is an error.
func ParseCommandStats(info string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("commandstats line %q: bad calls", line)
				}
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out, nil
}

// CPU returns the server's CPU time so far (used_cpu_user + used_cpu_sys
// of INFO cpu) in µs.
func CPU(ctx context.Context, c *redis.Client) (float64, error) {
	info, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("INFO cpu %s=%q: %w", k, v, err)
			}
			total += f
		}
	}
	return total * 1e6, nil
}

// DeleteMatching unlinks every key that matches pattern (SCAN MATCH), a
// thousand at a time: a benchmark's clean-up of what it wrote.
func DeleteMatching(ctx context.Context, c *redis.Client, pattern string) error {
	iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Unlink(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		if batch = append(batch, iter.Val()); len(batch) == 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}
