package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// The ports PickPort chooses from: below Linux's ephemeral range
// (32768-60999 by default), so that no outgoing connection or port-0
// listener of the machine takes a picked port before the test's server
// binds it, or while a restarted server is down. The services the test
// command starts use 15432, 16379 and 17001-17003, below this range.
const (
	portLo = 20000
	portHi = 32768 // exclusive
)

// PickPort returns a random loopback port that, and port+off for each of
// offsets (a Redis Cluster node's bus port is port+10000), could be
// listened on a moment ago, all below portHi. A server may still lose the
// port to another test before it binds it: start it again on a new pick
// when it exits.
func PickPort(offsets ...int) (int, error) {
	maxOff := 0
	for _, off := range offsets {
		maxOff = max(maxOff, off)
	}
	n := portHi - maxOff - portLo
	if n <= 0 {
		return 0, fmt.Errorf("testenv: offsets %v leave no port below %d", offsets, portHi)
	}
next:
	for range 500 {
		port := portLo + rand.IntN(n)
		for _, off := range append([]int{0}, offsets...) {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+off))
			if err != nil {
				continue next
			}
			l.Close()
		}
		return port, nil
	}
	return 0, fmt.Errorf("testenv: no free port in %d-%d (offsets %v)", portLo, portLo+n-1, offsets)
}

// FreePort is PickPort that fails the test when there is no port.
func FreePort(t testing.TB, offsets ...int) int {
	t.Helper()
	port, err := PickPort(offsets...)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
