package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/internal/testenv"
)

// TestBaseImage builds (or finds cached) the Debian image the real Django
// stack runs on, and checks the stack's programs are in it. It needs root
// and Debian's mirror, so it only runs where the services are required (CI
// and scripts/test.sh); the first build takes about a minute.
func TestBaseImage(t *testing.T) {
	if !testenv.Required() {
		t.Skip("builds a Debian image with debootstrap: runs under scripts/test.sh and in CI")
	}
	testenv.Docker(t)
	out, err := exec.CommandContext(t.Context(), filepath.Join("..", "..", "scripts", "base-image.sh")).Output()
	if err != nil {
		t.Fatalf("base-image.sh: %v\n%s", err, stderrOf(err))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tag := lines[len(lines)-1]
	if !strings.HasPrefix(tag, "berth/debian-base:") {
		t.Fatalf("last line %q is not the image tag", tag)
	}
	check := `python3 -c "import django, celery, psycopg2, kombu; print('django', django.get_version())" &&
gunicorn --version && celery --version && nginx -v 2>&1 &&
test -x /usr/lib/postgresql/15/bin/postgres &&
command -v pg_createcluster && command -v rabbitmq-server && command -v curl`
	got, err := exec.CommandContext(t.Context(), "docker", "run", "--rm", tag, "sh", "-ec", check).CombinedOutput()
	if err != nil {
		t.Fatalf("programs missing from %s: %v\n%s", tag, err, got)
	}
	for _, want := range []string{"django ", "gunicorn", "nginx version", "pg_createcluster", "rabbitmq-server", "curl"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("%s: output lacks %q:\n%s", tag, want, got)
		}
	}
	// A second run is a cache hit.
	again, err := exec.CommandContext(t.Context(), filepath.Join("..", "..", "scripts", "base-image.sh"), "--print-tag").Output()
	if err != nil || strings.TrimSpace(string(again)) != tag {
		t.Errorf("--print-tag = %q (%v), want %s", again, err, tag)
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
