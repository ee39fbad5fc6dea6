package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is how far a webhook's signed timestamp may lie from the
// receiver's clock, in the past or in the future, when a tolerance is zero:
// 5 minutes, the value of the Standard Webhooks specification and of Stripe's
// libraries.
const DefaultTolerance = 5 * time.Minute

// Header names of the built-in schemes (canonical form).
const (
	// StandardIDHeader carries the Standard Webhooks message id; it is
	// signed, and it is the id the handler deduplicates on by default.
	StandardIDHeader = "Webhook-Id"
	// StandardTimestampHeader carries the Standard Webhooks send time, in
	// unix seconds; it is signed.
	StandardTimestampHeader = "Webhook-Timestamp"
	// StandardSignatureHeader carries the Standard Webhooks signatures: a
	// space-separated list of "v1,<base64 HMAC-SHA256>" entries.
	StandardSignatureHeader = "Webhook-Signature"
	// StripeSignatureHeader carries Stripe's signature:
	// "t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=…][,v0=…]".
	StripeSignatureHeader = "Stripe-Signature"
)

// Verification errors. Verify, VerifyStandard and VerifyStripe return one of
// them, wrapped with details; branch with errors.Is. The handler answers each
// with its problem code (see the package documentation) without calling the
// store.
var (
	// ErrSignatureMissing reports an unsigned request: no signature header,
	// or a header with no entry of a scheme this package verifies ("v1").
	// Answered 401, code "webhook-signature-missing".
	ErrSignatureMissing = errors.New("webhook: signature missing")
	// ErrSignatureMalformed reports signature headers that are present but
	// cannot be parsed: a timestamp that is not decimal unix seconds, a
	// Standard Webhooks signature without its webhook-id or
	// webhook-timestamp, an entry that is not "scheme,value" (Standard) or
	// "key=value" (Stripe), a v1 value that is not base64 (Standard) or hex
	// (Stripe), or one of these headers given twice. Answered 400, code
	// "webhook-signature-malformed".
	ErrSignatureMalformed = errors.New("webhook: signature headers malformed")
	// ErrSignatureInvalid reports that no v1 signature matches the signed
	// content under any configured secret: a forged request, a wrong or
	// retired secret, or a tampered body, id or timestamp. Answered 401, code
	// "webhook-signature-invalid".
	ErrSignatureInvalid = errors.New("webhook: signature invalid")
	// ErrTimestampStale reports an authentic signature whose timestamp lies
	// further than the tolerance from the receiver's clock, in the past (a
	// replay of a captured delivery, or a sender retrying after its own
	// horizon) or in the future. It is only returned after the signature
	// verified, so it always names a genuine but refused delivery. Answered
	// 401, code "webhook-timestamp-stale".
	ErrTimestampStale = errors.New("webhook: timestamp outside tolerance")
	// ErrSecretInvalid reports a configuration error: no secret, or a
	// Standard Webhooks secret that is not "whsec_" followed by base64.
	// Handler panics with it at construction; the Verify functions return
	// it.
	ErrSecretInvalid = errors.New("webhook: secret invalid")
)

// A Verifier authenticates a webhook request before it is deduplicated.
// Verify is given the request and its body (already read, at most
// Config.MaxBody bytes; r.Body must not be read) and returns nil when the
// request is authentic and fresh, or an error, preferably wrapping one of the
// Err* verification errors so that the handler answers with the matching
// problem (any other error is answered as ErrSignatureInvalid). Verify must
// be safe for concurrent use.
//
// Standard and Stripe are the built-in Verifiers. A custom Verifier must
// also refuse deliveries older than the Deduper's retention, or a replay of
// an id that has been forgotten runs again; one without a signed timestamp
// (GitHub's X-Hub-Signature-256, for example) cannot, and should be used
// with a retention longer than any replay you need to refuse.
type Verifier interface {
	Verify(r *http.Request, body []byte) error
}

// VerifierFunc adapts a function to the Verifier interface.
type VerifierFunc func(r *http.Request, body []byte) error

// Verify calls f(r, body).
func (f VerifierFunc) Verify(r *http.Request, body []byte) error { return f(r, body) }

