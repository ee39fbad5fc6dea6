package server

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	paymentsv1 "github.com/idemkit/idem/examples/grpc-payments/proto/payments/v1"
)

// watchBuffer is how many payments a watcher may lag behind before its
// stream is ended.
const watchBuffer = 64

// Ledger is the example's book of payments, in memory. It stands for the
// card processor and the database of a real service: Charge is the effect
// that must happen once per request. A Ledger is safe for concurrent use.
type Ledger struct {
	mu       sync.Mutex
	payments []*paymentsv1.Payment
	byID     map[string]*paymentsv1.Payment
	watchers map[*watcher]struct{}
	now      func() time.Time
}

// NewLedger returns an empty ledger on the real clock.
func NewLedger() *Ledger {
	return &Ledger{byID: map[string]*paymentsv1.Payment{}, watchers: map[*watcher]struct{}{}, now: time.Now}
}

// Charge records a charge of amountCents in currency and returns the new
// payment, with its id and creation time.
func (l *Ledger) Charge(amountCents int64, currency, description string) *paymentsv1.Payment {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := &paymentsv1.Payment{
		// Random, so that ids stay unique across restarts (the idempotency
		// records of a file: store outlive this in-memory ledger).
		Id:          fmt.Sprintf("pay_%016x", rand.Uint64()),
		AmountCents: amountCents,
		Currency:    currency,
		Description: description,
		CreateTime:  timestamppb.New(l.now()),
	}
	l.payments = append(l.payments, p)
	l.byID[p.Id] = p
	for w := range l.watchers {
		w.offer(p)
	}
	return proto.CloneOf(p)
}

// Get returns the payment with the given id.
func (l *Ledger) Get(id string) (*paymentsv1.Payment, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.byID[id]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(p), true
}

// Charges returns how many charges the ledger holds.
func (l *Ledger) Charges() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.payments)
}

// watch returns the payments charged so far and a watcher that receives
// every later one, in order. The caller must call unwatch.
func (l *Ledger) watch() ([]*paymentsv1.Payment, *watcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := &watcher{ch: make(chan *paymentsv1.Payment, watchBuffer), overflow: make(chan struct{})}
	l.watchers[w] = struct{}{}
	past := make([]*paymentsv1.Payment, len(l.payments))
	for i, p := range l.payments {
		past[i] = proto.CloneOf(p)
	}
	return past, w
}

// unwatch stops delivering payments to w.
func (l *Ledger) unwatch(w *watcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.watchers, w)
}

// watcher is one WatchPayments stream's subscription.
type watcher struct {
	ch       chan *paymentsv1.Payment
	overflow chan struct{} // closed when a payment did not fit in ch
	lagging  bool
}

// offer hands p to the watcher, or marks it as lagging when its buffer is
// full (its stream then ends: a watch never skips a payment silently).
// Called with the ledger's lock held.
func (w *watcher) offer(p *paymentsv1.Payment) {
	if w.lagging {
		return
	}
	select {
	case w.ch <- proto.CloneOf(p):
	default:
		w.lagging = true
		close(w.overflow)
	}
}
