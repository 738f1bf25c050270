package compose

import (
	"fmt"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

// TestResourcesUlimits: a container's ulimits are the service's, sorted
// by name, a single value as both limits, an empty entry left out (it
// panicked before Ulimits was shared with the Swarm backend).
func TestResourcesUlimits(t *testing.T) {
	var s types.ServiceConfig
	s.Ulimits = map[string]*types.UlimitsConfig{
		"nproc":  {Single: 65535},
		"nofile": {Soft: 1024, Hard: 2048},
		"core":   nil,
	}
	var got []string
	for _, u := range resources(s).Ulimits {
		got = append(got, fmt.Sprintf("%s=%d:%d", u.Name, u.Soft, u.Hard))
	}
	if want := "[nofile=1024:2048 nproc=65535:65535]"; fmt.Sprint(got) != want {
		t.Errorf("ulimits %v, want %s", got, want)
	}
	if u := resources(types.ServiceConfig{}).Ulimits; u != nil {
		t.Errorf("ulimits %v for a service without any, want none", u)
	}
}
