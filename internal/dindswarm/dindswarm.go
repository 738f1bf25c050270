// Package dindswarm brings up a Docker Swarm of several engines for
// integration tests: each node is a dockerd running in a container of the
// host's engine (Berth's Debian base image plus docker.io), on a bridge
// network the test creates, and node 1 is the manager the others join.
//
// --privileged fails on the test machine (one capability is missing from its
// bounding set), so a node gets the capabilities dockerd needs one by one,
// seccomp, AppArmor and the masked /proc and /sys paths unconfined,
// /sys/fs/cgroup mounted read-write and a volume for /var/lib/docker.
//
// Images: tests push to a registry on the host (testenv.StartRegistry, on
// 127.0.0.1), which the nodes cannot reach; the cluster forwards a TCP port
// on the test network's gateway address to it, every node's dockerd trusts
// that address as an insecure registry, and tests write image references as
// RegistryAddr()/name. Both addresses serve the same content.
//
// Everything a Cluster creates (containers, their volumes, the network, the
// forwarder) is removed when the test ends.
package dindswarm

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// caps are the capabilities a node's dockerd needs (what --privileged would
// give, less the one the machine lacks).
var caps = []string{"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "MKNOD", "SYS_MODULE", "SYS_RAWIO",
	"SYS_NICE", "IPC_LOCK", "NET_RAW", "SYS_CHROOT", "SETFCAP", "DAC_READ_SEARCH"}

// nodeDockerfile is the node image on top of the base image (FROM is added).
const nodeDockerfile = `RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io iproute2 iptables ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
`

// dockerdPort is where every node's dockerd listens on the test network
// (plain TCP, no TLS: the network is the test's own).
const dockerdPort = "2375"

// Node is one engine of the cluster.
type Node struct {
	Name      string         // container name
	Container string         // container ID on the host's engine
	IP        string         // address on the test network
	Client    *client.Client // DOCKER_HOST tcp://IP:2375
	ID        string         // the swarm node ID
}

// Host is the node's DOCKER_HOST value.
func (n *Node) Host() string { return "tcp://" + net.JoinHostPort(n.IP, dockerdPort) }

// Cluster is a running swarm of dockerd-in-container nodes.
type Cluster struct {
	Nodes    []*Node
	Network  string            // the test network's name
	Gateway  string            // the test network's gateway (the host's address on it)
	Registry *testenv.Registry // the host's registry: push here (127.0.0.1)
	Host     *client.Client    // the host's engine
	BringUp  time.Duration     // how long Start took, image build excluded
	fwd      *forwarder
}

// Manager is node 1, the swarm's only manager.
func (c *Cluster) Manager() *Node { return c.Nodes[0] }

// ManagerAddr is the manager's address on the test network.
func (c *Cluster) ManagerAddr() string { return c.Nodes[0].IP }

// RegistryAddr is the registry as the nodes reach it: GATEWAY:PORT.
func (c *Cluster) RegistryAddr() string { return c.fwd.addr }

// Ref maps name ("web:v1") to the reference the nodes pull: RegistryAddr()/name.
func (c *Cluster) Ref(name string) string { return c.RegistryAddr() + "/" + name }

// IPs returns the nodes' addresses, node 1 first.
func (c *Cluster) IPs() []string {
	ips := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		ips[i] = n.IP
	}
	return ips
}

// NodeByID returns the node with the swarm node ID id, or nil.
func (c *Cluster) NodeByID(id string) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// Drain sets node's availability to drain through the manager (as
// `docker node update --availability drain`): Swarm moves its tasks away.
func (c *Cluster) Drain(ctx context.Context, node *Node) error {
	return c.setAvailability(ctx, node, swarm.NodeAvailabilityDrain)
}

// Activate makes a drained node active again.
func (c *Cluster) Activate(ctx context.Context, node *Node) error {
	return c.setAvailability(ctx, node, swarm.NodeAvailabilityActive)
}

func (c *Cluster) setAvailability(ctx context.Context, node *Node, a swarm.NodeAvailability) error {
	m := c.Manager().Client
	n, _, err := m.NodeInspectWithRaw(ctx, node.ID)
	if err != nil {
		return fmt.Errorf("set availability of %s: inspect: %w", node.Name, err)
	}
	spec := n.Spec
	spec.Availability = a
	if err := m.NodeUpdate(ctx, node.ID, n.Version, spec); err != nil {
		return fmt.Errorf("set availability of %s to %s: %w", node.Name, a, err)
	}
	return nil
}

