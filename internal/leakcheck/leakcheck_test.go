package leakcheck

import (
	"strings"
	"testing"
	"time"
)

func TestLeakedFindsAndForgets(t *testing.T) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-stop
	}()
	found := false
	for _, g := range Leaked() {
		if strings.Contains(g, "TestLeakedFindsAndForgets.func1") {
			found = true
		}
	}
	if !found {
		t.Fatalf("a blocked goroutine was not reported: %q", Leaked())
	}
	close(stop)
	<-done
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := false
		for _, g := range Leaked() {
			if strings.Contains(g, "TestLeakedFindsAndForgets.func1") {
				left = true
			}
		}
		if !left {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a finished goroutine is still reported")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFuncName(t *testing.T) {
	for in, want := range map[string]string{
		"testing.(*T).Run(0xc000102b60, {0x5c2a2d, 0x4}, 0x5d2d18)": "testing.(*T).Run",
		"main.main()": "main.main",
		"created by net/http.(*Server).Serve in goroutine 5": "net/http.(*Server).Serve in goroutine 5",
	} {
		if got := funcName(in); got != want {
			t.Errorf("funcName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMain(m *testing.M) { VerifyTestMain(m) }
