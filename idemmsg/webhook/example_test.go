package webhook_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/webhook"
	"github.com/idemkit/idem/memstore"
)

// A sender retries a delivery whose answer it never saw; the notification
// goes out once and the retry gets a 200.
func ExampleHandler() {
	d := &idemmsg.Deduper{Store: memstore.New(memstore.Options{})}
	notified := 0
	h := webhook.Handler(webhook.Config{Deduper: d}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		notified++
		w.WriteHeader(http.StatusNoContent)
	}))
	for range 2 {
		r := httptest.NewRequest(http.MethodPost, "/hooks/billing", nil)
		r.Header.Set("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Println(w.Code, "replayed:", w.Header().Get("Idempotent-Replayed") == "true")
	}
	fmt.Println("notifications:", notified)
	// Output:
	// 204 replayed: false
	// 200 replayed: true
	// notifications: 1
}
