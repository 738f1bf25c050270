package agent

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// TestNewRefusesASwarmProjectWithoutTheSwarmAPI: a project with backend:
// swarm on a Docker connection that has no Swarm API is refused at start,
// not at its first deploy; a project on the engine is not.
func TestNewRefusesASwarmProjectWithoutTheSwarmAPI(t *testing.T) {
	cfg := &config.Config{Projects: map[string]config.Project{"shop": {Backend: config.BackendSwarm}}}
	_, err := New(cfg, fakeengine.New(), nil, slog.New(slog.DiscardHandler))
	if !errors.Is(err, errNoSwarm) {
		t.Fatalf("New = %v, want %v", err, errNoSwarm)
	}
	cfg.Projects["shop"] = config.Project{Backend: config.BackendEngine}
	if _, err := New(cfg, fakeengine.New(), nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("New with an engine project: %v", err)
	}
}
