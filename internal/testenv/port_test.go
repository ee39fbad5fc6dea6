package testenv

import (
	"net"
	"strconv"
	"testing"
)

func TestPickPort(t *testing.T) {
	for range 20 {
		p := FreePort(t, 10000)
		if p < portLo || p+10000 >= portHi {
			t.Fatalf("port %d (bus %d) outside %d-%d", p, p+10000, portLo, portHi-1)
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			t.Fatalf("bus port of %d not free: %v", p, err)
		}
		l.Close()
	}
	if _, err := PickPort(20000); err == nil {
		t.Fatal("an offset leaving no port accepted")
	}
}
