package faults

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Ack is a 2xx response that a client received in full: the client holds
// it, so every retry and every replay of the key must give it back.
type Ack struct {
	Key    string
	Caller string // who received it (client, operation, attempt), for reports
	Status int
	Body   []byte
	// Replayed is the Idempotency-Replayed header ("true" on a replay).
	Replayed string
	// Replay is the Idempotency-Replay header: "omitted" when the stored
	// body was over the cap and the replay carries none.
	Replay string
	// At is when the last byte of the response had been read.
	At time.Time
}

// Execution is one run of the upstream for a key, as the upstream logged it
// when the request reached it.
type Execution struct {
	Key string
	// ID is unique per execution; the upstream puts it in its answer.
	ID uint64
	// Fence is the Idempotency-Fence request header the proxy sent ("" if
	// none).
	Fence  string
	Start  time.Time
	Status int // what the upstream answered
}

// FinalReplay is the answer to the final replay of a key, sent after the load
// and the faults are over.
type FinalReplay struct {
	Key      string
	Status   int // 0 when no answer was had (see Err)
	Body     []byte
	Replayed string // Idempotency-Replayed header
	Replay   string // Idempotency-Replay header
	Err      string // why there is no 2xx, if there is none
	At       time.Time
}

// UnexpectedAnswer is an answer that no correct run gives to a client that sends
// the same request with the same key every time: 422 (key reused with a
// different request) or any status outside what clients retry (409, 500,
// 502, 503, 504) and 2xx.
type UnexpectedAnswer struct {
	Key    string
	Caller string
	Status int
	Body   []byte
}

// GaveUp is a logical operation that got no 2xx within its bound.
type GaveUp struct {
	Key      string
	Caller   string
	Attempts int
	Last     string // the last answer or error
}

// History is everything a fault run observed.
type History struct {
	Acks       []Ack
	Executions []Execution
	Replays    []FinalReplay
	Unexpected []UnexpectedAnswer
	GaveUp     []GaveUp
}

// Kind is a kind of violation.
type Kind string

// The kinds of violation Check reports, in report order.
const (
	// KindReplayMismatch: an acknowledged 2xx that the final replay of its
	// key does not return byte for byte (status and body), or a key whose
	// final replay gave no 2xx at all.
	KindReplayMismatch Kind = "replay-mismatch"
	// KindDivergent: two different 2xx (status or body) acknowledged for
	// one key.
	KindDivergent Kind = "divergent-2xx"
	// KindReexecution: an upstream execution of a key that started after a
	// 2xx for that key had been acknowledged.
	KindReexecution Kind = "re-execution"
	// KindFenceReuse: two executions of one key with the same fence.
	KindFenceReuse Kind = "fence-reuse"
	// KindNoFence: an execution without an Idempotency-Fence header.
	KindNoFence Kind = "no-fence"
	// KindOmitted: a 2xx (acknowledged or final replay) marked
	// Idempotency-Replay: omitted; the suite keeps bodies small, so a
	// replay must carry the body.
	KindOmitted Kind = "omitted"
	// KindUnexpected: a 422 or another status that no correct run gives.
	KindUnexpected Kind = "unexpected-status"
	// KindGaveUp: an operation that got no 2xx within its bound.
	KindGaveUp Kind = "gave-up"
)

// Kinds lists every Kind in report order.
var Kinds = []Kind{KindReplayMismatch, KindDivergent, KindReexecution, KindFenceReuse,
	KindNoFence, KindOmitted, KindUnexpected, KindGaveUp}

// Violation is one breach of the contract found in a history.
type Violation struct {
	Kind   Kind
	Key    string
	Detail string
}

func (v Violation) String() string { return fmt.Sprintf("%s key=%q: %s", v.Kind, v.Key, v.Detail) }