// Standard verifies Standard Webhooks signatures
// (https://www.standardwebhooks.com): the headers webhook-id,
// webhook-timestamp and webhook-signature, the signed content
// "<id>.<timestamp>.<body>", and HMAC-SHA256 "v1" signatures (asymmetric
// "v1a" entries are ignored). A request is accepted when any v1 signature it
// carries matches under any of Secrets and its timestamp lies within
// Tolerance of Now. The zero value has no secret and refuses every request;
// Handler rejects it at construction.
type Standard struct {
	// Secrets are the endpoint's signing secrets, "whsec_" followed by the
	// base64 key (the prefix is optional). Give the old and the new secret
	// while you rotate, and remove the old one once the sender has switched.
	// At least one is required.
	Secrets []string
	// Tolerance is how far the signed timestamp may lie from Now, in the
	// past or the future. If zero, DefaultTolerance (5 minutes). It must be
	// less than half the Deduper's retention (Handler checks it).
	Tolerance time.Duration
	// Now is the receiver's clock. If nil, time.Now.
	Now func() time.Time
}

// Verify implements Verifier with VerifyStandard.
func (s Standard) Verify(r *http.Request, body []byte) error {
	return VerifyStandard(s.Secrets, r.Header, body, now(s.Now), s.Tolerance)
}

// Stripe verifies Stripe's Stripe-Signature header
// ("t=<unix seconds>,v1=<hex HMAC-SHA256>"): the signed content is
// "<t>.<body>", the key is the whole endpoint secret ("whsec_…") taken as
// bytes, and entries of other schemes (v0) are ignored. A request is accepted
// when any v1 signature matches under any of Secrets and t lies within
// Tolerance of Now. Stripe sends no id header: the event id is the "id" field
// of the body (Handler reads it there by default when the Verifier is a
// Stripe). The zero value has no secret and refuses every request; Handler
// rejects it at construction.
type Stripe struct {
	// Secrets are the endpoint's signing secrets ("whsec_…", used as they
	// are). During a secret roll Stripe signs with both; give both. At least
	// one is required.
	Secrets []string
	// Tolerance is how far t may lie from Now, in the past or the future.
	// If zero, DefaultTolerance (5 minutes). It must be less than half the
	// Deduper's retention (Handler checks it).
	Tolerance time.Duration
	// Now is the receiver's clock. If nil, time.Now.
	Now func() time.Time
}

// Verify implements Verifier with VerifyStripe.
func (s Stripe) Verify(r *http.Request, body []byte) error {
	return VerifyStripe(s.Secrets, r.Header, body, now(s.Now), s.Tolerance)
}

func now(f func() time.Time) time.Time {
	if f == nil {
		return time.Now()
	}
	return f()
}

func tolerance(t time.Duration) time.Duration {
	if t <= 0 {
		return DefaultTolerance
	}
	return t
}

// VerifyStandard verifies a Standard Webhooks request: h must carry exactly
// one webhook-id, webhook-timestamp and webhook-signature header, one of the
// signature's v1 entries must be the HMAC-SHA256 of "<id>.<timestamp>.<body>"
// under one of secrets ("whsec_<base64>"), and the timestamp must lie within
// tolerance of now (DefaultTolerance if tolerance is zero or negative). The
// MACs are compared in constant time. It returns nil, or an error matching
// ErrSignatureMissing, ErrSignatureMalformed, ErrSignatureInvalid,
// ErrTimestampStale or ErrSecretInvalid. The signature is checked before the
// timestamp.
func VerifyStandard(secrets []string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	keys, err := standardKeys(secrets)
	if err != nil {
		return err
	}
	sigHdr, ok, err := single(h, StandardSignatureHeader)
	if err != nil {
		return err
	}
	if !ok || strings.TrimSpace(sigHdr) == "" {
		return fmt.Errorf("%w: no %s header", ErrSignatureMissing, StandardSignatureHeader)
	}
	sigs, err := ParseStandardSignature(sigHdr)
	if err != nil {
		return err
	}
	id, ok, err := single(h, StandardIDHeader)
	if err != nil {
		return err
	}
	if !ok || id == "" {
		return fmt.Errorf("%w: no %s header", ErrSignatureMalformed, StandardIDHeader)
	}
	tsHdr, ok, err := single(h, StandardTimestampHeader)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: no %s header", ErrSignatureMalformed, StandardTimestampHeader)
	}
	ts, err := parseUnix(tsHdr)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSignatureMalformed, StandardTimestampHeader, err)
	}
	// The header texts are signed as sent.
	if !anyMatch(keys, sigs, id+"."+tsHdr+".", body) {
		return fmt.Errorf("%w: no v1 signature matches (%d given, %d secrets)", ErrSignatureInvalid, len(sigs), len(keys))
	}
	return checkTime(ts, now, tolerance)
}

