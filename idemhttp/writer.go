package idemhttp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/idemkit/idem"
)

// capture is the http.ResponseWriter the handler writes to on a first
// execution. It keeps the status and header snapshot (encoded when the
// status is written, which is when net/http snapshots them too) and the body
// up to the stored-result cap.
//
// By default it holds the response: nothing reaches the client until the
// middleware has completed (or released) the record, so that a client never
// holds a response its retry cannot replay (SPEC §3, acknowledged ⇒
// replayable). A body that grows past the cap, or an event stream that is
// flushed, completes the record early with the body omitted and then streams
// (see commitEarly). With Middleware.Stream, or for fail-open executions,
// every write goes through at once (write-through).
type capture struct {
	w        http.ResponseWriter
	h        *handler
	r        *http.Request // the client's request (its context: cancellation, values)
	lease    *idem.Lease   // nil for fail-open executions
	bp       *[]byte       // pooled buffer box, for free
	buf      []byte        // encoded head, then the body bytes captured so far
	head     int           // length of the encoded head in buf
	body     int           // body bytes written by the handler (captured or not)
	clen     int           // declared Content-Length at snapshot; -1 if none
	code     int           // final status; 0 until written
	omit     bool          // body exceeded the cap and was dropped from buf
	gone     bool          // a write to the client failed: capture only
	hijacked bool          // the handler took over the connection
	through  bool          // writes go to the client at once
	early    bool          // the record's fate was decided during the handler (commitEarly)
	failed   bool          // early completion failed: the client got a problem; discard
	earlyErr error         // the early completion's error
	answered int           // status answered to the client by commitEarly
	flush    http.Flusher  // the writer as a Flusher, if it is one
	entry    http.Header   // headers already set when the handler was called
	conn     []string      // Connection header values at snapshot time
	post     http.Header   // held mode: header changes after the snapshot
}

// bufPool holds capture buffers. The capture itself is not pooled: a
// handler that (wrongly) writes after returning then touches only its own
// detached capture, never another request's.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func newCapture(w http.ResponseWriter, h *handler, r *http.Request, lease *idem.Lease) *capture {
	bp := bufPool.Get().(*[]byte)
	c := &capture{w: w, h: h, r: r, lease: lease, bp: bp, buf: (*bp)[:0], clen: -1}
	c.through = lease == nil || h.stream
	c.flush, _ = w.(http.Flusher)
	if hdr := w.Header(); len(hdr) > 0 {
		// Set by outer middleware (a request id, CORS): not the handler's
		// answer, so not stored unless the handler changes them. The outer
		// middleware sets them afresh on every replay.
		c.entry = hdr.Clone()
	}
	return c
}

// free returns the buffer to the pool. The capture must not be used after.
func (c *capture) free() {
	bp := c.bp
	if cap(c.buf) <= 64<<10 {
		*bp = c.buf[:0]
	} else {
		*bp = make([]byte, 0, 4096)
	}
	c.buf, c.bp = nil, nil
	bufPool.Put(bp)
}

// holding reports whether the response is still held back from the client.
func (c *capture) holding() bool { return !c.through && !c.early }

// Header returns the header map. Before the status is written it is the
// underlying writer's; while a written response is held, changes go to a
// copy, so that the client gets the headers as they were when the status
// was written (as net/http would send them), plus trailers.
func (c *capture) Header() http.Header {
	if c.code != 0 && c.holding() {
		if c.post == nil {
			c.post = c.w.Header().Clone()
		}
		return c.post
	}
	return c.w.Header()
}

// WriteHeader snapshots the status and headers of the first final status.
// In write-through mode it passes it on; while holding, the status waits
// for the record. Informational statuses (1xx, except 101) pass through at
// once without being recorded; 101 (a protocol switch) passes through and
// turns the capture to write-through. A repeated call is passed on (net/http
// logs it) in write-through mode and ignored while holding.
func (c *capture) WriteHeader(code int) {
	if code < 200 && code != http.StatusSwitchingProtocols || code > 999 {
		c.w.WriteHeader(code)
		return
	}
	if c.code == 0 {
		c.snapshot(code)
		if code == http.StatusSwitchingProtocols && !c.through {
			c.through = true
			c.w.WriteHeader(code)
			return
		}
	} else if !c.through {
		return
	}
	if c.through {
		c.w.WriteHeader(code)
	}
}

