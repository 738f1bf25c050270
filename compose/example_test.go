package compose

import (
	"testing"
	"time"
)

// TestDjangoExample loads the reference stack's compose file the way agentd
// does and checks the rollout it implies, so the example cannot drift from
// what Berth accepts.
func TestDjangoExample(t *testing.T) {
	p, err := Load(t.Context(), LoadOptions{Name: "shop", ComposeFile: "../examples/django/compose.yaml", Env: map[string]string{
		"REGISTRY": "registry.test/shop", "DJANGO_SECRET_KEY": "x", "POSTGRES_PASSWORD": "x", "RABBITMQ_PASSWORD": "x",
	}})
	if err != nil {
		t.Fatal(err)
	}
	d := desired(t, p)
	want := map[string]string{"web": StartFirst, "worker": StartFirst, "beat": StopFirst, "db": StopFirst, "rabbitmq": StopFirst, "nginx": StopFirst}
	for _, s := range d.Services {
		if s.Policy.Order != want[s.Name] {
			t.Errorf("%s: order %s (%s), want %s", s.Name, s.Policy.Order, s.Policy.OrderReason, want[s.Name])
		}
		switch s.Name {
		case "web":
			if len(s.Policy.PreDeploy) != 2 || s.Policy.Health.HTTP == nil {
				t.Errorf("web: hooks %v, health %+v", s.Policy.PreDeploy, s.Policy.Health)
			}
		case "beat":
			if !s.Policy.Singleton {
				t.Error("beat is not a singleton")
			}
		case "nginx":
			px := s.Policy.Proxy
			if px == nil || px.Servers != "/etc/nginx/berth/servers" || px.Upstreams != "" || px.Ports["web"] != 8000 || px.Drain != 30*time.Second {
				t.Errorf("nginx proxy = %+v", px)
			}
		}
	}
}
