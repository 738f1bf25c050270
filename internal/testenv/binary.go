package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// testAppPkg is the package every test image is built around.
const testAppPkg = "./examples/testapp"

// builtBinary is one entry of the per-process build cache.
type builtBinary struct {
	once sync.Once
	path string
	err  error
}

// binaries caches builds by key for the life of the test process; each entry
// is built at most once, guarded by its sync.Once.
var binaries sync.Map // key string -> *builtBinary

// TestAppBinary builds examples/testapp once per test process as a static
// Linux binary (CGO_ENABLED=0, -trimpath) and returns its path.
func TestAppBinary(t testing.TB) string {
	t.Helper()
	return cachedBuild(t, "testapp", testAppPkg, "GOOS=linux", "GOARCH="+runtime.GOARCH)
}

// Binary builds a main package of this module, such as "./cmd/agentd", once
// per test process and returns the path of the binary.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	return cachedBuild(t, "pkg:"+pkg, pkg)
}

// cachedBuild builds pkg (relative to the module root) with CGO_ENABLED=0 and
// extraEnv, once per key, into a fresh directory under os.TempDir() that
// outlives the test. A failed build fails every test that asks for it.
func cachedBuild(t testing.TB, key, pkg string, extraEnv ...string) string {
	t.Helper()
	v, _ := binaries.LoadOrStore(key, &builtBinary{})
	b := v.(*builtBinary)
	b.once.Do(func() {
		b.path, b.err = goBuild(t, pkg, extraEnv)
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", pkg, b.err)
	}
	return b.path
}

func goBuild(t testing.TB, pkg string, extraEnv []string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "berth-testbin-")
	if err != nil {
		return "", fmt.Errorf("make output dir: %w", err)
	}
	out := filepath.Join(dir, path.Base(pkg))
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), extraEnv...)
	if output, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, output)
	}
	return out, nil
}

// ModuleRoot walks up from the working directory to the directory holding
// go.mod (in a test: this module's root).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find module root: %w", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
