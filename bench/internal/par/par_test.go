package par

import (
	"errors"
	"sync"
	"testing"
)

func TestRun(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]bool{}
	workers := map[int]bool{}
	d, err := Run(4, 100, func(w, i int) error {
		mu.Lock()
		defer mu.Unlock()
		if seen[i] {
			t.Errorf("call %d twice", i)
		}
		seen[i], workers[w] = true, true
		return nil
	})
	if err != nil || d <= 0 || len(seen) != 100 || !seen[1] || !seen[100] {
		t.Fatalf("Run = %v, %v; %d calls", d, err, len(seen))
	}
	for w := range workers {
		if w < 0 || w >= 4 {
			t.Errorf("worker %d", w)
		}
	}
	boom := errors.New("boom")
	if _, err := Run(2, 10, func(w, i int) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("error %v, want boom", err)
	}
}
