package webhook_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/idemmsg/webhook"
)

// The Standard Webhooks reference test vector (standard-webhooks repository,
// every library's tests).
const (
	refSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	refID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	refTS     = "1614265330"
	refBody   = `{"test": 2432232314}`
	refSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

var refTime = time.Unix(1614265330, 0)

// A second Standard secret, for rotation and wrong-secret cases.
const otherSecret = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3ItdGhlLXJvdGF0aW9u" // base64("second-secret-for-the-rotation")

func stdHeader(id, ts, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set("webhook-id", id)
	}
	if ts != "" {
		h.Set("webhook-timestamp", ts)
	}
	if sig != "" {
		h.Set("webhook-signature", sig)
	}
	return h
}

func mustSignStandard(t testing.TB, secret, id string, ts time.Time, body string) string {
	t.Helper()
	s, err := webhook.SignStandard(secret, id, ts, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStandardReferenceVector(t *testing.T) {
	t.Parallel()
	if err := webhook.VerifyStandard([]string{refSecret}, stdHeader(refID, refTS, refSig), []byte(refBody), refTime, 0); err != nil {
		t.Fatalf("reference vector refused: %v", err)
	}
	// The prefix is optional, as in the reference libraries.
	if err := webhook.VerifyStandard([]string{strings.TrimPrefix(refSecret, "whsec_")}, stdHeader(refID, refTS, refSig), []byte(refBody), refTime, 0); err != nil {
		t.Fatalf("reference vector without whsec_ refused: %v", err)
	}
	got, err := webhook.SignStandard(refSecret, refID, refTime, []byte(refBody))
	if err != nil || got != refSig {
		t.Fatalf("SignStandard = %q, %v; want %q", got, err, refSig)
	}
	// By hand: HMAC-SHA256 of "id.timestamp.body" under the decoded key.
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(refSecret, "whsec_"))
	m := hmac.New(sha256.New, key)
	m.Write([]byte(refID + "." + refTS + "." + refBody))
	if by := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil)); by != refSig {
		t.Fatalf("hand-computed %q, want %q", by, refSig)
	}
}