// VerifyStripe verifies a Stripe webhook: h must carry exactly one
// Stripe-Signature header with one "t" and at least one "v1" entry, one v1
// must be the hex HMAC-SHA256 of "<t>.<body>" under one of secrets (each used
// whole, as bytes), and t must lie within tolerance of now (DefaultTolerance
// if tolerance is zero or negative). Entries of other schemes (v0) are
// ignored. The MACs are compared in constant time. It returns nil, or an
// error matching ErrSignatureMissing, ErrSignatureMalformed,
// ErrSignatureInvalid, ErrTimestampStale or ErrSecretInvalid. The signature
// is checked before the timestamp.
func VerifyStripe(secrets []string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if len(secrets) == 0 {
		return fmt.Errorf("%w: no secret", ErrSecretInvalid)
	}
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		if s == "" {
			return fmt.Errorf("%w: secret %d is empty", ErrSecretInvalid, i)
		}
		keys[i] = []byte(s)
	}
	hdr, ok, err := single(h, StripeSignatureHeader)
	if err != nil {
		return err
	}
	if !ok || strings.TrimSpace(hdr) == "" {
		return fmt.Errorf("%w: no %s header", ErrSignatureMissing, StripeSignatureHeader)
	}
	ts, tsText, sigs, err := ParseStripeSignature(hdr)
	if err != nil {
		return err
	}
	if !anyMatch(keys, sigs, tsText+".", body) {
		return fmt.Errorf("%w: no v1 signature matches (%d given, %d secrets)", ErrSignatureInvalid, len(sigs), len(keys))
	}
	return checkTime(ts, now, tolerance)
}

// ParseStandardSignature parses a webhook-signature header value: entries
// separated by spaces, each "<scheme>,<signature>". It returns the decoded
// "v1" signatures (base64, standard alphabet with padding), ignoring entries
// of other schemes. It returns an error matching ErrSignatureMalformed for an
// entry without a comma or a v1 value that is not base64, and one matching
// ErrSignatureMissing when there is no v1 entry.
func ParseStandardSignature(v string) ([][]byte, error) {
	var sigs [][]byte
	for entry := range strings.FieldsSeq(v) {
		scheme, sig, ok := strings.Cut(entry, ",")
		if !ok || scheme == "" {
			return nil, fmt.Errorf("%w: a %s entry is not \"scheme,signature\"", ErrSignatureMalformed, StandardSignatureHeader)
		}
		if scheme != "v1" {
			continue
		}
		b, err := base64.StdEncoding.Strict().DecodeString(sig)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%w: %s v1 entry is not base64", ErrSignatureMalformed, StandardSignatureHeader)
		}
		sigs = append(sigs, b)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w: no v1 entry in %s", ErrSignatureMissing, StandardSignatureHeader)
	}
	return sigs, nil
}

// ParseStripeSignature parses a Stripe-Signature header value: entries
// "key=value" separated by commas. It returns the timestamp "t" (as unix
// seconds and as its text, which is what is signed) and the decoded "v1"
// signatures (hex), ignoring entries of other schemes (v0). It returns an
// error matching ErrSignatureMalformed for an entry without "=", a missing,
// repeated or non-numeric t, or a v1 value that is not hex, and one matching
// ErrSignatureMissing when there is no v1 entry.
func ParseStripeSignature(v string) (ts int64, tsText string, sigs [][]byte, err error) {
	haveT := false
	for entry := range strings.SplitSeq(v, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		k, val, ok := strings.Cut(entry, "=")
		if !ok || k == "" {
			return 0, "", nil, fmt.Errorf("%w: %s entry is not \"key=value\"", ErrSignatureMalformed, StripeSignatureHeader)
		}
		switch k {
		case "t":
			if haveT {
				return 0, "", nil, fmt.Errorf("%w: %s has t twice", ErrSignatureMalformed, StripeSignatureHeader)
			}
			if ts, err = parseUnix(val); err != nil {
				return 0, "", nil, fmt.Errorf("%w: %s t: %v", ErrSignatureMalformed, StripeSignatureHeader, err)
			}
			tsText, haveT = val, true
		case "v1":
			b, err := hex.DecodeString(val)
			if err != nil || len(b) == 0 {
				return 0, "", nil, fmt.Errorf("%w: %s v1 entry is not hex", ErrSignatureMalformed, StripeSignatureHeader)
			}
			sigs = append(sigs, b)
		}
	}
	if !haveT {
		return 0, "", nil, fmt.Errorf("%w: %s has no t", ErrSignatureMalformed, StripeSignatureHeader)
	}
	if len(sigs) == 0 {
		return 0, "", nil, fmt.Errorf("%w: no v1 entry in %s", ErrSignatureMissing, StripeSignatureHeader)
	}
	return ts, tsText, sigs, nil
}

