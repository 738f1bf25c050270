package compose

import (
	"context"

	"github.com/berth-deploy/berth/healthcheck"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// fakeEngine is the shared in-memory engine (internal/fakeengine), with
// the two short names this package's tests use most.
type fakeEngine struct{ *fakeengine.Engine }

func newFakeEngine() *fakeEngine { return &fakeEngine{fakeengine.New()} }

func (f *fakeEngine) ids() map[string]string { return f.IDs() }

func (f *fakeEngine) takeCalls() []string { return f.TakeCalls() }

// fakeGater logs "gate NAME" in the engine's calls and fails the
// containers named in fail.
type fakeGater struct {
	eng  *fakeEngine
	fail map[string]error
}

func (g *fakeGater) Gate(_ context.Context, id string, _ healthcheck.Spec) error {
	name := g.eng.Name(id)
	g.eng.Record("gate %s", name)
	return g.fail[name]
}
