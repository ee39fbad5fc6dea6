package webhook

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/idemkit/idem"
)

// Problem codes: the stable "code" member of every RFC 9457
// application/problem+json answer the handler writes itself. Senders retry
// every non-2xx answer; the codes are for the operator reading the sender's
// delivery log, and never depend on whether an id was processed.
const (
	// CodeSignatureMissing (401): the request is unsigned
	// (ErrSignatureMissing). Nothing was claimed or looked up.
	CodeSignatureMissing = "webhook-signature-missing"
	// CodeSignatureInvalid (401): no signature matches
	// (ErrSignatureInvalid), or a custom Verifier refused the request with
	// another error. Nothing was claimed or looked up.
	CodeSignatureInvalid = "webhook-signature-invalid"
	// CodeSignatureMalformed (400): the signature headers cannot be parsed
	// (ErrSignatureMalformed). Nothing was claimed or looked up.
	CodeSignatureMalformed = "webhook-signature-malformed"
	// CodeTimestampStale (401): the signature is authentic but its
	// timestamp is outside the tolerance (ErrTimestampStale). Nothing was
	// claimed or looked up.
	CodeTimestampStale = "webhook-timestamp-stale"
	// CodeIDMissing (400): the request carries no event id (ErrNoID).
	CodeIDMissing = "webhook-id-missing"
	// CodeIDInvalid (400): the event id is not 1 to 255 bytes of visible
	// ASCII, or its header was given twice (idem.ErrInvalidKey).
	CodeIDInvalid = "webhook-id-invalid"
	// CodeTooLarge (413): the body is longer than Config.MaxBody
	// (ErrBodyTooLarge).
	CodeTooLarge = "request-too-large"
	// CodeBodyUnreadable (400): the body could not be read.
	CodeBodyUnreadable = "request-body-unreadable"
	// CodeInProgress (409): the same event is being processed now;
	// Retry-After gives the seconds left on its lease.
	CodeInProgress = "request-in-progress"
	// CodeStoreUnavailable (503): the deduplication store could not be
	// reached; the handler did not run. Retry-After is set.
	CodeStoreUnavailable = "store-unavailable"
)

// ProblemTypePrefix is prefixed to a problem code to form the problem's
// "type" URI (the same prefix as package idemhttp's).
const ProblemTypePrefix = "urn:idem:problem:"

type problemDef struct {
	status        int
	title, detail string
}

var problems = map[string]problemDef{
	CodeSignatureMissing:   {401, "Webhook signature missing", "This endpoint accepts signed webhooks only."},
	CodeSignatureInvalid:   {401, "Webhook signature invalid", "The webhook signature does not match."},
	CodeSignatureMalformed: {400, "Webhook signature malformed", "The webhook signature headers could not be parsed."},
	CodeTimestampStale:     {401, "Webhook timestamp outside tolerance", "The webhook was signed too long ago or in the future; check the sender's clock."},
	CodeIDMissing:          {400, "Webhook id missing", "The webhook carries no event id."},
	CodeIDInvalid:          {400, "Webhook id invalid", "The webhook event id must be given once, as 1 to 255 bytes of visible ASCII."},
	CodeTooLarge:           {413, "Request too large", "The webhook body exceeds this endpoint's limit."},
	CodeBodyUnreadable:     {400, "Request body unreadable", "The webhook body could not be read."},
	CodeInProgress:         {409, "Webhook in progress", "This event is being processed; retry after the time given in Retry-After."},
	CodeStoreUnavailable:   {503, "Deduplication store unavailable", "The webhook was not processed; retry later."},
}

var problemBodies = func() map[string][]byte {
	m := make(map[string][]byte, len(problems))
	for code, p := range problems {
		b, _ := json.Marshal(struct {
			Type   string `json:"type"`
			Title  string `json:"title"`
			Status int    `json:"status"`
			Detail string `json:"detail"`
			Code   string `json:"code"`
		}{ProblemTypePrefix + code, p.title, p.status, p.detail, code})
		m[code] = append(b, '\n')
	}
	return m
}()

// writeProblem writes the problem for code (one of the Code constants) with
// its fixed detail: nothing of the request or of the error is reflected.
func writeProblem(w http.ResponseWriter, code string) {
	body := problemBodies[code]
	h := w.Header()
	h["Content-Type"] = []string{"application/problem+json"}
	h["Cache-Control"] = []string{"no-store"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(problems[code].status)
	_, _ = w.Write(body)
}

// errBodyUnreadable wraps a failure to read the request body.
var errBodyUnreadable = errors.New("webhook: reading body")

// refusalCode returns the problem code answering err, an error of
// verification or of EventID.
func refusalCode(err error, verifying bool) string {
	switch {
	case errors.Is(err, ErrBodyTooLarge):
		return CodeTooLarge
	case errors.Is(err, errBodyUnreadable):
		return CodeBodyUnreadable
	case verifying:
		switch {
		case errors.Is(err, ErrSignatureMissing):
			return CodeSignatureMissing
		case errors.Is(err, ErrSignatureMalformed):
			return CodeSignatureMalformed
		case errors.Is(err, ErrTimestampStale):
			return CodeTimestampStale
		}
		return CodeSignatureInvalid
	case errors.Is(err, idem.ErrInvalidKey):
		return CodeIDInvalid
	}
	return CodeIDMissing
}
