package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/redis/go-redis/v9"
)

// BeginBatch applies Begin to keys[i] with fingerprint fps[i] and the same
// lease and returns the results in the order of keys (idem.BatchBeginner). The
// begin scripts are pipelined: one round trip on a single server, one per
// primary (in parallel) on a Cluster. Each key is atomic on its own; the
// batch as a whole is not. With WaitReplicas set, WAIT follows the scripts
// in each pipeline.
//
// An error means that none of the results are known: keys the batch had
// acquired are then released again (best effort) before BeginBatch returns.
func (s *Store) BeginBatch(ctx context.Context, keys []string, fps [][]byte, lease time.Duration) ([]idem.Begun, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("redisstore: begin batch: %w", err)
	}
	if lease <= 0 {
		return nil, fmt.Errorf("redisstore: begin batch: lease %v is not positive", lease)
	}
	if len(fps) != len(keys) {
		return nil, fmt.Errorf("redisstore: begin batch: %d keys and %d fingerprints", len(keys), len(fps))
	}
	rkeys := make([][]string, len(keys))
	for i, k := range keys {
		if k == "" {
			return nil, fmt.Errorf("redisstore: begin batch: key %d: %w: empty", i, idem.ErrInvalidKey)
		}
		rkeys[i] = s.keys(k)
	}
	res := make([]idem.Begun, len(keys))
	if len(keys) == 0 {
		return res, nil
	}

	// Group the keys by the connection that serves them.
	type group struct {
		pipe func() redis.Pipeliner
		idx  []int
	}
	var groups []*group
	if s.cluster == nil {
		all := make([]int, len(keys))
		for i := range all {
			all[i] = i
		}
		groups = []*group{{pipe: s.c.Pipeline, idx: all}}
	} else {
		byAddr := make(map[string]*group)
		for i, k := range rkeys {
			node, err := s.cluster.MasterForKey(ctx, k[0])
			if err != nil {
				return nil, fail(ctx, "begin batch", err)
			}
			addr := node.Options().Addr
			g := byAddr[addr]
			if g == nil {
				g = &group{pipe: node.Pipeline}
				byAddr[addr] = g
				groups = append(groups, g)
			}
			g.idx = append(g.idx, i)
		}
	}

	args := func(i int) []any { return []any{fps[i], micros(lease), s.inProgressTTL(lease), s.newKey} }
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for gi, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[gi] = s.beginGroup(ctx, g.pipe(), rkeys, g.idx, args, res)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// Give back what this batch acquired: its results are not reported.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(s.waitTO, giveBackTimeout))
		defer cancel()
		for i, b := range res {
			if b.Outcome == idem.Acquired {
				_, _, _ = s.run(rctx, releaseScript, rkeys[i], false, strconv.FormatUint(b.Fence, 10), s.notify)
			}
		}
		if s.cluster != nil {
			s.cluster.ReloadState(ctx)
		}
		return nil, fail(ctx, "begin batch", err)
	}
	return res, nil
}

// beginGroup runs the begin script for keys[idx...] in one pipeline (plus
// WAIT when WaitReplicas is set) and stores the outcomes in res. Outcomes it
// could decode are stored even when it returns an error.
func (s *Store) beginGroup(ctx context.Context, pipe redis.Pipeliner, keys [][]string, idx []int, args func(i int) []any, res []idem.Begun) error {
	cmds := make([]*redis.Cmd, len(idx))
	var wait *redis.Cmd
	exec := func(noscript bool) {
		for j, i := range idx {
			switch {
			case !noscript:
				cmds[j] = beginScript.EvalSha(ctx, pipe, keys[i], args(i)...)
			case isNoScript(cmds[j].Err()):
				cmds[j] = beginScript.Eval(ctx, pipe, keys[i], args(i)...)
			}
		}
		if s.replica > 0 {
			wait = pipe.Do(ctx, "wait", s.replica, s.waitTO.Milliseconds())
		}
		_, _ = pipe.Exec(ctx)
	}
	exec(false)
	for _, c := range cmds {
		if isNoScript(c.Err()) {
			exec(true) // the server lost its script cache: send the source
			break
		}
	}
	var firstErr error
	for j, i := range idx {
		if err := cmds[j].Err(); err != nil {
			firstErr = firstOf(firstErr, err)
			continue
		}
		b, err := parseBegun(cmds[j].Val())
		if err != nil {
			firstErr = firstOf(firstErr, err)
			continue
		}
		res[i] = b
	}
	if firstErr == nil && wait != nil {
		if n, err := wait.Int64(); err != nil {
			firstErr = err
		} else if n < int64(s.replica) {
			firstErr = fmt.Errorf("WAIT: fewer than %d replicas acknowledged within %v", s.replica, s.waitTO)
		}
	}
	return firstErr
}

// firstOf returns a if it is set, else b.
func firstOf(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
