package idemclient_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem/idemclient"
)

// A server that is briefly unavailable: the Transport waits the Retry-After
// and sends the POST again with the same Idempotency-Key.
func Example() {
	var (
		mu   sync.Mutex
		keys = map[string]int{} // key → times seen
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys[r.Header.Get("Idempotency-Key")]++
		first := len(keys) == 1 && keys[r.Header.Get("Idempotency-Key")] == 1
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "charge ch_1")
	}))
	defer srv.Close()

	client := &http.Client{Transport: &idemclient.Transport{
		Base: srv.Client().Transport, // usually left nil: http.DefaultTransport
		OnAttempt: func(a idemclient.AttemptInfo) {
			fmt.Printf("attempt %d: status %d, retry %v after %v\n", a.N, a.Status, a.Retry, a.Delay)
		},
	}}
	resp, err := client.Post(srv.URL+"/charges", "application/json", strings.NewReader(`{"amount":100}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("%d %s; distinct keys sent: %d; replayed: %v\n", resp.StatusCode, body, len(keys), idemclient.Replayed(resp))
	// Output:
	// attempt 1: status 503, retry true after 0s
	// attempt 2: status 201, retry false after 0s
	// 201 charge ch_1; distinct keys sent: 1; replayed: false
}

// A caller that persists its key (say, next to an order) sets it itself and
// says when it was first used, so that a retry in a later process never sends
// a key the server may have forgotten.
func ExampleWithKeyTime() {
	tr := &idemclient.Transport{
		KeyMaxAge: 23 * time.Hour, // the server keeps keys 24 h
		Base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			panic("not reached: the key is too old to send")
		}),
	}
	firstSent := time.Now().Add(-25 * time.Hour) // loaded with the key
	req, _ := http.NewRequest(http.MethodPost, "https://api.example.test/orders/42/pay", nil)
	req.Header.Set("Idempotency-Key", "order-42-payment")
	req = req.WithContext(idemclient.WithKeyTime(req.Context(), firstSent))

	_, err := tr.RoundTrip(req)
	fmt.Println(err)
	// Output:
	// idemclient: POST https://api.example.test/orders/42/pay (key "order-42-payment"): 0 attempts, stopped: idempotency key older than KeyMaxAge
}

func ExampleParseRetryAfter() {
	now := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	for _, v := range []string{"120", "Sat, 28 Nov 2026 08:00:30 GMT", "soon"} {
		d, ok := idemclient.ParseRetryAfter(v, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 2m0s true
	// 30s true
	// 0s false
}

func ExampleReplayed() {
	resp := &http.Response{StatusCode: 201, Header: http.Header{"Idempotency-Replayed": {"true"}}}
	fmt.Println(idemclient.Replayed(resp))
	// Output: true
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
