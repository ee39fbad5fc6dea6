// Package par runs a benchmark's calls over a fixed number of goroutines.
package par

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Run makes n calls of f, numbered 1 to n, over conc goroutines (f gets its
// goroutine's number, from 0, and the call's), and returns how long they
// took. A goroutine stops at its first error; Run returns them all.
func Run(conc, n int, f func(worker, i int) error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, conc)
	start := time.Now()
	for w := range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				if err := f(w, i); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}
