package idemhttp

import (
	"net/http"
	"time"
)

// readBodyTimed reads the body as readBody does, within h.bodyTimeout when
// the writer supports read deadlines. After a successful read the deadline
// is lifted, so that net/http's watch for a client that goes away keeps
// working while the handler runs; after a failed one it is left in the
// past, so that net/http does not wait for the rest of the body either
// (the connection is closed after the answer).
func (h *handler) readBodyTimed(w http.ResponseWriter, r *http.Request) (*[]byte, error) {
	if h.bodyTimeout <= 0 || r.Body == nil || r.Body == http.NoBody {
		return h.readBody(r)
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(h.bodyTimeout)) != nil {
		return h.readBody(r) // not supported (a recorder, some wrappers)
	}
	bp, err := h.readBody(r)
	if err != nil {
		_ = rc.SetReadDeadline(time.Now())
		return bp, err
	}
	_ = rc.SetReadDeadline(time.Time{})
	return bp, err
}