func TestVerifyStandard(t *testing.T) {
	t.Parallel()
	now := refTime
	ts := refTS
	good := refSig
	other := mustSignStandard(t, otherSecret, refID, now, refBody)
	forged := "v1," + base64.StdEncoding.EncodeToString(make([]byte, 32))
	at := func(d time.Duration) (string, string) {
		tt := now.Add(d)
		return strconv.FormatInt(tt.Unix(), 10), mustSignStandard(t, refSecret, refID, tt, refBody)
	}
	past, pastSig := at(-5*time.Minute - time.Second)
	future, futureSig := at(5*time.Minute + time.Second)
	edgePast, edgePastSig := at(-5 * time.Minute)
	edgeFuture, edgeFutureSig := at(5 * time.Minute)
	for _, tc := range []struct {
		name    string
		secrets []string
		h       http.Header
		body    string
		tol     time.Duration
		want    error
	}{
		{"valid", []string{refSecret}, stdHeader(refID, ts, good), refBody, 0, nil},
		{"forged signature", []string{refSecret}, stdHeader(refID, ts, forged), refBody, 0, webhook.ErrSignatureInvalid},
		{"wrong secret", []string{otherSecret}, stdHeader(refID, ts, good), refBody, 0, webhook.ErrSignatureInvalid},
		{"signed with another secret", []string{refSecret}, stdHeader(refID, ts, other), refBody, 0, webhook.ErrSignatureInvalid},
		{"body tampered", []string{refSecret}, stdHeader(refID, ts, good), `{"test": 2432232315}`, 0, webhook.ErrSignatureInvalid},
		{"body extended", []string{refSecret}, stdHeader(refID, ts, good), refBody + " ", 0, webhook.ErrSignatureInvalid},
		{"id tampered", []string{refSecret}, stdHeader(refID+"x", ts, good), refBody, 0, webhook.ErrSignatureInvalid},
		{"timestamp tampered", []string{refSecret}, stdHeader(refID, "1614265331", good), refBody, time.Hour, webhook.ErrSignatureInvalid},
		{"timestamp with leading zero is signed as written", []string{refSecret}, stdHeader(refID, "0"+ts, good), refBody, 0, webhook.ErrSignatureInvalid},
		{"stale: past beyond tolerance", []string{refSecret}, stdHeader(refID, past, pastSig), refBody, 0, webhook.ErrTimestampStale},
		{"stale: future beyond tolerance", []string{refSecret}, stdHeader(refID, future, futureSig), refBody, 0, webhook.ErrTimestampStale},
		{"edge: exactly tolerance past", []string{refSecret}, stdHeader(refID, edgePast, edgePastSig), refBody, 0, nil},
		{"edge: exactly tolerance future", []string{refSecret}, stdHeader(refID, edgeFuture, edgeFutureSig), refBody, 0, nil},
		{"custom tolerance admits", []string{refSecret}, stdHeader(refID, past, pastSig), refBody, 10 * time.Minute, nil},
		{"custom tolerance refuses", []string{refSecret}, stdHeader(refID, edgePast, edgePastSig), refBody, time.Minute, webhook.ErrTimestampStale},
		{"forged and stale: signature checked first", []string{refSecret}, stdHeader(refID, past, forged), refBody, 0, webhook.ErrSignatureInvalid},
		{"rotation: old signature, both secrets", []string{otherSecret, refSecret}, stdHeader(refID, ts, good), refBody, 0, nil},
		{"rotation: new signature, both secrets", []string{refSecret, otherSecret}, stdHeader(refID, ts, other), refBody, 0, nil},
		{"rotation: two signatures, new secret only", []string{otherSecret}, stdHeader(refID, ts, good+" "+other), refBody, 0, nil},
		{"rotation: two signatures, old secret only", []string{refSecret}, stdHeader(refID, ts, other+" "+good), refBody, 0, nil},
		{"rotation: forged first, real second", []string{refSecret}, stdHeader(refID, ts, forged+" "+good), refBody, 0, nil},
		{"asymmetric entries are ignored", []string{refSecret}, stdHeader(refID, ts, "v1a,AAAA "+good), refBody, 0, nil},
		{"extra spaces", []string{refSecret}, stdHeader(refID, ts, "  "+good+"   "), refBody, 0, nil},
		{"missing: no headers", []string{refSecret}, http.Header{}, refBody, 0, webhook.ErrSignatureMissing},
		{"missing: id and timestamp without signature", []string{refSecret}, stdHeader(refID, ts, ""), refBody, 0, webhook.ErrSignatureMissing},
		{"missing: blank signature", []string{refSecret}, http.Header{"Webhook-Id": {refID}, "Webhook-Timestamp": {ts}, "Webhook-Signature": {"  "}}, refBody, 0, webhook.ErrSignatureMissing},
		{"missing: only v1a", []string{refSecret}, stdHeader(refID, ts, "v1a,AAAA"), refBody, 0, webhook.ErrSignatureMissing},
		{"malformed: no id", []string{refSecret}, stdHeader("", ts, good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: no timestamp", []string{refSecret}, stdHeader(refID, "", good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: timestamp not a number", []string{refSecret}, stdHeader(refID, "yesterday", good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: signed timestamp", []string{refSecret}, stdHeader(refID, "+"+ts, good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: negative timestamp", []string{refSecret}, stdHeader(refID, "-1", good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: fractional timestamp", []string{refSecret}, stdHeader(refID, ts+".5", good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: huge timestamp", []string{refSecret}, stdHeader(refID, strings.Repeat("9", 40), good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: entry without comma", []string{refSecret}, stdHeader(refID, ts, "v1 "+good), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: v1 not base64", []string{refSecret}, stdHeader(refID, ts, "v1,not*base64"), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: empty v1", []string{refSecret}, stdHeader(refID, ts, "v1,"), refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: signature header twice", []string{refSecret}, http.Header{"Webhook-Id": {refID}, "Webhook-Timestamp": {ts}, "Webhook-Signature": {good, good}}, refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: timestamp header twice", []string{refSecret}, http.Header{"Webhook-Id": {refID}, "Webhook-Timestamp": {ts, ts}, "Webhook-Signature": {good}}, refBody, 0, webhook.ErrSignatureMalformed},
		{"malformed: id header twice", []string{refSecret}, http.Header{"Webhook-Id": {refID, "other"}, "Webhook-Timestamp": {ts}, "Webhook-Signature": {good}}, refBody, 0, webhook.ErrSignatureMalformed},
		{"secret: none", nil, stdHeader(refID, ts, good), refBody, 0, webhook.ErrSecretInvalid},
		{"secret: not base64", []string{"whsec_***"}, stdHeader(refID, ts, good), refBody, 0, webhook.ErrSecretInvalid},
		{"secret: empty key", []string{"whsec_"}, stdHeader(refID, ts, good), refBody, 0, webhook.ErrSecretInvalid},
	} {
		err := webhook.VerifyStandard(tc.secrets, tc.h, []byte(tc.body), now, tc.tol)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: VerifyStandard = %v; want %v", tc.name, err, tc.want)
		}
	}
}

func TestVerifyStandardSecretNotInError(t *testing.T) {
	t.Parallel()
	bad := "whsec_SuperSecretValue*"
	err := webhook.VerifyStandard([]string{bad}, stdHeader(refID, refTS, refSig), []byte(refBody), refTime, 0)
	if !errors.Is(err, webhook.ErrSecretInvalid) || strings.Contains(err.Error(), "SuperSecret") {
		t.Fatalf("error %v", err)
	}
}

const stripeSecret = "whsec_test_secret_9f8e7d6c5b4a"

// stripeHMAC computes Stripe's v1 signature by hand: hex HMAC-SHA256 of
// "t.body" keyed with the whole secret string.
func stripeHMAC(secret, t, body string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(t + "." + body))
	return hex.EncodeToString(m.Sum(nil))
}

func stripeHeader(v string) http.Header { return http.Header{"Stripe-Signature": {v}} }

func TestSignStripeMatchesHandComputedHMAC(t *testing.T) {
	t.Parallel()
	body := `{"id":"evt_1","object":"event"}`
	ts := time.Unix(1700000000, 0)
	want := "t=1700000000,v1=" + stripeHMAC(stripeSecret, "1700000000", body)
	if got := webhook.SignStripe(stripeSecret, ts, []byte(body)); got != want {
		t.Fatalf("SignStripe = %q, want %q", got, want)
	}
	if err := webhook.VerifyStripe([]string{stripeSecret}, stripeHeader(want), []byte(body), ts, 0); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyStripe(t *testing.T) {
	t.Parallel()
	body := `{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded"}`
	now := time.Unix(1700000000, 0)
	const ts = "1700000000"
	good := stripeHMAC(stripeSecret, ts, body)
	const rolled = "whsec_rolled_secret_0000"
	goodRolled := stripeHMAC(rolled, ts, body)
	forged := strings.Repeat("0", 64)
	pastTS := strconv.FormatInt(now.Add(-5*time.Minute-time.Second).Unix(), 10)
	futureTS := strconv.FormatInt(now.Add(5*time.Minute+time.Second).Unix(), 10)
	edgeTS := strconv.FormatInt(now.Add(-5*time.Minute).Unix(), 10)
	for _, tc := range []struct {
		name    string
		secrets []string
		h       http.Header
		body    string
		want    error
	}{
		{"valid", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1=" + good), body, nil},
		{"valid with v0 (ignored)", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1=" + good + ",v0=" + forged), body, nil},
		{"v0 first, unknown scheme", []string{stripeSecret}, stripeHeader("v0=zz,t=" + ts + ",v9=x,v1=" + good), body, nil},
		{"spaces around entries", []string{stripeSecret}, stripeHeader(" t=" + ts + " , v1=" + good + " "), body, nil},
		{"several v1: forged then real", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1=" + forged + ",v1=" + good), body, nil},
		{"rotation: rolled signature, both secrets", []string{stripeSecret, rolled}, stripeHeader("t=" + ts + ",v1=" + goodRolled), body, nil},
		{"rotation: both signatures, new secret only", []string{rolled}, stripeHeader("t=" + ts + ",v1=" + good + ",v1=" + goodRolled), body, nil},
		{"forged", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1=" + forged), body, webhook.ErrSignatureInvalid},
		{"wrong secret", []string{rolled}, stripeHeader("t=" + ts + ",v1=" + good), body, webhook.ErrSignatureInvalid},
		{"base64 key decoding is not Stripe's", []string{"whsec_" + base64.StdEncoding.EncodeToString([]byte(stripeSecret))}, stripeHeader("t=" + ts + ",v1=" + good), body, webhook.ErrSignatureInvalid},
		{"body tampered", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1=" + good), strings.Replace(body, "succeeded", "failed", 1), webhook.ErrSignatureInvalid},
		{"timestamp tampered", []string{stripeSecret}, stripeHeader("t=1700000001,v1=" + good), body, webhook.ErrSignatureInvalid},
		{"v0 only matches are not enough", []string{stripeSecret}, stripeHeader("t=" + ts + ",v0=" + good + ",v1=" + forged), body, webhook.ErrSignatureInvalid},
		{"stale: past", []string{stripeSecret}, stripeHeader("t=" + pastTS + ",v1=" + stripeHMAC(stripeSecret, pastTS, body)), body, webhook.ErrTimestampStale},
		{"stale: future", []string{stripeSecret}, stripeHeader("t=" + futureTS + ",v1=" + stripeHMAC(stripeSecret, futureTS, body)), body, webhook.ErrTimestampStale},
		{"edge: exactly tolerance", []string{stripeSecret}, stripeHeader("t=" + edgeTS + ",v1=" + stripeHMAC(stripeSecret, edgeTS, body)), body, nil},
		{"missing header", []string{stripeSecret}, http.Header{}, body, webhook.ErrSignatureMissing},
		{"blank header", []string{stripeSecret}, stripeHeader(" "), body, webhook.ErrSignatureMissing},
		{"no v1", []string{stripeSecret}, stripeHeader("t=" + ts + ",v0=" + good), body, webhook.ErrSignatureMissing},
		{"malformed: no t", []string{stripeSecret}, stripeHeader("v1=" + good), body, webhook.ErrSignatureMalformed},
		{"malformed: t twice", []string{stripeSecret}, stripeHeader("t=" + ts + ",t=" + ts + ",v1=" + good), body, webhook.ErrSignatureMalformed},
		{"malformed: t not a number", []string{stripeSecret}, stripeHeader("t=now,v1=" + good), body, webhook.ErrSignatureMalformed},
		{"malformed: t empty", []string{stripeSecret}, stripeHeader("t=,v1=" + good), body, webhook.ErrSignatureMalformed},
		{"malformed: v1 not hex", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1=xyz"), body, webhook.ErrSignatureMalformed},
		{"malformed: entry without =", []string{stripeSecret}, stripeHeader("t=" + ts + ",v1"), body, webhook.ErrSignatureMalformed},
		{"malformed: header twice", []string{stripeSecret}, http.Header{"Stripe-Signature": {"t=" + ts + ",v1=" + good, "t=" + ts + ",v1=" + good}}, body, webhook.ErrSignatureMalformed},
		{"secret: none", nil, stripeHeader("t=" + ts + ",v1=" + good), body, webhook.ErrSecretInvalid},
		{"secret: empty", []string{""}, stripeHeader("t=" + ts + ",v1=" + good), body, webhook.ErrSecretInvalid},
	} {
		err := webhook.VerifyStripe(tc.secrets, tc.h, []byte(tc.body), now, 0)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: VerifyStripe = %v; want %v", tc.name, err, tc.want)
		}
	}
}

// The verifier types use their clock and tolerance.
func TestVerifierTypes(t *testing.T) {
	t.Parallel()
	clock := refTime
	now := func() time.Time { return clock }
	r, _ := http.NewRequest(http.MethodPost, "/", nil)
	r.Header = stdHeader(refID, refTS, refSig)
	std := webhook.Standard{Secrets: []string{refSecret}, Now: now, Tolerance: time.Minute}
	if err := std.Verify(r, []byte(refBody)); err != nil {
		t.Fatal(err)
	}
	clock = refTime.Add(61 * time.Second)
	if err := std.Verify(r, []byte(refBody)); !errors.Is(err, webhook.ErrTimestampStale) {
		t.Fatalf("61 s later: %v", err)
	}
	// The zero Now is the real clock: a 2021 signature is stale.
	if err := (webhook.Standard{Secrets: []string{refSecret}}).Verify(r, []byte(refBody)); !errors.Is(err, webhook.ErrTimestampStale) {
		t.Fatalf("real clock: %v", err)
	}
	clock = time.Unix(1700000000, 0)
	r.Header = stripeHeader(webhook.SignStripe(stripeSecret, clock, []byte("{}")))
	st := &webhook.Stripe{Secrets: []string{stripeSecret}, Now: now}
	if err := st.Verify(r, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(-webhook.DefaultTolerance - time.Second)
	if err := st.Verify(r, []byte("{}")); !errors.Is(err, webhook.ErrTimestampStale) {
		t.Fatalf("future: %v", err)
	}
}

func TestSignStandardBadSecret(t *testing.T) {
	t.Parallel()
	if _, err := webhook.SignStandard("whsec_!!", "id", refTime, nil); !errors.Is(err, webhook.ErrSecretInvalid) {
		t.Fatalf("err %v", err)
	}
}

func classified(err error) bool {
	for _, e := range []error{webhook.ErrSignatureMissing, webhook.ErrSignatureMalformed, webhook.ErrSignatureInvalid, webhook.ErrTimestampStale} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func FuzzParseStandardSignature(f *testing.F) {
	for _, s := range []string{refSig, refSig + " v1a,xyz", "v1,", "v1", ",", " ", "v1,AAAA v1,BBBB", "v2,abc v1,=", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		sigs, err := webhook.ParseStandardSignature(v)
		if err != nil {
			if sigs != nil || !errors.Is(err, webhook.ErrSignatureMalformed) && !errors.Is(err, webhook.ErrSignatureMissing) {
				t.Fatalf("sigs %v, unclassified error %v", sigs, err)
			}
			return
		}
		if len(sigs) == 0 {
			t.Fatal("no signature and no error")
		}
		for _, s := range sigs {
			if len(s) == 0 {
				t.Fatal("empty signature accepted")
			}
		}
		// Whatever parses never verifies without the key.
		h := stdHeader("msg_1", "1614265330", v)
		if err := webhook.VerifyStandard([]string{refSecret}, h, []byte("x"), refTime, 0); err == nil {
			t.Fatalf("header %q verified", v)
		} else if !classified(err) {
			t.Fatalf("unclassified %v", err)
		}
	})
}

func FuzzParseStripeSignature(f *testing.F) {
	for _, s := range []string{"t=1700000000,v1=" + strings.Repeat("ab", 32), "t=1,v0=ff", "t=,v1=", "v1=00", "t=1,t=2,v1=00", ",,,", "t=99999999999999999999,v1=00", "t=1,v1=0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ts, text, sigs, err := webhook.ParseStripeSignature(v)
		if err != nil {
			if sigs != nil || ts != 0 || text != "" || !errors.Is(err, webhook.ErrSignatureMalformed) && !errors.Is(err, webhook.ErrSignatureMissing) {
				t.Fatalf("ts %d %q sigs %v, unclassified error %v", ts, text, sigs, err)
			}
			return
		}
		if n, perr := strconv.ParseInt(text, 10, 64); perr != nil || n != ts || ts < 0 || len(sigs) == 0 {
			t.Fatalf("ts %d text %q sigs %d", ts, text, len(sigs))
		}
		if err := webhook.VerifyStripe([]string{stripeSecret}, stripeHeader(v), []byte("x"), time.Unix(ts, 0), 0); err == nil {
			t.Fatalf("header %q verified", v)
		} else if !classified(err) {
			t.Fatalf("unclassified %v", err)
		}
	})
}

// Sign then verify round-trips for any id, body and time, and any change to
// the body breaks it.
func FuzzSignVerifyStandard(f *testing.F) {
	f.Add("msg_1", []byte(`{"a":1}`), int64(1614265330))
	f.Add("", []byte{}, int64(0))
	f.Fuzz(func(t *testing.T, id string, body []byte, unix int64) {
		if id == "" || strings.ContainsAny(id, "\r\n") || unix < 0 || unix > 1<<40 {
			return
		}
		ts := time.Unix(unix, 0)
		sig, err := webhook.SignStandard(refSecret, id, ts, body)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{"Webhook-Id": {id}, "Webhook-Timestamp": {strconv.FormatInt(unix, 10)}, "Webhook-Signature": {sig}}
		if err := webhook.VerifyStandard([]string{refSecret}, h, body, ts, 0); err != nil {
			t.Fatalf("round trip: %v", err)
		}
		tampered := append(append([]byte{}, body...), '!')
		if err := webhook.VerifyStandard([]string{refSecret}, h, tampered, ts, 0); !errors.Is(err, webhook.ErrSignatureInvalid) {
			t.Fatalf("tampered body: %v", err)
		}
	})
}

// Any headers and body: VerifyStandard never panics, never accepts without a
// valid signature, and always returns a classified error.
func FuzzVerifyStandardHeaders(f *testing.F) {
	f.Add(refID, refTS, refSig, []byte(refBody))
	f.Add("", "", "", []byte{})
	f.Add("a.b", "0", "v1,== v1a,x", []byte("."))
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte) {
		h := http.Header{"Webhook-Id": {id}, "Webhook-Timestamp": {ts}, "Webhook-Signature": {sig}}
		err := webhook.VerifyStandard([]string{otherSecret}, h, body, refTime, 0)
		if err == nil {
			t.Fatalf("verified without the key: %q %q %q", id, ts, sig)
		}
		if !classified(err) {
			t.Fatalf("unclassified %v", err)
		}
	})
}