// Start brings up n nodes joined into one swarm (node 1 the manager) and
// waits until the manager sees all of them ready. It skips the test when the
// host's engine or the registry is missing (fails under BERTH_REQUIRE_DOCKER
// or CI) and removes everything when the test ends.
func Start(t *testing.T, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("dindswarm: %d nodes", n)
	}
	host := testenv.Docker(t)
	reg := testenv.StartRegistry(t)
	img := NodeImage(t, host)

	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	name := testenv.UniqueName("berth-dind")
	c := &Cluster{Network: name, Registry: reg, Host: host}
	t.Cleanup(func() { c.remove(t) })

	// The network carries a label so that an operator can find leftovers.
	created, err := host.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{"io.berth.test": "dindswarm"}})
	if err != nil {
		t.Fatalf("dindswarm: create network: %v", err)
	}
	inspect, err := host.NetworkInspect(ctx, created.ID, network.InspectOptions{})
	if err != nil || len(inspect.IPAM.Config) == 0 || inspect.IPAM.Config[0].Gateway == "" {
		t.Fatalf("dindswarm: network %s has no gateway: %v %+v", name, err, inspect.IPAM)
	}
	c.Gateway = inspect.IPAM.Config[0].Gateway

	c.fwd, err = forward(net.JoinHostPort(c.Gateway, "0"), reg.Addr)
	if err != nil {
		t.Fatalf("dindswarm: %v", err)
	}

	// The nodes start in parallel: each dockerd takes a few seconds.
	c.Nodes = make([]*Node, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Nodes[i], errs[i] = c.startNode(ctx, t, img, fmt.Sprintf("%s-%d", name, i+1))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("dindswarm: %v", err)
	}
	if err := c.join(ctx); err != nil {
		t.Fatalf("dindswarm: %v", err)
	}
	c.BringUp = time.Since(began)
	return c
}

// NodeImage returns the node image's tag, building it when the host does not
// have it: the base image (scripts/base-image.sh, built if missing) plus
// docker.io, cached by a tag derived from the base tag and the Dockerfile.
func NodeImage(t testing.TB, host *client.Client) string {
	t.Helper()
	imageOnce.Do(func() { builtImage, imageErr = buildNodeImage(t, host) })
	if imageErr != nil {
		t.Fatalf("dindswarm: %v", imageErr)
	}
	return builtImage
}

var (
	imageOnce  sync.Once
	builtImage string
	imageErr   error
)

func buildNodeImage(t testing.TB, host *client.Client) (string, error) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	base, err := BaseImage(ctx, t, host)
	if err != nil {
		return "", err
	}
	dockerfile := "FROM " + base + "\n" + nodeDockerfile
	tag := "berth/dind-node:" + strings.TrimPrefix(base[strings.LastIndex(base, ":")+1:], "sha256") + "-" + shortHash(dockerfile)
	if _, err := host.ImageInspect(ctx, tag); err == nil {
		return tag, nil
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), Typeflag: tar.TypeReg}); err != nil {
		return "", fmt.Errorf("build node image: %w", err)
	}
	if _, err := tw.Write([]byte(dockerfile)); err != nil {
		return "", fmt.Errorf("build node image: %w", err)
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("build node image: %w", err)
	}
	resp, err := host.ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{tag}, Remove: true,
		ForceRemove: true, Version: build.BuilderV1})
	if err != nil {
		return "", fmt.Errorf("build node image %s: %w", tag, err)
	}
	defer resp.Body.Close()
	if out, err := readStream(resp.Body); err != nil {
		return "", fmt.Errorf("build node image %s: %w\n%s", tag, err, out)
	}
	t.Logf("dindswarm: built node image %s", tag)
	return tag, nil
}

// BaseImage returns the Debian base image's tag (scripts/base-image.sh
// --print-tag), running the script to build it when the host lacks it.
func BaseImage(ctx context.Context, t testing.TB, host *client.Client) (string, error) {
	root, err := testenv.ModuleRoot()
	if err != nil {
		return "", err
	}
	script := root + "/scripts/base-image.sh"
	out, err := exec.CommandContext(ctx, script, "--print-tag").Output()
	if err != nil {
		return "", fmt.Errorf("base image: %s --print-tag: %w", script, err)
	}
	tag := strings.TrimSpace(string(out))
	if _, err := host.ImageInspect(ctx, tag); err == nil {
		return tag, nil
	}
	t.Logf("dindswarm: building the base image %s (minutes)", tag)
	if out, err := exec.CommandContext(ctx, script).CombinedOutput(); err != nil {
		return "", fmt.Errorf("base image: %s: %w\n%s", script, err, out)
	}
	return tag, nil
}

