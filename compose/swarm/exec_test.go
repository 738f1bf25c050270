package swarm

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"

	"github.com/docker/docker/api/types/swarm"
)

// probed makes web's x-berth.health an HTTP probe of container port 8000,
// published in host mode on the port srv listens on.
func probed(t *testing.T, srv *httptest.Server) func(*compose.ServiceSpec) {
	_, p, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	return func(s *compose.ServiceSpec) {
		s.Policy.Health.HTTP = &healthcheck.HTTPProbe{Path: "healthz", Port: 8000, Host: "shop.example.com"}
		s.Policy.Health.Interval = 20 * time.Millisecond
		s.Swarm.EndpointSpec = &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR, Ports: []swarm.PortConfig{{
			Protocol: swarm.PortConfigProtocolTCP, TargetPort: 8000, PublishedPort: uint32(port), PublishMode: swarm.PortConfigPublishModeHost,
		}}}
	}
}

func TestGateProbesTheTaskOnItsNode(t *testing.T) {
	var hits atomic.Int32
	var host atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host.Store(r.Host + " " + r.URL.Path)
		switch hits.Add(1) {
		case 1, 2:
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case 3: // not the status the probe wants
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	f := newFakeSwarm()
	status := func(s *compose.ServiceSpec) { s.Policy.Health.HTTP.Status = http.StatusNoContent }
	if err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", probed(t, srv), status))); err != nil {
		t.Fatalf("gate: %v", err)
	}
	if n := hits.Load(); n != 4 {
		t.Errorf("probe answered %d times, want 4 (two 503s, a 200, then the 204 it wants)", n)
	}
	if got := host.Load(); got != "shop.example.com /healthz" {
		t.Errorf("probe request = %v", got)
	}
}

func TestGateProbeFailsAtTheLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	f := newFakeSwarm()
	err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", probed(t, srv), gateLimit(300*time.Millisecond))))
	if err == nil || !strings.Contains(err.Error(), "not ready within 300ms") || !strings.Contains(err.Error(), "500 Internal Server Error") {
		t.Fatalf("err = %v, want the probe's last answer", err)
	}
}

func TestGateRefusesAProbeWithoutAHostPort(t *testing.T) {
	f := newFakeSwarm()
	tcp := func(s *compose.ServiceSpec) { s.Policy.Health.TCP = &healthcheck.TCPProbe{Port: 5432} }
	err := deploy(t, newLife(f, "1"), desired(svc("db", "v1", tcp)))
	if err == nil || !strings.Contains(err.Error(), "port 5432") {
		t.Fatalf("err = %v", err)
	}
}

func TestGateTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	tcp := func(s *compose.ServiceSpec) {
		s.Policy.Health.TCP = &healthcheck.TCPProbe{Port: 5432}
		s.Swarm.EndpointSpec = &swarm.EndpointSpec{Ports: []swarm.PortConfig{
			{TargetPort: 5432, PublishedPort: uint32(port), PublishMode: swarm.PortConfigPublishModeHost},
			{TargetPort: 5432, PublishedPort: 1, PublishMode: swarm.PortConfigPublishModeIngress},
		}}
	}
	f := newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("db", "v1", tcp, gateLimit(2*time.Second)))); err != nil {
		t.Fatal(err)
	}
	// The probe's connection, accepted (perhaps a moment after the dial
	// returned).
	deadline := time.Now().Add(5 * time.Second)
	for conns.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if conns.Load() != 1 {
		t.Errorf("%d connections, want the probe's one", conns.Load())
	}
}
