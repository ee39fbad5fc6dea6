package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// clean is a correct history: two keys, one executed once, one executed
// twice (a 500, then a 201 with a newer fence), both acknowledged (one to
// two callers) and replayed identically.
func clean() History {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	bodyA := []byte(`{"key":"a","exec":1,"fence":"10"}`)
	bodyB := []byte(`{"key":"b","exec":3,"fence":"21"}`)
	return History{
		Executions: []Execution{
			{Key: "a", ID: 1, Fence: "10", Start: at(0), Status: 201},
			{Key: "b", ID: 2, Fence: "20", Start: at(1), Status: 500},
			{Key: "b", ID: 3, Fence: "21", Start: at(30), Status: 201},
		},
		Acks: []Ack{
			{Key: "a", Caller: "c1", Status: 201, Body: bodyA, At: at(10)},
			{Key: "a", Caller: "c2", Status: 201, Body: bodyA, Replayed: "true", At: at(12)},
			{Key: "b", Caller: "c1", Status: 201, Body: bodyB, At: at(40)},
		},
		Replays: []FinalReplay{
			{Key: "a", Status: 201, Body: bodyA, Replayed: "true", At: at(100)},
			{Key: "b", Status: 201, Body: bodyB, Replayed: "true", At: at(101)},
		},
	}
}

func TestCheckClean(t *testing.T) {
	if vs := Check(clean()); len(vs) != 0 {
		t.Fatalf("violations in a clean history: %v", vs)
	}
	if got := Summary(nil); got != "0" {
		t.Fatalf("Summary(nil) = %q", got)
	}
	// An empty history is clean too.
	if vs := Check(History{}); len(vs) != 0 {
		t.Fatalf("violations in an empty history: %v", vs)
	}
}

// TestCheckCatches feeds the checker one defect at a time and expects
// exactly the kinds it causes.
func TestCheckCatches(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	cases := []struct {
		name   string
		mutate func(h *History)
		want   map[Kind]int
	}{
		{"replay differs from the ack (acknowledged, never stored)", func(h *History) {
			// Kill -9 between the response and the completion: the retry
			// after the lease executed again and the replay is the new one.
			h.Replays[0].Body = []byte(`{"key":"a","exec":9,"fence":"11"}`)
		}, map[Kind]int{KindReplayMismatch: 2}},
		{"replay status differs", func(h *History) {
			h.Replays[1].Status = 200
		}, map[Kind]int{KindReplayMismatch: 1}},
		{"replay not 2xx", func(h *History) {
			h.Replays[1] = FinalReplay{Key: "b", Status: 409, Body: []byte(`{"code":"request-in-progress"}`), Err: "gave up"}
		}, map[Kind]int{KindReplayMismatch: 1}},
		{"no final replay", func(h *History) {
			h.Replays = h.Replays[:1]
		}, map[Kind]int{KindReplayMismatch: 1}},
		{"two different 2xx for one key", func(h *History) {
			h.Acks[1].Body = []byte(`{"key":"a","exec":7,"fence":"11"}`)
		}, map[Kind]int{KindDivergent: 1, KindReplayMismatch: 1}},
		{"two different 2xx statuses for one key", func(h *History) {
			h.Acks[1].Status = 200
		}, map[Kind]int{KindDivergent: 1, KindReplayMismatch: 1}},
		{"re-execution after an ack", func(h *History) {
			h.Executions = append(h.Executions, Execution{Key: "a", ID: 4, Fence: "11", Start: t0.Add(11 * time.Millisecond), Status: 201})
		}, map[Kind]int{KindReexecution: 1}},
		{"same fence twice (transport resend)", func(h *History) {
			h.Executions = append(h.Executions, Execution{Key: "b", ID: 5, Fence: "21", Start: t0.Add(31 * time.Millisecond), Status: 201})
		}, map[Kind]int{KindFenceReuse: 1}},
		{"execution without a fence", func(h *History) {
			h.Executions[0].Fence = ""
		}, map[Kind]int{KindNoFence: 1}},
		{"omitted replay", func(h *History) {
			h.Replays[0].Body, h.Replays[0].Replay = nil, "omitted"
		}, map[Kind]int{KindOmitted: 1, KindReplayMismatch: 2}},
		{"omitted ack", func(h *History) {
			h.Acks[1].Replay = "omitted"
		}, map[Kind]int{KindOmitted: 1}},
		{"422", func(h *History) {
			h.Unexpected = append(h.Unexpected, UnexpectedAnswer{Key: "a", Caller: "c3", Status: 422, Body: []byte(`{"code":"idempotency-key-reused"}`)})
		}, map[Kind]int{KindUnexpected: 1}},
		{"gave up", func(h *History) {
			h.GaveUp = append(h.GaveUp, GaveUp{Key: "c", Caller: "c1", Attempts: 99, Last: "409"})
		}, map[Kind]int{KindGaveUp: 1}},
		{"everything at once", func(h *History) {
			h.Acks[1].Body = []byte("other")
			h.Executions = append(h.Executions,
				Execution{Key: "b", ID: 6, Fence: "21", Start: t0.Add(time.Second), Status: 201},
				Execution{Key: "a", ID: 7, Start: t0.Add(time.Second), Status: 201})
		}, map[Kind]int{KindDivergent: 1, KindReplayMismatch: 1, KindReexecution: 2, KindFenceReuse: 1, KindNoFence: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := clean()
			tc.mutate(&h)
			vs := Check(h)
			got := Count(vs)
			for _, k := range Kinds {
				if got[k] != tc.want[k] {
					t.Errorf("%s: %d violations, want %d", k, got[k], tc.want[k])
				}
			}
			if t.Failed() {
				t.Logf("violations:\n%s", join(vs))
			}
			for _, v := range vs {
				if v.Key == "" || v.Detail == "" || !strings.Contains(v.String(), string(v.Kind)) {
					t.Errorf("incomplete violation %+v", v)
				}
			}
		})
	}
}

