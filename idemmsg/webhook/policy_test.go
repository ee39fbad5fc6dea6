package webhook_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/webhook"
)

// The wrapped handler sees its lease; a custom IDFunc picks the id; a
// delivery that keeps failing is poisoned after MaxAttempts (OnPoison gets
// the body) and answered 200; an id reused with another body is answered 200
// and reported as a mismatch.
func TestHandlerLeasePoisonMismatch(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var poisoned []idemmsg.Poison
	var reported []error
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, MaxAttempts: 2, FingerprintPayload: true,
		OnPoison: func(_ context.Context, p idemmsg.Poison) error {
			mu.Lock()
			defer mu.Unlock()
			poisoned = append(poisoned, p)
			return nil
		}}
	h := webhook.Handler(webhook.Config{
		Deduper: d, Unverified: true,
		ID: func(r *http.Request) (string, error) { return r.URL.Query().Get("id"), nil },
		OnError: func(_ *http.Request, err error) {
			mu.Lock()
			defer mu.Unlock()
			reported = append(reported, err)
		},
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := idem.LeaseFromContext(r.Context()); !ok {
			t.Error("the wrapped handler's context carries no lease")
		}
		if r.URL.Query().Get("fail") != "" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	if w := post(h, "/hook?id=ok", "a"); w.Code != 200 {
		t.Fatalf("ok: %d", w.Code)
	}
	if w := post(h, "/hook?id=ok", "b"); w.Code != 200 {
		t.Fatalf("reused id: %d", w.Code)
	}
	if w := post(h, "/hook?id=bad&fail=1", "p"); w.Code != 500 {
		t.Fatalf("first failure: %d", w.Code)
	}
	post(h, "/hook?id=bad&fail=1", "p") // the second failure poisons it
	if w := post(h, "/hook?id=bad&fail=1", "p"); w.Code != 200 || w.Header().Get("Idempotent-Replayed") == "" {
		t.Fatalf("after poisoning: %d", w.Code)
	}
	if w := post(h, "/hook", "x"); w.Code != 400 {
		t.Fatalf("empty id: %d", w.Code)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(poisoned) != 1 || poisoned[0].ID != "bad" || string(poisoned[0].Payload) != "p" {
		t.Fatalf("OnPoison got %+v", poisoned)
	}
	var mismatch, poison bool
	for _, err := range reported {
		mismatch = mismatch || errors.Is(err, idem.ErrMismatch)
		poison = poison || errors.Is(err, idemmsg.ErrPoisoned)
	}
	if !mismatch || !poison {
		t.Fatalf("reported %v", reported)
	}
}
