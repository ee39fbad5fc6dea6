package main

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	stat := "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0"
	if d, ok := parseStatCPU(stat); !ok || d != 3*time.Second {
		t.Fatalf("parseStatCPU = %v, %v", d, ok)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 u 50 0"} {
		if _, ok := parseStatCPU(bad); ok {
			t.Errorf("parseStatCPU(%q) ok", bad)
		}
	}
	if _, ok := procCPU(os.Getpid()); !ok {
		t.Fatal("procCPU of this process failed")
	}
}