// Check returns every violation in h (none for a correct run), sorted by
// kind, key and detail:
//
//  1. an acknowledged 2xx that the final replay does not return byte for
//     byte (status and body), or no final 2xx for an acknowledged key;
//  2. two different 2xx acknowledged for one key;
//  3. an execution of a key that started after a 2xx for the key was
//     acknowledged (a re-execution);
//  4. two executions of one key with the same fence (or one without a
//     fence);
//
// plus any 2xx marked Idempotency-Replay: omitted, the unexpected statuses
// and the operations given up that the clients recorded.
func Check(h History) []Violation {
	var vs []Violation
	add := func(k Kind, key, format string, args ...any) {
		vs = append(vs, Violation{Kind: k, Key: key, Detail: fmt.Sprintf(format, args...)})
	}

	acks := map[string][]Ack{}
	var keys []string
	for _, a := range h.Acks {
		if _, ok := acks[a.Key]; !ok {
			keys = append(keys, a.Key)
		}
		acks[a.Key] = append(acks[a.Key], a)
	}
	replays := map[string][]FinalReplay{}
	for _, r := range h.Replays {
		replays[r.Key] = append(replays[r.Key], r)
		if isOmitted(r.Replay) {
			add(KindOmitted, r.Key, "final replay %d marked Idempotency-Replay: %s", r.Status, r.Replay)
		}
	}
	firstAck := map[string]Ack{}
	for _, key := range keys {
		list := acks[key]
		first := list[0]
		for _, a := range list {
			if a.At.Before(first.At) {
				first = a
			}
			if isOmitted(a.Replay) {
				add(KindOmitted, key, "%d acknowledged to %s marked Idempotency-Replay: %s", a.Status, a.Caller, a.Replay)
			}
		}
		firstAck[key] = first

		// (2) every acknowledged 2xx of a key is the same.
		for _, a := range list[1:] {
			if a.Status != list[0].Status || !bytes.Equal(a.Body, list[0].Body) {
				add(KindDivergent, key, "%s got %d %s but %s got %d %s", list[0].Caller, list[0].Status, short(list[0].Body),
					a.Caller, a.Status, short(a.Body))
			}
		}

		// (1) the final replay returns every acknowledged 2xx.
		reps := replays[key]
		if len(reps) == 0 {
			add(KindReplayMismatch, key, "no final replay of a key acknowledged %d time(s)", len(list))
			continue
		}
		for _, r := range reps {
			if r.Status < 200 || r.Status > 299 {
				add(KindReplayMismatch, key, "final replay gave %d %s (%s), not the %d acknowledged to %s", r.Status, short(r.Body),
					orNone(r.Err), first.Status, first.Caller)
				continue
			}
			for _, a := range list {
				if r.Status != a.Status || !bytes.Equal(r.Body, a.Body) {
					add(KindReplayMismatch, key, "%s was acknowledged %d %s; final replay gave %d %s (Idempotency-Replayed %q)",
						a.Caller, a.Status, short(a.Body), r.Status, short(r.Body), r.Replayed)
				}
			}
		}
	}

	exec := map[string][]Execution{}
	var execKeys []string
	for _, e := range h.Executions {
		if _, ok := exec[e.Key]; !ok {
			execKeys = append(execKeys, e.Key)
		}
		exec[e.Key] = append(exec[e.Key], e)
	}
	for _, key := range execKeys {
		list := exec[key]
		fences := map[string][]uint64{}
		var order []string
		for _, e := range list {
			if e.Fence == "" {
				add(KindNoFence, key, "execution %d (status %d) carried no Idempotency-Fence", e.ID, e.Status)
			} else {
				if _, ok := fences[e.Fence]; !ok {
					order = append(order, e.Fence)
				}
				fences[e.Fence] = append(fences[e.Fence], e.ID)
			}
			// (3) nothing executes after a 2xx was acknowledged.
			if a, ok := firstAck[key]; ok && e.Start.After(a.At) {
				add(KindReexecution, key, "execution %d (fence %s, status %d) started %v after %s was acknowledged %d %s",
					e.ID, orNone(e.Fence), e.Status, e.Start.Sub(a.At).Round(time.Microsecond), a.Caller, a.Status, short(a.Body))
			}
		}
		// (4) one execution per fence.
		for _, f := range order {
			if ids := fences[f]; len(ids) > 1 {
				add(KindFenceReuse, key, "fence %s used by %d executions %v", f, len(ids), ids)
			}
		}
	}

	for _, r := range h.Unexpected {
		add(KindUnexpected, r.Key, "%s got %d %s", r.Caller, r.Status, short(r.Body))
	}
	for _, g := range h.GaveUp {
		add(KindGaveUp, g.Key, "%s gave up after %d attempts; last: %s", g.Caller, g.Attempts, g.Last)
	}

	rank := map[Kind]int{}
	for i, k := range Kinds {
		rank[k] = i
	}
	slices.SortStableFunc(vs, func(a, b Violation) int {
		return cmp.Or(cmp.Compare(rank[a.Kind], rank[b.Kind]), strings.Compare(a.Key, b.Key), strings.Compare(a.Detail, b.Detail))
	})
	return vs
}

// Count returns the number of violations of each kind (every Kind present,
// zero included).
func Count(vs []Violation) map[Kind]int {
	n := make(map[Kind]int, len(Kinds))
	for _, k := range Kinds {
		n[k] = 0
	}
	for _, v := range vs {
		n[v.Kind]++
	}
	return n
}

// Summary describes the violations by kind in one line: "0" when there are
// none, else "3 (re-execution 2, fence-reuse 1)".
func Summary(vs []Violation) string {
	if len(vs) == 0 {
		return "0"
	}
	n := Count(vs)
	var parts []string
	for _, k := range Kinds {
		if n[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n[k]))
		}
	}
	return fmt.Sprintf("%d (%s)", len(vs), strings.Join(parts, ", "))
}

func isOmitted(h string) bool { return strings.EqualFold(strings.TrimSpace(h), "omitted") }

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// short quotes a body for a report, cut at 160 bytes.
func short(b []byte) string {
	const max = 160
	if len(b) > max {
		return fmt.Sprintf("%q…(%d bytes)", b[:max], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// Lost returns the keys, sorted, whose acknowledged 2xx the final replay
// did not return (the keys of the replay-mismatch violations in vs): the
// acknowledged responses a run lost. The fault suite reports their number
// where it measures a loss instead of failing on it (a Redis failover
// without wait_replicas, docs/reliability.md).
func Lost(vs []Violation) []string {
	var keys []string
	for _, v := range vs {
		if v.Kind == KindReplayMismatch {
			keys = append(keys, v.Key)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
