package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
)

// TestContainerOutlivesNoTimeout: a test that go test kills at its
// -timeout runs no cleanup, and its container (startContainer) goes away
// on its own once the deadline and containerGrace have passed. The test
// runs itself as a child (holdContainer) with -test.timeout=10s, and
// watches the child's container by its label.
func TestContainerOutlivesNoTimeout(t *testing.T) {
	if os.Getenv("BERTH_HOLD_CONTAINER") != "" {
		holdContainer(t)
		return
	}
	if !testenv.Required() {
		t.Skip("runs a container: set BERTH_REQUIRE_DOCKER=1 (or CI) to run it")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	baseImage(t, root) // built (or found) here, outside the child's 10 s
	child := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestContainerOutlivesNoTimeout$", "-test.timeout=10s", "-test.v")
	child.Env = append(os.Environ(), "BERTH_HOLD_CONTAINER=1")
	start := time.Now()
	out, err := child.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "panic: test timed out after 10s") {
		t.Fatalf("the child was not killed at its timeout: %v\n%s", err, out)
	}
	_, rest, ok := strings.Cut(string(out), "container ")
	name, _, _ := strings.Cut(rest, " ")
	if !ok || name == "" {
		t.Fatalf("the child started no container:\n%s", out)
	}
	// The container's state, "" once it is gone.
	list := func() string {
		out, err := exec.Command("docker", "inspect", "--format", "{{.State.Status}}", name).CombinedOutput()
		if err != nil && strings.Contains(string(out), "No such object") {
			return ""
		} else if err != nil {
			t.Fatalf("docker inspect %s: %v\n%s", name, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	t.Cleanup(func() { removeContainer(t, name) }) // should the test fail
	// No cleanup ran: the container is there after the child died.
	if list() == "" {
		t.Fatalf("container %s is not there after the child's timeout:\n%s", name, out)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for list() != "" {
		if time.Since(start) > 10*time.Second+containerGrace+time.Minute {
			t.Fatalf("container %s still runs %v after the child started (its deadline: 10s, then %v)", name, time.Since(start).Round(time.Second), containerGrace)
		}
		<-tick.C
	}
	t.Logf("the container was gone %v after the child started (deadline 10s + grace %v)", time.Since(start).Round(time.Second), containerGrace)
}

// holdContainer is the child: it starts a container and waits past its
// -test.timeout.
func holdContainer(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	c := startContainer(t, baseImage(t, root))
	t.Logf("container %s started; waiting for the timeout", c.id)
	<-t.Context().Done()
}
