package proxyconfig

import (
	"testing"
)

// FuzzConfig checks that Parse never panics, and that what it accepts keeps
// the invariants the proxy relies on.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(full), uint8(0))
	f.Add([]byte(`{"routes":[{"path":"/a/*/b","lease":"1s"}]}`), uint8(2))
	f.Add([]byte("routes: [{stored_statuses: [\"!429\", 200-299]}]"), uint8(1))
	f.Add([]byte("default: &a {ttl: 1h}\nx: *a"), uint8(1))
	f.Add([]byte("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"), uint8(0))
	f.Add([]byte(""), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, format uint8) {
		c, err := Parse(data, Format(format%3), Overrides{})
		if err != nil {
			return
		}
		for _, r := range c.AllRoutes() {
			if r.Lease <= 0 || r.Lease >= r.TTL {
				t.Fatalf("route %s: lease %v ttl %v accepted", r.Name, r.Lease, r.TTL)
			}
			if r.MaxBody <= 0 || r.MaxResult <= 0 || r.UpstreamTimeout <= 0 || r.Wait < 0 {
				t.Fatalf("route %s: bad limits accepted: %+v", r.Name, r.Policy)
			}
			_ = r.Match("POST", "/a/b/c")
		}
		_ = c.Match("POST", "/")
	})
}
