package idemmsg_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestStandardLibraryOnly keeps broker SDKs out of idemmsg and webhook: their
// users compile no third-party code (the broker integrations live in their
// own packages).
func TestStandardLibraryOnly(t *testing.T) {
	t.Parallel()
	for _, pkg := range []string{"github.com/idemkit/idem/idemmsg", "github.com/idemkit/idem/idemmsg/webhook"} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep != "github.com/idemkit/idem" && !strings.HasPrefix(dep, "github.com/idemkit/idem/idemmsg") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
			if strings.Contains(dep, "/internal/") {
				t.Errorf("%s depends on the test-only package %s", pkg, dep)
			}
		}
	}
}
