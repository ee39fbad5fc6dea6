package webhook_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/idemkit/idem"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/webhook"
	"github.com/idemkit/idem/memstore"
)

// A Standard Webhooks sender retries a delivery whose answer it never saw;
// the notification goes out once and the retry gets a 200. A forged request
// for the same id is refused before the store is asked, so it learns nothing.
func ExampleHandler() {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // from the sender's dashboard
	sent := time.Unix(1614265330, 0)
	now := func() time.Time { return sent.Add(30 * time.Second) } // the receiver's clock (time.Now in production)

	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}}
	notified := 0
	h := webhook.Handler(webhook.Config{
		Deduper:  d,
		Verifier: webhook.Standard{Secrets: []string{secret}, Now: now},
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		notified++
		w.WriteHeader(http.StatusNoContent)
	}))

	deliver := func(signature string) {
		body := `{"type":"invoice.paid"}`
		r := httptest.NewRequest(http.MethodPost, "/hooks/billing", strings.NewReader(body))
		r.Header.Set("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
		r.Header.Set("webhook-timestamp", strconv.FormatInt(sent.Unix(), 10))
		if signature == "" {
			signature, _ = webhook.SignStandard(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", sent, []byte(body))
		}
		r.Header.Set("webhook-signature", signature)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Println(w.Code, "replayed:", w.Header().Get("Idempotent-Replayed") == "true")
	}
	deliver("")                                                // the delivery
	deliver("")                                                // the sender's retry
	deliver("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=") // a forgery
	fmt.Println("notifications:", notified)
	// Output:
	// 204 replayed: false
	// 200 replayed: true
	// 401 replayed: false
	// notifications: 1
}

// Stripe sends no id header: the event id is the body's "id" field, which
// Handler reads by default with a Stripe verifier.
func ExampleHandler_stripe() {
	const secret = "whsec_your_endpoint_secret"
	sent := time.Unix(1700000000, 0)
	now := func() time.Time { return sent.Add(2 * time.Second) }
	h := webhook.Handler(webhook.Config{
		Deduper:  &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}},
		Verifier: webhook.Stripe{Secrets: []string{secret}, Now: now},
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))

	body := `{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"payment_intent.succeeded"}`
	for _, sig := range []string{
		webhook.SignStripe(secret, sent, []byte(body)),
		webhook.SignStripe(secret, sent.Add(-time.Hour), []byte(body)), // captured an hour ago
	} {
		r := httptest.NewRequest(http.MethodPost, "/stripe", strings.NewReader(body))
		r.Header.Set("Stripe-Signature", sig)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var problem struct{ Code string }
		_ = json.Unmarshal(w.Body.Bytes(), &problem) // an RFC 9457 problem when refused
		fmt.Printf("%d %q\n", w.Code, problem.Code)
	}
	// Output:
	// 200 ""
	// 401 "webhook-timestamp-stale"
}

// Verifying without the handler, in any framework: VerifyStandard takes the
// headers, the raw body and the clock. This is the Standard Webhooks
// specification's own example.
func ExampleVerifyStandard() {
	h := http.Header{}
	h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set("webhook-timestamp", "1614265330")
	h.Set("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	body := []byte(`{"test": 2432232314}`)
	secrets := []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}

	fmt.Println(webhook.VerifyStandard(secrets, h, body, time.Unix(1614265330, 0), 0))
	err := webhook.VerifyStandard(secrets, h, body, time.Unix(1614265330, 0).Add(time.Hour), 0)
	fmt.Println(errors.Is(err, webhook.ErrTimestampStale))
	err = webhook.VerifyStandard(secrets, h, []byte(`{"test": 1}`), time.Unix(1614265330, 0), 0)
	fmt.Println(errors.Is(err, webhook.ErrSignatureInvalid))
	// Output:
	// <nil>
	// true
	// true
}

// Signing for a test or a sender.
func ExampleSignStandard() {
	sig, err := webhook.SignStandard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
		time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	fmt.Println(sig, err)
	// Output:
	// v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= <nil>
}

// Verifying a Stripe webhook outside the handler.
func ExampleVerifyStripe() {
	body := []byte(`{"id":"evt_1","object":"event"}`)
	sent := time.Unix(1700000000, 0)
	h := http.Header{}
	h.Set("Stripe-Signature", webhook.SignStripe("whsec_test", sent, body)+",v0=ignored")

	fmt.Println(webhook.VerifyStripe([]string{"whsec_test"}, h, body, sent.Add(time.Minute), 0))
	err := webhook.VerifyStripe([]string{"whsec_other"}, h, body, sent.Add(time.Minute), 0)
	fmt.Println(errors.Is(err, webhook.ErrSignatureInvalid))
	// Output:
	// <nil>
	// true
}
