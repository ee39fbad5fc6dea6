package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/idemkit/idem/internal/testenv"
)

// TestRunSmoke runs every workload briefly, so the benchmark cannot rot.
func TestRunSmoke(t *testing.T) {
	dsn := testenv.Need(t, "IDEM_POSTGRES_DSN")
	for _, tx := range []string{"-tx=false", "-tx=true"} {
		var out bytes.Buffer
		args := []string{"-dsn", dsn, "-rounds", "1", "-dur", "30ms", "-workers", "2", "-replay-keys", "20", tx}
		if tx == "-tx=false" {
			args = append(args, "-costs", "5", "-stats-wait", "0s")
		}
		if err := run(context.Background(), args, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		wants := []string{"pgxstore begin+complete pair", "pgxstore replay, synchronous_commit off", "pgxstore Claim", "pgxstore ClaimBatch, 1000 ids", "cost vs floor"}
		if tx == "-tx=false" {
			wants = append(wants, "takeover (lease expired)", "total bytes/row after VACUUM FULL")
		}
		for _, want := range wants {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("%s: report lacks %q:\n%s", tx, want, out.String())
			}
		}
	}
}

func TestRatios(t *testing.T) {
	got := ratios([]float64{10, 20, 30}, []float64{5, 0, 10, 7})
	if len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("ratios = %v, want [2 3] (zero divisors skipped, extra rounds ignored)", got)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
