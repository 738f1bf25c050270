package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCLIBuildsWithoutTheAgent: agentctl speaks the socket API through its
// wire types (agent/api) alone: neither compose-go, nor the Docker
// client, nor any other part of the agent is in its build.
func TestCLIBuildsWithoutTheAgent(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the dependencies with")
	}
	out, err := exec.CommandContext(t.Context(), goBin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	allowed := map[string]bool{"github.com/berth-deploy/berth/agent/api": true, "github.com/berth-deploy/berth/agent/clip": true,
		"github.com/berth-deploy/berth/cmd/agentctl": true}
	for dep := range strings.Lines(string(out)) {
		dep = strings.TrimSpace(dep)
		if strings.Contains(dep, "compose-spec") || strings.Contains(dep, "docker/docker") ||
			strings.HasPrefix(dep, "github.com/berth-deploy/berth/") && !allowed[dep] {
			t.Errorf("agentctl depends on %s", dep)
		}
	}
}