func (c *capture) snapshot(code int) {
	c.code = code
	hdr := c.w.Header()
	c.conn = hdr["Connection"]
	version, flags, skip := byte(codecV2), byte(0), c.skip
	if c.h.legacy {
		version = codecV1
	}
	if cl := hdr[headerLength]; len(cl) == 1 {
		if n, err := strconv.Atoi(cl[0]); err == nil && n >= 0 {
			c.clen = n
			if version == codecV2 && cl[0] == strconv.Itoa(n) && !c.skip(headerLength) {
				// Stored as a flag: a replay answers the stored body's
				// length (as it did when the two differed).
				flags, skip = flagLength, c.skipLength
			}
		}
	}
	c.buf = appendHead(c.buf[:0], version, code, flags, hdr, skip)
	c.head = len(c.buf)
}

// skipLength is skip for a response whose Content-Length is a flag.
func (c *capture) skipLength(name string) bool { return name == headerLength || c.skip(name) }

// skip reports whether the header name is left out of the stored response:
// never-replayed and hop-by-hop headers, headers named in Connection, and
// headers that outer middleware set before the handler ran and that the
// handler left unchanged.
func (c *capture) skip(name string) bool {
	if c.h.denied(name) {
		return true
	}
	if len(c.conn) > 0 && connectionListed(c.conn, name) {
		return true
	}
	if vs, ok := c.entry[name]; ok && slices.Equal(vs, c.w.Header()[name]) {
		return true
	}
	return false
}

// Write records p and, in write-through mode, passes it to the client.
//
// While holding, Write answers as net/http would (http.ErrBodyNotAllowed
// for a status without a body, http.ErrContentLength past a declared
// length) and keeps the bytes until the record is completed; a body that
// grows past the stored-result cap completes the record early (see
// commitEarly) and streams from then on.
//
// In write-through mode, once a write to the client fails (the client went
// away), Write keeps recording and reports success without writing to the
// client any more, so that a handler copying a body (io.Copy,
// httputil.ReverseProxy) runs to its end and the record stores the whole
// response, never a truncated one (SPEC §3: completion does not depend on
// the client). Handlers learn that the client left from the request
// context, as usual. Errors that report a misuse of the writer
// (http.ErrBodyNotAllowed, http.ErrContentLength, http.ErrHijacked) are
// returned as they are, and only the bytes the client accepted are
// recorded.
func (c *capture) Write(p []byte) (int, error) {
	if c.code == 0 {
		c.snapshot(http.StatusOK)
	}
	if c.failed {
		return len(p), nil // the client got a problem; the rest is dropped
	}
	if c.holding() {
		if !bodyAllowed(c.code) {
			return 0, http.ErrBodyNotAllowed
		}
		var err error
		if c.clen >= 0 && c.body+len(p) > c.clen {
			p, err = p[:max(c.clen-c.body, 0)], http.ErrContentLength
		}
		if c.body+len(p) <= c.h.maxResult {
			c.record(p)
			return len(p), err
		}
		// Past the cap: complete with the body omitted, then stream.
		if !c.commitEarly() {
			return len(p), err
		}
		n, werr := c.Write(p)
		if werr == nil {
			werr = err
		}
		return n, werr
	}
	if c.gone {
		c.record(p)
		return len(p), nil
	}
	n, err := c.w.Write(p)
	if err != nil && !errors.Is(err, http.ErrBodyNotAllowed) && !errors.Is(err, http.ErrContentLength) && !errors.Is(err, http.ErrHijacked) {
		c.gone = true
		c.record(p)
		return len(p), nil
	}
	c.record(p[:n])
	return n, err
}

// bodyAllowed reports whether a response with status may have a body
// (RFC 9110: not 1xx, 204 or 304), as net/http decides.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// record appends p to the captured body, or drops the body once it grows
// past the cap.
func (c *capture) record(p []byte) {
	c.body += len(p)
	if c.omit {
		return
	}
	if c.body > c.h.maxResult {
		c.omit = true
		c.buf = c.buf[:c.head]
		return
	}
	c.buf = append(c.buf, p...)
}

