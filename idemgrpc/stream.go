package idemgrpc

import (
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// capture is the grpc.ServerTransportStream a protected handler sees in its
// context (grpc.SetHeader, grpc.SendHeader and grpc.SetTrailer reach it).
// It keeps the header and trailer metadata instead of sending them: nothing
// of the answer reaches the client before the record is completed (SPEC §3,
// acknowledged ⇒ replayable), and what is stored is exactly what is sent.
// SendHeader fixes the header (a later SetHeader fails, as on grpc-go's own
// stream) but it goes out with the rest of the answer.
type capture struct {
	method  string
	mu      sync.Mutex
	header  metadata.MD
	trailer metadata.MD
	sent    bool // SendHeader was called
	done    bool // the handler returned: no more changes
}

var _ grpc.ServerTransportStream = (*capture)(nil)

// errIllegalHeaderWrite is what grpc-go's stream answers too.
var errIllegalHeaderWrite = errors.New("idemgrpc: SendHeader called multiple times, or the header set after it was sent")

// errCallEnded is returned for metadata set after the handler returned.
var errCallEnded = errors.New("idemgrpc: metadata set after the handler returned")

// Method returns the call's full method name.
func (c *capture) Method() string { return c.method }

// SetHeader adds md to the header metadata.
func (c *capture) SetHeader(md metadata.MD) error {
	if len(md) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return errCallEnded
	}
	if c.sent {
		return errIllegalHeaderWrite
	}
	c.header = join(c.header, md)
	return nil
}

// SendHeader adds md to the header metadata and fixes it. The header is sent
// with the answer, once the record is completed.
func (c *capture) SendHeader(md metadata.MD) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return errCallEnded
	}
	if c.sent {
		return errIllegalHeaderWrite
	}
	c.header = join(c.header, md)
	c.sent = true
	return nil
}

// SetTrailer adds md to the trailer metadata.
func (c *capture) SetTrailer(md metadata.MD) error {
	if len(md) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return errCallEnded
	}
	c.trailer = join(c.trailer, md)
	return nil
}

// finish ends the capture: later changes fail. It returns the header and
// trailer, which no one changes any more.
func (c *capture) finish() (header, trailer metadata.MD) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	return c.header, c.trailer
}

// join adds md's pairs to dst (allocated if nil), copying the values, as
// metadata.Join does.
func join(dst, md metadata.MD) metadata.MD {
	if dst == nil {
		dst = make(metadata.MD, len(md))
	}
	for k, vs := range md {
		dst[k] = append(dst[k], vs...)
	}
	return dst
}

// without returns md without key (md itself when it does not hold key).
func without(md metadata.MD, key string) metadata.MD {
	if _, ok := md[key]; !ok {
		return md
	}
	out := make(metadata.MD, len(md))
	for k, vs := range md {
		if k != key {
			out[k] = vs
		}
	}
	return out
}
