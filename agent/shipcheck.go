package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/berth-deploy/berth/compose/trust"
	"github.com/compose-spec/compose-go/v2/types"
)

// ErrShipPolicy marks a shipped compose file refused for what it holds:
// exit code 2, nothing changed.
var ErrShipPolicy = errors.New("refused by the project's policy for shipped compose files")

// checkShipped refuses a shipped compose file that holds what the
// project's policy does not allow, naming each service, key and value.
func (r *releaseRun) checkShipped(p *types.Project, src source) error {
	vs := trust.CheckShipped(p, shipPolicy(r.project, r.pc.AllowedImages, r.pc.AllowedPorts, r.pc.AllowedBindPaths, src.dir))
	if len(vs) == 0 {
		return nil
	}
	lines := make([]string, len(vs))
	for i, v := range vs {
		lines[i] = v.String()
	}
	return fmt.Errorf("%w (projects.%s: allowed_images, allowed_ports, allowed_bind_paths; see docs/compose.md):\n  %s",
		ErrShipPolicy, r.project, strings.Join(lines, "\n  "))
}

func shipPolicy(project string, images, ports, binds []string, dir string) trust.ShipPolicy {
	return trust.ShipPolicy{Project: project, AllowedImages: images, AllowedPorts: ports, AllowedBindPaths: binds, BundleDir: dir}
}
