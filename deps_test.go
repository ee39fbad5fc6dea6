package idem_test

import (
	"os/exec"
	"strings"
	"testing"
)

// corePackages import the standard library only (and each other), so a user
// who imports the core compiles no third-party code.
var corePackages = []string{
	"github.com/idemkit/idem",
	"github.com/idemkit/idem/memstore",
	"github.com/idemkit/idem/storetest",
	"github.com/idemkit/idem/idemhttp",
	"github.com/idemkit/idem/idemclient",
	"github.com/idemkit/idem/idemmsg",
	"github.com/idemkit/idem/idemmsg/webhook",
}

func TestCoreImportsStandardLibraryOnly(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the go command is needed for this test: %v", err)
	}
	for _, pkg := range corePackages {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep != "github.com/idemkit/idem" && !strings.HasPrefix(dep, "github.com/idemkit/idem/") {
				t.Errorf("%s depends on %s, outside the standard library", pkg, dep)
			}
			if strings.HasPrefix(dep, "github.com/idemkit/idem/internal/testenv") {
				t.Errorf("%s depends on the test-only package %s", pkg, dep)
			}
		}
	}
	// The root package must not pull in net/http: stores and consumers use it
	// without HTTP.
	out, err := exec.Command("go", "list", "-deps", "github.com/idemkit/idem").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "net/http" {
			t.Error("package idem imports net/http")
		}
	}
}