// commitEarly decides the record before the handler has finished, when the
// response cannot be held whole: its body passed the stored-result cap, or
// it is an event stream being flushed. A response to be stored completes
// the record with status and headers only (a replay answers them with an
// empty body and Idempotency-Replay: omitted); once the store said yes, the
// held part goes out and the rest streams. If the completion fails, the
// client gets the answer execute would give (a 503 problem, or the result
// of the executor that took the key over) and the rest of the body is
// dropped. A response that is not stored (a 5xx) just starts streaming; its
// record is released when the handler returns. It reports whether the
// response now streams.
func (c *capture) commitEarly() bool {
	c.omit = true
	if !c.h.storedStatus(c.code) {
		c.through = true
		c.flushHeld()
		return true
	}
	result := make([]byte, c.head)
	copy(result, c.buf[:c.head])
	markOmitted(result)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.r.Context()), c.h.completeTimeout)
	err := c.lease.Complete(ctx, result)
	c.early = true
	if err == nil {
		cancel()
		c.flushHeld()
		return true
	}
	c.failed, c.earlyErr = true, err
	c.answered = c.h.notRecorded(ctx, c, err)
	cancel()
	return false
}

// flushHeld sends the held status, headers and body bytes to the client;
// from then on writes go through.
func (c *capture) flushHeld() {
	c.w.WriteHeader(c.code)
	if body := c.buf[c.head:]; len(body) > 0 {
		if _, err := c.w.Write(body); err != nil {
			c.gone = true
		}
	}
	if c.post != nil {
		c.trailers()
	}
}

// send answers the held response to the client after its record was
// completed or released, with the trailers the handler set after the
// status.
func (c *capture) send() {
	c.w.WriteHeader(c.code)
	if body := c.buf[c.head:]; len(body) > 0 && bodyAllowed(c.code) {
		_, _ = c.w.Write(body)
	}
	if c.post != nil {
		c.trailers()
	}
}

// trailers copies the trailer values the handler set after the status
// (names with http.TrailerPrefix, or announced in the Trailer header) from
// the held header copy to the client's header map, where net/http sends
// them after the body.
func (c *capture) trailers() {
	hdr := c.w.Header()
	declared := hdr["Trailer"]
	for k, vs := range c.post {
		if strings.HasPrefix(k, http.TrailerPrefix) || len(declared) > 0 && connectionListed(declared, k) {
			hdr[k] = vs
		}
	}
	c.post = nil
}

// reset removes the handler's headers from the client's header map, leaving
// those outer middleware set before the handler ran, so that a problem or a
// replay written instead of the handler's response carries none of them.
func (c *capture) reset() {
	hdr := c.w.Header()
	for k := range hdr {
		if vs, ok := c.entry[k]; ok {
			hdr[k] = vs
		} else {
			delete(hdr, k)
		}
	}
	c.post = nil
}

// Flush sends buffered data to the client (http.Flusher), writing an
// implicit 200 status first if none was written. While the response is
// held, Flush does nothing, except for an event stream (Content-Type
// text/event-stream), which completes the record early (see commitEarly)
// and then streams.
func (c *capture) Flush() {
	if c.code == 0 {
		c.snapshot(http.StatusOK)
	}
	if c.failed {
		return
	}
	if c.holding() {
		if !isEventStream(c.w.Header()) || !c.commitEarly() {
			return
		}
	}
	if c.gone {
		return
	}
	if c.flush != nil {
		c.flush.Flush()
		return
	}
	_ = http.NewResponseController(c.w).Flush()
}

// isEventStream reports whether the response is a server-sent event stream.
func isEventStream(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// Hijack takes over the connection (http.Hijacker) when the underlying
// writer allows it. The middleware cannot see a response written on a
// hijacked connection, so it releases the record instead of storing one.
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(c.w).Hijack()
	if err == nil {
		c.hijacked = true
	}
	return conn, rw, err
}

// Unwrap returns the underlying writer, for http.ResponseController.
// Writes made directly to it are not recorded (nor held).
func (c *capture) Unwrap() http.ResponseWriter { return c.w }