// SignStandard returns the Standard Webhooks signature entry
// "v1,<base64 HMAC-SHA256>" of a message with this id, timestamp and body
// under secret ("whsec_<base64>"), for a sender or a test. Send it as
// webhook-signature, with webhook-id set to id and webhook-timestamp to
// strconv.FormatInt(ts.Unix(), 10); during a rotation, join the entries of
// both secrets with a space.
func SignStandard(secret, id string, ts time.Time, body []byte) (string, error) {
	keys, err := standardKeys([]string{secret})
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, keys[0])
	m.Write([]byte(id + "." + strconv.FormatInt(ts.Unix(), 10) + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil)), nil
}

// SignStripe returns a Stripe-Signature header value "t=<unix>,v1=<hex>" for
// body sent at ts, signed with secret taken whole as bytes, as Stripe signs,
// for tests and local senders.
func SignStripe(secret string, ts time.Time, body []byte) string {
	t := strconv.FormatInt(ts.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(t + "."))
	m.Write(body)
	return "t=" + t + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// standardKeys decodes Standard Webhooks secrets.
func standardKeys(secrets []string) ([][]byte, error) {
	if len(secrets) == 0 {
		return nil, fmt.Errorf("%w: no secret", ErrSecretInvalid)
	}
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		k, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
		if err != nil || len(k) == 0 {
			// The secret itself is never put in the error.
			return nil, fmt.Errorf("%w: secret %d is not \"whsec_\" followed by base64", ErrSecretInvalid, i)
		}
		keys[i] = k
	}
	return keys, nil
}

// single returns the only value of header name in h. A header given twice is
// malformed: a proxy or an attacker could make the two halves disagree.
func single(h http.Header, name string) (string, bool, error) {
	vs := h.Values(name)
	switch len(vs) {
	case 0:
		return "", false, nil
	case 1:
		return vs[0], true, nil
	}
	return "", false, fmt.Errorf("%w: %s given %d times", ErrSignatureMalformed, name, len(vs))
}

// parseUnix parses unix seconds written as 1 to 18 decimal digits (no sign,
// no space): any time until the year 31 million, and never an overflow.
func parseUnix(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, fmt.Errorf("want 1 to 18 decimal digits, got %d bytes", len(s))
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("not decimal unix seconds")
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// anyMatch reports whether any of sigs is the HMAC-SHA256 under any of keys
// of prefix followed by body. Every comparison is constant-time (hmac.Equal),
// and every pair is compared, so the time taken does not depend on which
// signature or secret matched.
func anyMatch(keys, sigs [][]byte, prefix string, body []byte) bool {
	ok := false
	for _, k := range keys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(prefix))
		m.Write(body)
		sum := m.Sum(nil)
		for _, s := range sigs {
			if hmac.Equal(s, sum) {
				ok = true
			}
		}
	}
	return ok
}

// checkTime refuses a timestamp further than tol from now, either way.
func checkTime(ts int64, now time.Time, tol time.Duration) error {
	tol = tolerance(tol)
	d := now.Sub(time.Unix(ts, 0)) // saturates, never overflows
	switch {
	case d > tol:
		return fmt.Errorf("%w: signed %v ago, tolerance %v", ErrTimestampStale, d.Truncate(time.Second), tol)
	case d < -tol:
		return fmt.Errorf("%w: signed %v in the future, tolerance %v", ErrTimestampStale, (-d).Truncate(time.Second), tol)
	}
	return nil
}
