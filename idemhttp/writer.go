package idemhttp

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
)

// capture is the http.ResponseWriter the handler writes to on a first
// execution. Every write goes through to the client at once; capture keeps
// a copy: the status and header snapshot (encoded when the status is
// written, which is when net/http snapshots them too) and the body up to
// the stored-result cap.
type capture struct {
	w        http.ResponseWriter
	h        *handler
	bp       *[]byte // pooled buffer box, for free
	buf      []byte  // encoded head, then the body bytes captured so far
	head     int     // length of the encoded head in buf
	body     int     // body bytes written by the handler (captured or not)
	code     int     // final status; 0 until written
	omit     bool    // body exceeded the cap and was dropped from buf
	gone     bool    // a write to the client failed: capture only
	hijacked bool    // the handler took over the connection
	flush    http.Flusher
	entry    http.Header // headers already set when the handler was called
	conn     []string    // Connection header values at snapshot time
}

// bufPool holds capture buffers. The capture itself is not pooled: a
// handler that (wrongly) writes after returning then touches only its own
// detached capture, never another request's.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func newCapture(w http.ResponseWriter, h *handler) *capture {
	bp := bufPool.Get().(*[]byte)
	c := &capture{w: w, h: h, bp: bp, buf: (*bp)[:0]}
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

// Header returns the underlying writer's header map.
func (c *capture) Header() http.Header { return c.w.Header() }

// WriteHeader snapshots the status and headers of the first final status
// and passes it on. Informational (1xx, except 101) statuses pass through
// without being recorded; a repeated call is passed on (net/http logs it).
func (c *capture) WriteHeader(code int) {
	if c.code == 0 && (code >= 200 && code <= 999 || code == http.StatusSwitchingProtocols) {
		c.snapshot(code)
	}
	c.w.WriteHeader(code)
}

func (c *capture) snapshot(code int) {
	c.code = code
	hdr := c.w.Header()
	c.conn = hdr["Connection"]
	c.buf = appendHead(c.buf[:0], code, 0, hdr, c.skip)
	c.head = len(c.buf)
}

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

// Write passes p to the client and records it.
//
// Once a write to the client fails (the client went away), Write keeps
// recording and reports success without writing to the client any more, so
// that a handler copying a body (io.Copy, httputil.ReverseProxy) runs to
// its end and the record stores the whole response, never a truncated one
// (SPEC §3: completion does not depend on the client). Handlers learn that
// the client left from the request context, as usual. Errors that report a
// misuse of the writer (http.ErrBodyNotAllowed, http.ErrContentLength,
// http.ErrHijacked) are returned as they are, and only the bytes the
// client accepted are recorded.
func (c *capture) Write(p []byte) (int, error) {
	if c.code == 0 {
		c.snapshot(http.StatusOK)
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

// Flush sends buffered data to the client (http.Flusher), writing an
// implicit 200 status first if none was written.
func (c *capture) Flush() {
	if c.code == 0 {
		c.snapshot(http.StatusOK)
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
// Writes made directly to it are not recorded.
func (c *capture) Unwrap() http.ResponseWriter { return c.w }
