package idem_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// corePackages are the packages of the core module (this directory's
// go.mod; the stores backed by a server or a file, the broker integrations,
// cmd/idemproxy, faults, examples and bench are modules of their own). They
// import the standard library only (and each other), so a user who imports
// the core compiles no third-party code, and the module requires nothing, so
// `go get github.com/idemkit/idem` adds no other module to a user's go.mod.
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
		out, err := goCmd("list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
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
	out, err := goCmd("list", "-deps", "github.com/idemkit/idem").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "net/http" {
			t.Error("package idem imports net/http")
		}
	}
}

// goCmd runs the go command on this module alone, as a user who requires it
// sees it: not through the repository's go.work.
func goCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	return cmd
}

func TestCoreModuleRequiresNothing(t *testing.T) {
	t.Parallel()
	out, err := goCmd("mod", "edit", "-json").Output()
	if err != nil {
		t.Fatalf("go mod edit -json: %v", err)
	}
	var mod struct {
		Module  struct{ Path string }
		Require []struct{ Path, Version string }
		Replace []json.RawMessage
		Tool    []json.RawMessage
	}
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	if mod.Module.Path != "github.com/idemkit/idem" {
		t.Fatalf("module %q", mod.Module.Path)
	}
	for _, r := range mod.Require {
		t.Errorf("the core module requires %s %s: every user would get it (test dependencies too; see internal/leakcheck)", r.Path, r.Version)
	}
	if len(mod.Replace) > 0 || len(mod.Tool) > 0 {
		t.Errorf("the core go.mod has replace or tool directives: %s", out)
	}
	out, err = goCmd("list", "-m", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, []string{"github.com/idemkit/idem"}) {
		t.Errorf("go list -m all = %q, want the core module alone", got)
	}
}

func TestCorePackagesListed(t *testing.T) {
	t.Parallel()
	out, err := goCmd("list", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list ./...: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if !slices.Contains(corePackages, pkg) && !strings.Contains(pkg+"/", "/internal/") {
			t.Errorf("package %s is in the core module but not in corePackages", pkg)
		}
	}
}
