package idemhttp

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Problem codes: the stable "code" member of every problem+json answer the
// middleware writes (RFC 9457). Clients branch on these, never on titles or
// details.
const (
	// CodeKeyMissing (400): a protected request carried no key and keys are
	// required.
	CodeKeyMissing = "idempotency-key-missing"
	// CodeKeyInvalid (400): the key is empty, longer than 255 bytes, not
	// visible ASCII, a malformed sf-string, or the header was given twice.
	CodeKeyInvalid = "idempotency-key-invalid"
	// CodeKeyReused (422): the key was used before with a different request
	// (fingerprint). The handler did not run; the record is unchanged.
	CodeKeyReused = "idempotency-key-reused"
	// CodeInProgress (409): a request with this key is still executing.
	// Retry-After says when its lease ends.
	CodeInProgress = "request-in-progress"
	// CodeStoreUnavailable (503): the idempotency store could not be
	// reached. The handler did not run. Retry-After is set.
	CodeStoreUnavailable = "store-unavailable"
	// CodeStoreFull (503): the idempotency store is at its record or byte
	// budget, or this caller's scope is at its quota (idem.ErrStoreFull),
	// so a new key cannot be recorded. The handler did not run; keys
	// already recorded still replay. Always fail-closed, even with
	// FailOpen. Retry-After is set.
	CodeStoreFull = "store-full"
	// CodeTooLarge (413): the request body is larger than the fingerprint
	// limit (Middleware.MaxBody). The handler did not run.
	CodeTooLarge = "request-too-large"
	// CodeBodyUnreadable (400): the request body could not be read.
	CodeBodyUnreadable = "request-body-unreadable"
	// CodeScopeInvalid (400): Middleware.Scope returned an error.
	CodeScopeInvalid = "scope-invalid"
	// CodeCredentialsRequired (400): the request carries no credential
	// (Authorization, Cookie or a configured credential header), so its key
	// cannot be scoped to a caller, and anonymous callers are not allowed
	// (Middleware.AllowAnonymous; idemproxy: the route's anonymous: allow).
	// 400, not 401: this layer does not authenticate and has no challenge
	// (WWW-Authenticate) to offer, and the upstream's authentication never
	// ran.
	CodeCredentialsRequired = "credentials-required"
	// CodeCredentialHopByHop (400): the request's Connection header names a
	// credential header it carries; a proxy would strip that credential
	// before the upstream, so the key cannot be scoped by it.
	CodeCredentialHopByHop = "credential-hop-by-hop"
	// CodeRequestInvalid (400): Middleware.Fingerprint returned an error.
	CodeRequestInvalid = "request-invalid"
	// CodeCanceled (503): the request was canceled (the client went away)
	// before its key was claimed. The handler did not run.
	CodeCanceled = "request-canceled"
	// CodeOutcomeUnknown (503): the handler ran, but its response could not
	// be recorded in the store within the completion bound, so it was not
	// sent (a response is sent only once it can be replayed). The store may
	// or may not hold it: a retry with the same key is safe and either
	// replays it or, once the lease ends, executes again.
	CodeOutcomeUnknown = "outcome-unknown"
	// CodeLeaseLost (503): the handler ran for longer than its lease and
	// another request took the key over; its response was discarded, and
	// the other request has not stored one yet. Retry with the same key to
	// get the surviving response.
	CodeLeaseLost = "lease-lost"
	// CodeStoredResponseInvalid (500): the stored result for the key could
	// not be decoded. The handler did not run (it ran once already).
	CodeStoredResponseInvalid = "stored-response-invalid"
)

// ProblemTypePrefix is prefixed to a problem code to form the problem's
// "type" URI.
const ProblemTypePrefix = "urn:idem:problem:"

type problemDef struct {
	status int
	title  string
	detail string
}

var problems = map[string]problemDef{
	CodeKeyMissing:            {400, "Idempotency key missing", "This request requires an Idempotency-Key header."},
	CodeKeyInvalid:            {400, "Idempotency key invalid", "The Idempotency-Key header must be given once, as 1 to 255 bytes of visible ASCII, bare or as a quoted sf-string."},
	CodeKeyReused:             {422, "Idempotency key reused", "This idempotency key was already used with a different request."},
	CodeInProgress:            {409, "Request in progress", "A request with this idempotency key is still being processed; retry after the time given in Retry-After."},
	CodeStoreUnavailable:      {503, "Idempotency store unavailable", "The request was not processed; retry later."},
	CodeStoreFull:             {503, "Idempotency store full", "The idempotency store is at its budget for new keys (or for this caller's share of it), so the request was not processed; retry later. Requests with keys already recorded are still answered."},
	CodeTooLarge:              {413, "Request too large", "The request body exceeds the limit for idempotent requests."},
	CodeBodyUnreadable:        {400, "Request body unreadable", "The request body could not be read."},
	CodeScopeInvalid:          {400, "Idempotency scope invalid", "The scope of the idempotency key could not be determined."},
	CodeCredentialsRequired:   {400, "Credentials required", "This request carries no credential (Authorization, Cookie or a configured credential header such as X-Api-Key), so its idempotency key cannot be scoped to a caller. Send the request with credentials. Operators who want anonymous callers to share idempotency records per host can allow them: idemhttp Middleware.AllowAnonymous, or the idemproxy route policy anonymous: allow."},
	CodeCredentialHopByHop:    {400, "Hop-by-hop credential", "The Connection header names a credential header (Authorization, Cookie or a configured credential header); a proxy removes such headers, so the idempotency key cannot be scoped by them. Do not list credential headers in Connection."},
	CodeRequestInvalid:        {400, "Request invalid", "The request could not be fingerprinted."},
	CodeCanceled:              {503, "Request canceled", "The request was canceled before it was processed; retry it."},
	CodeOutcomeUnknown:        {503, "Outcome unknown", "The request was processed but its response could not be recorded, so it was not sent; retrying with the same idempotency key is safe."},
	CodeLeaseLost:             {503, "Idempotency lease lost", "The request took longer than its lease and another request with this idempotency key took over; retry with the same key to get its response."},
	CodeStoredResponseInvalid: {500, "Stored response invalid", "The stored response for this idempotency key could not be read."},
}

// problemBodies holds the precomputed JSON of every problem with its default
// detail.
var problemBodies = func() map[string][]byte {
	m := make(map[string][]byte, len(problems))
	for code, p := range problems {
		m[code] = problemJSON(code, p.status, p.title, p.detail)
	}
	return m
}()

func problemJSON(code string, status int, title, detail string) []byte {
	b, _ := json.Marshal(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
		Code   string `json:"code"`
	}{ProblemTypePrefix + code, title, status, detail, code})
	return append(b, '\n')
}

// WriteProblem writes the RFC 9457 application/problem+json answer for one
// of the Code constants, with type, title, status, detail and code members.
// If detail is empty the code's default detail is used. An unknown code is
// written as a 500 with that code. Headers already set on w (such as
// Retry-After) are kept; Cache-Control is set to no-store.
func WriteProblem(w http.ResponseWriter, code, detail string) {
	var body []byte
	status := http.StatusInternalServerError
	if p, ok := problems[code]; ok {
		status = p.status
		if detail == "" {
			body = problemBodies[code]
		} else {
			body = problemJSON(code, p.status, p.title, detail)
		}
	} else {
		if detail == "" {
			detail = "The request could not be processed."
		}
		body = problemJSON(code, status, http.StatusText(status), detail)
	}
	h := w.Header()
	h["Content-Type"] = []string{"application/problem+json"}
	h["Cache-Control"] = []string{"no-store"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	delete(h, "Content-Encoding")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
