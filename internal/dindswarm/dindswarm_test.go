package dindswarm

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// TestThreeNodesServeADNSRRService brings up three nodes, checks that they
// joined one swarm, then runs a dnsrr service of the test image with one
// replica per node on an overlay network: each node answers on its host-mode
// published port, and a task on the manager reaches the tasks on the other
// nodes across the overlay (vxlan), by address and by the service's name.
func TestThreeNodesServeADNSRRService(t *testing.T) {
	c := Start(t, 3)
	t.Logf("3 nodes up and joined in %s (image build excluded); nodes %v, registry %s", c.BringUp.Round(100*time.Millisecond), c.IPs(), c.RegistryAddr())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	m := c.Manager().Client

	nodes, err := m.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("the manager lists %d nodes, want 3", len(nodes))
	}
	for _, n := range nodes {
		if c.NodeByID(n.ID) == nil {
			t.Errorf("node %s (%s) is not one of the cluster's", n.ID, n.Description.Hostname)
		}
	}

	// Pushed to the host's registry, pulled by the nodes through the forwarder.
	testenv.BuildAndPush(t, c.Host, c.Registry.Ref("dindswarm/testapp:v1"), testenv.Image{
		Env: map[string]string{"VERSION": "dind-v1"}, Healthcheck: true})
	ref := c.Ref("dindswarm/testapp:v1")

	name := testenv.UniqueName("dindweb")
	netName := name + "_net"
	if _, err := m.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "overlay", Attachable: true}); err != nil {
		t.Fatal(err)
	}
	replicas := uint64(3)
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: ref},
			Placement: &swarm.Placement{MaxReplicas: 1,
				Preferences: []swarm.PlacementPreference{{Spread: &swarm.SpreadOver{SpreadDescriptor: "node.id"}}}},
			Networks: []swarm.NetworkAttachmentConfig{{Target: netName, Aliases: []string{"web"}}},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR, Ports: []swarm.PortConfig{{
			Protocol: swarm.PortConfigProtocolTCP, TargetPort: 8080, PublishedPort: 18080,
			PublishMode: swarm.PortConfigPublishModeHost}}},
	}
	created, err := m.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()

	// Every task running (healthy: swarmkit reports RUNNING after the
	// healthcheck passes), one per node.
	var tasks []swarm.Task
	err = waitFor(ctx, 500*time.Millisecond, func(ctx context.Context) error {
		tasks, err = m.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
			filters.Arg("service", created.ID), filters.Arg("desired-state", "running"))})
		if err != nil {
			return err
		}
		running := 0
		for _, tk := range tasks {
			if tk.Status.State == swarm.TaskStateRunning {
				running++
			}
		}
		if running != 3 {
			return fmt.Errorf("%d of 3 tasks running", running)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	t.Logf("3 tasks running (healthy) %s after create", time.Since(began).Round(100*time.Millisecond))

	taskIP := map[string]string{} // node ID -> task address on the overlay
	for _, tk := range tasks {
		for _, a := range tk.NetworksAttachments {
			if a.Network.Spec.Name == netName && len(a.Addresses) > 0 {
				taskIP[tk.NodeID] = strings.Split(a.Addresses[0], "/")[0]
			}
		}
	}
	if len(taskIP) != 3 {
		t.Fatalf("tasks on %d nodes (%v), want one on each of 3", len(taskIP), taskIP)
	}

	for _, n := range c.Nodes {
		body, err := get(ctx, "http://"+n.IP+":18080/")
		if err != nil {
			t.Errorf("node %s: %v", n.Name, err)
			continue
		}
		if body != "dind-v1\n" {
			t.Errorf("node %s answers %q, want dind-v1", n.Name, body)
		}
	}

	// Across the overlay, from the task on the manager. Its task is RUNNING,
	// so its container is healthy: swarmkit holds a task with a healthcheck
	// in STARTING until the check passes.
	local := taskContainer(t, ctx, c.Manager().Client, name)
	if insp, err := c.Manager().Client.ContainerInspect(ctx, local); err != nil {
		t.Fatal(err)
	} else if insp.State.Health == nil || insp.State.Health.Status != "healthy" {
		t.Errorf("a RUNNING task's container is not healthy: %+v", insp.State.Health)
	}
	for _, n := range c.Nodes {
		url := "http://" + taskIP[n.ID] + ":8080/healthz"
		if code, out := execIn(t, ctx, c.Manager().Client, local, "/testapp", "check", url); code != 0 {
			t.Errorf("from the manager's task, %s (task on %s): exit %d %s", url, n.Name, code, out)
		}
	}
	if code, out := execIn(t, ctx, c.Manager().Client, local, "/testapp", "check", "http://web:8080/healthz"); code != 0 {
		t.Errorf("from the manager's task, the service name web: exit %d %s", code, out)
	}

	// Drain a worker: its task goes; with MaxReplicas 1 and two nodes left,
	// one task stays pending and two keep running.
	worker := c.Nodes[2]
	if err := c.Drain(ctx, worker); err != nil {
		t.Fatal(err)
	}
	err = waitFor(ctx, 500*time.Millisecond, func(ctx context.Context) error {
		list, err := m.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", created.ID), filters.Arg("node", worker.ID))})
		if err != nil {
			return err
		}
		for _, tk := range list {
			if tk.Status.State == swarm.TaskStateRunning {
				return fmt.Errorf("task %s still running on the drained node", tk.ID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("drain %s: %v", worker.Name, err)
	}
	if _, err := get(ctx, "http://"+c.Nodes[0].IP+":18080/"); err != nil {
		t.Errorf("after the drain, the manager: %v", err)
	}
}

func get(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// taskContainer returns the ID of a container of service on the node behind cli.
func taskContainer(t *testing.T, ctx context.Context, cli *client.Client, service string) string {
	t.Helper()
	list, err := cli.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", "com.docker.swarm.service.name="+service))})
	if err != nil || len(list) == 0 {
		t.Fatalf("no container of %s on this node: %v", service, err)
	}
	return list[0].ID
}

// execIn runs cmd in a container and returns its exit code and output.
func execIn(t *testing.T, ctx context.Context, cli *client.Client, id string, cmd ...string) (int, string) {
	t.Helper()
	ex, err := cli.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	att, err := cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	out, _ := io.ReadAll(att.Reader)
	att.Close()
	insp, err := cli.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	return insp.ExitCode, string(out)
}