// TestCheckTiming: an execution that started before the first ack (a
// released 500, an execution that lost its lease) is not a re-execution,
// whatever came after; the first ack is the earliest, not the first listed.
func TestCheckTiming(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	body := []byte("r")
	h := History{
		Executions: []Execution{
			{Key: "k", ID: 1, Fence: "1", Start: t0, Status: 201},
			{Key: "k", ID: 2, Fence: "2", Start: t0.Add(5 * time.Millisecond), Status: 201},
		},
		Acks: []Ack{
			{Key: "k", Caller: "late", Status: 201, Body: body, At: t0.Add(50 * time.Millisecond)},
			{Key: "k", Caller: "early", Status: 201, Body: body, At: t0.Add(10 * time.Millisecond)},
		},
		Replays: []FinalReplay{{Key: "k", Status: 201, Body: body}},
	}
	if vs := Check(h); len(vs) != 0 {
		t.Fatalf("violations: %v", vs)
	}
	h.Executions = append(h.Executions, Execution{Key: "k", ID: 3, Fence: "3", Start: t0.Add(20 * time.Millisecond), Status: 201})
	vs := Check(h)
	if len(vs) != 1 || vs[0].Kind != KindReexecution || !strings.Contains(vs[0].Detail, "early") {
		t.Fatalf("want one re-execution after the early ack, got %v", vs)
	}
	// Same fence on different keys is fine.
	h = History{Executions: []Execution{{Key: "x", ID: 1, Fence: "7", Start: t0}, {Key: "y", ID: 2, Fence: "7", Start: t0}}}
	if vs := Check(h); len(vs) != 0 {
		t.Fatalf("violations: %v", vs)
	}
}

func TestSummaryAndOrder(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	h := History{
		GaveUp: []GaveUp{{Key: "z", Caller: "c", Attempts: 3, Last: "503"}},
		Executions: []Execution{
			{Key: "b", ID: 1, Fence: "1", Start: t0}, {Key: "b", ID: 2, Fence: "1", Start: t0},
			{Key: "a", ID: 3, Fence: "1", Start: t0}, {Key: "a", ID: 4, Fence: "1", Start: t0},
		},
	}
	vs := Check(h)
	if got := Summary(vs); got != "3 (fence-reuse 2, gave-up 1)" {
		t.Fatalf("Summary = %q", got)
	}
	if vs[0].Key != "a" || vs[1].Key != "b" || vs[2].Kind != KindGaveUp {
		t.Fatalf("order: %v", vs)
	}
}

func join(vs []Violation) string {
	var b strings.Builder
	for _, v := range vs {
		fmt.Fprintln(&b, " ", v)
	}
	return b.String()
}

// TestLost: the keys of the replay mismatches, each once, sorted; nothing
// for a clean history or for violations of other kinds.
func TestLost(t *testing.T) {
	if got := Lost(Check(clean())); len(got) != 0 {
		t.Fatalf("Lost(clean) = %v", got)
	}
	h := clean()
	h.Replays[0].Body = []byte("other")                        // both acks of "a" lost: two violations, one key
	h.Replays[1].Status = 409                                  // "b" lost
	h.GaveUp = append(h.GaveUp, GaveUp{Key: "c", Caller: "x"}) // not a loss
	got := Lost(Check(h))
	if strings.Join(got, ",") != "a,b" {
		t.Fatalf("Lost = %v, want [a b]", got)
	}
}