// startNode runs one node's container and waits until its dockerd answers.
func (c *Cluster) startNode(ctx context.Context, t *testing.T, img, name string) (*Node, error) {
	cmd := []string{"dockerd", "--host", "unix:///var/run/docker.sock",
		"--host", "tcp://0.0.0.0:" + dockerdPort, "--tls=false",
		"--insecure-registry", c.RegistryAddr()}
	hc := &container.HostConfig{
		CapAdd:      caps,
		SecurityOpt: []string{"seccomp=unconfined", "apparmor=unconfined"},
		// systempaths=unconfined: the CLI sends it as empty masked and
		// read-only path lists (the API refuses the option itself).
		MaskedPaths:   []string{},
		ReadonlyPaths: []string{},
		Mounts: []mount.Mount{
			{Type: mount.TypeBind, Source: "/sys/fs/cgroup", Target: "/sys/fs/cgroup"},
			{Type: mount.TypeVolume, Source: name, Target: "/var/lib/docker"},
		},
		NetworkMode: container.NetworkMode(c.Network),
	}
	labels := map[string]string{"io.berth.test": "dindswarm"}
	created, err := c.Host.ContainerCreate(ctx, &container.Config{Image: img, Cmd: cmd, Hostname: name, Labels: labels},
		hc, nil, nil, name)
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	node := &Node{Name: name, Container: created.ID}
	if err := c.Host.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return node, fmt.Errorf("start node %s: %w", name, err)
	}
	inspect, err := c.Host.ContainerInspect(ctx, created.ID)
	if err != nil {
		return node, fmt.Errorf("inspect node %s: %w", name, err)
	}
	if ep := inspect.NetworkSettings.Networks[c.Network]; ep != nil {
		node.IP = ep.IPAddress
	}
	if node.IP == "" {
		return node, fmt.Errorf("node %s has no address on %s", name, c.Network)
	}
	node.Client, err = client.NewClientWithOpts(client.WithHost(node.Host()), client.WithAPIVersionNegotiation())
	if err != nil {
		return node, fmt.Errorf("client for node %s: %w", name, err)
	}
	if err := waitFor(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := node.Client.Ping(pctx)
		return err
	}); err != nil {
		return node, fmt.Errorf("node %s: dockerd did not answer: %w\n%s", name, err, c.logs(node))
	}
	return node, nil
}

// join makes node 1 the manager and joins the others as workers, then waits
// until the manager lists every node ready.
func (c *Cluster) join(ctx context.Context) error {
	m := c.Manager()
	mgrAddr := net.JoinHostPort(m.IP, "2377")
	if _, err := m.Client.SwarmInit(ctx, swarm.InitRequest{ListenAddr: "0.0.0.0:2377", AdvertiseAddr: mgrAddr}); err != nil {
		return fmt.Errorf("swarm init on %s: %w", m.Name, err)
	}
	sw, err := m.Client.SwarmInspect(ctx)
	if err != nil {
		return fmt.Errorf("swarm inspect: %w", err)
	}
	for _, n := range c.Nodes[1:] {
		err := n.Client.SwarmJoin(ctx, swarm.JoinRequest{ListenAddr: "0.0.0.0:2377",
			AdvertiseAddr: net.JoinHostPort(n.IP, "2377"), RemoteAddrs: []string{mgrAddr},
			JoinToken: sw.JoinTokens.Worker})
		if err != nil {
			return fmt.Errorf("swarm join %s: %w", n.Name, err)
		}
	}
	for _, n := range c.Nodes {
		info, err := n.Client.Info(ctx)
		if err != nil {
			return fmt.Errorf("info %s: %w", n.Name, err)
		}
		n.ID = info.Swarm.NodeID
	}
	return waitFor(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		nodes, err := m.Client.NodeList(ctx, swarm.NodeListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes {
			if n.Status.State == swarm.NodeStateReady {
				ready++
			}
		}
		if ready < len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes ready", ready, len(c.Nodes))
		}
		return nil
	})
}

// remove deletes the nodes (and their /var/lib/docker volumes), the network
// and the forwarder. Errors are reported, not fatal.
func (c *Cluster) remove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 2*time.Minute)
	defer cancel()
	for _, n := range c.Nodes {
		if n == nil {
			continue
		}
		if n.Client != nil {
			n.Client.Close()
		}
		err := c.Host.ContainerRemove(ctx, n.Container, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil {
			t.Errorf("dindswarm: remove node %s: %v", n.Name, err)
		}
		if err := c.Host.VolumeRemove(ctx, n.Name, true); err != nil && !strings.Contains(err.Error(), "No such volume") {
			t.Errorf("dindswarm: remove volume %s: %v", n.Name, err)
		}
	}
	if c.fwd != nil {
		c.fwd.close()
	}
	if c.Network != "" {
		if err := c.Host.NetworkRemove(ctx, c.Network); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Errorf("dindswarm: remove network %s: %v", c.Network, err)
		}
	}
}

// logs returns the tail of a node's dockerd log, for failure messages.
func (c *Cluster) logs(n *Node) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := c.Host.ContainerLogs(ctx, n.Container, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "30"})
	if err != nil {
		return "(no logs: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

// waitFor calls try on every tick until it succeeds or ctx ends.
func waitFor(ctx context.Context, every time.Duration, try func(context.Context) error) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var last error
	for {
		if last = try(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// readStream reads a build's JSON stream and returns its text and first error.
func readStream(r io.Reader) (string, error) {
	var out strings.Builder
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Stream string `json:"stream"`
			Error  string `json:"error"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return out.String(), nil
		} else if err != nil {
			return out.String(), fmt.Errorf("decode stream: %w", err)
		}
		out.WriteString(m.Stream)
		if m.Error != "" {
			return out.String(), errors.New(m.Error)
		}
	}
}
