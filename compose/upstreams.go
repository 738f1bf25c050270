package compose

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/healthcheck"
	"github.com/docker/docker/api/types/container"
)

// A proxy with x-berth proxy.upstreams learns its upstreams from a file
// Berth writes into it, not from Docker's DNS: Berth lists there only the
// ready containers of each fronted service, so it can take a container out
// of the proxy (rewrite, validate, reload) while the container still runs,
// wait until the requests the proxy had sent it are answered, and only then
// stop it. With DNS, a container is in the proxy's view for as long as it
// runs, and requests waiting in its listen queue when it stops come back
// reset.

// drainSettle is how long after a proxy reload the first drain check
// waits: the proxy's old workers stop taking connections within it (nginx:
// milliseconds), so a container with no connection after it gets no more.
const drainSettle = time.Second

// drainPoll is how often a draining container's connections are counted.
const drainPoll = 100 * time.Millisecond

// lists reports whether Berth writes the proxy's server lists: whole
// upstream blocks (Upstreams) or only their server lines (Servers).
func (px *Proxy) lists() bool { return px.Upstreams != "" || px.Servers != "" }

// proxyFile is a file (or, with dir, a directory) Berth writes into a
// proxy container: its path under the directory the archive is copied to,
// and what it holds.
type proxyFile struct {
	name    string
	dir     bool
	content string
}

// ProxyServer is a server a proxy sends to: a ready container of a
// fronted service (or, on a Swarm, a running task), the name its line's
// comment gives it, and its address.
type ProxyServer struct{ Name, Addr string }

// readyServers lists the running containers of a service not in out, with
// their address on the first of proxyNets they are on, sorted by name.
func (e *Executor) readyServers(ctx context.Context, project, service string, proxyNets, out []string) ([]ProxyServer, error) {
	list, err := e.running(ctx, project, service)
	if err != nil {
		return nil, err
	}
	var servers []ProxyServer
	for _, c := range list {
		if c.Labels[LabelOneoff] == "True" || slices.Contains(out, c.ID) || c.NetworkSettings == nil {
			continue
		}
		for _, n := range proxyNets {
			if ep := c.NetworkSettings.Networks[n]; ep != nil && ep.IPAddress != "" {
				servers = append(servers, ProxyServer{strings.TrimPrefix(firstName(c.Names), "/"), ep.IPAddress})
				break
			}
		}
	}
	slices.SortFunc(servers, func(a, b ProxyServer) int { return strings.Compare(a.Name, b.Name) })
	return servers, nil
}

// serverLines writes the nginx server lines of a service's ready
// containers, indented by indent; a service with none gets a server that
// is down, so that the upstream stays valid.
func serverLines(b *strings.Builder, indent, service string, port int, params []string, servers []ProxyServer) {
	extra := ""
	if len(params) > 0 {
		extra = " " + strings.Join(params, " ")
	}
	for _, s := range servers {
		fmt.Fprintf(b, "%sserver %s:%d%s;  # %s\n", indent, s.Addr, port, extra, s.Name)
	}
	if len(servers) == 0 {
		fmt.Fprintf(b, "%sserver 127.0.0.1:%d down;  # no container of %s is ready\n", indent, port, service)
	}
}

// proxyFiles renders what Berth writes into a proxy container, and the
// directory the files go to: with Upstreams, one file of nginx upstream
// blocks, one per fronted service; with Servers, the directory itself and
// SERVICE.conf in it for each fronted service, holding only its server
// lines. Each lists the address (on a network the proxy is on, proxyNets)
// and port of every running container of the service not in out.
func (e *Executor) proxyFiles(ctx context.Context, project string, px *Proxy, proxyNets, out []string) (string, []proxyFile, error) {
	servers := map[string][]ProxyServer{}
	for _, svc := range px.Fronts {
		list, err := e.readyServers(ctx, project, svc, proxyNets, out)
		if err != nil {
			return "", nil, err
		}
		servers[svc] = list
	}
	dir, files := renderProxyFiles(px, servers)
	return dir, files, nil
}

// renderProxyFiles renders the files of proxyFiles from the servers of
// each fronted service.
func renderProxyFiles(px *Proxy, servers map[string][]ProxyServer) (string, []proxyFile) {
	var upstreams strings.Builder
	var files []proxyFile
	if px.Servers != "" {
		files = append(files, proxyFile{name: path.Base(px.Servers), dir: true})
	} else {
		upstreams.WriteString("# Written by Berth before every reload of this proxy: the ready containers\n")
		upstreams.WriteString("# of each service it fronts (x-berth proxy.upstreams). Do not edit.\n")
	}
	for _, svc := range px.Fronts {
		port := px.Ports[svc]
		if px.Servers == "" {
			fmt.Fprintf(&upstreams, "upstream %s {\n", svc)
			serverLines(&upstreams, "    ", svc, port, px.ServerParameters, servers[svc])
			upstreams.WriteString("}\n")
			continue
		}
		var b strings.Builder
		b.WriteString("# Written by Berth before every reload of this proxy: the ready containers\n")
		fmt.Fprintf(&b, "# of %s (x-berth proxy.servers), for its upstream block to include. Do not edit.\n", svc)
		serverLines(&b, "", svc, port, px.ServerParameters, servers[svc])
		files = append(files, proxyFile{name: path.Join(path.Base(px.Servers), svc+".conf"), content: b.String()})
	}
	if px.Servers != "" {
		return path.Dir(path.Clean(px.Servers)), files
	}
	return path.Dir(px.Upstreams), []proxyFile{{name: path.Base(px.Upstreams), content: upstreams.String()}}
}

// ProxyFiles renders, for a proxy that lists its upstreams (px.Upstreams
// or px.Servers set), what the single engine writes into it, from the
// servers of each fronted service (a service with none gets a server that
// is down): the directory to copy archive (a tar) to, and the content the
// proxy holds once it is copied, to compare with what it has loaded.
func ProxyFiles(px *Proxy, servers map[string][]ProxyServer) (dir, content string, archive []byte, err error) {
	if !px.lists() {
		return "", "", nil, fmt.Errorf("proxy files: the proxy has neither upstreams nor servers")
	}
	dir, files := renderProxyFiles(px, servers)
	tarball, err := proxyArchive(files)
	if err != nil {
		return "", "", nil, fmt.Errorf("proxy files: %w", err)
	}
	return dir, loaded(px, files), tarball.Bytes(), nil
}

// proxyArchive is the tar of files, to copy into a proxy container.
func proxyArchive(files []proxyFile) (*bytes.Buffer, error) {
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	now := time.Now()
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.content)), ModTime: now}
		if f.dir {
			hdr = &tar.Header{Name: f.name + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(f.content)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &tarball, nil
}

// loaded is what a proxy container holds once files are written into it.
func loaded(px *Proxy, files []proxyFile) string {
	if px.Servers == "" {
		return files[0].content
	}
	var b strings.Builder
	for _, f := range files {
		if !f.dir {
			fmt.Fprintf(&b, "==> %s <==\n%s", f.name, f.content)
		}
	}
	return b.String()
}

// writeUpstreams writes a proxy container's upstreams file (or servers
// files), unless it holds that content already, and says whether it wrote.
func (e *Executor) writeUpstreams(ctx context.Context, project string, px *Proxy, id string, proxyNets, out []string) (string, bool, error) {
	dir, files, err := e.proxyFiles(ctx, project, px, proxyNets, out)
	if err != nil {
		return "", false, err
	}
	content := loaded(px, files)
	e.mu.Lock()
	same := e.upstreams[id] == content
	e.mu.Unlock()
	if same {
		return content, false, nil
	}
	tarball, err := proxyArchive(files)
	if err != nil {
		return "", false, err
	}
	what := cmp.Or(px.Servers, px.Upstreams)
	if err := e.Engine.CopyToContainer(ctx, id, dir, tarball, container.CopyToContainerOptions{}); err != nil {
		return "", false, fmt.Errorf("write %s: %w", what, err)
	}
	return content, true, nil
}

// wrote records what a proxy container has loaded.
func (e *Executor) wrote(id, content string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.upstreams == nil {
		e.upstreams = map[string]string{}
	}
	e.upstreams[id] = content
	e.reloadedAt = time.Now()
}

// drainProxies returns the proxies of a service that list it in an
// upstreams file: those that can be told to stop sending to a container.
func (p *Plan) drainProxies(service string) []*Proxy {
	var out []*Proxy
	for _, name := range p.proxies[service] {
		if spec := p.spec(name); spec != nil && spec.Policy.Proxy != nil && spec.Policy.Proxy.lists() {
			out = append(out, spec.Policy.Proxy)
		}
	}
	return out
}

func (p *Plan) spec(service string) *ServiceSpec {
	for i := range p.Services {
		if p.Services[i].Name == service {
			return p.Services[i].Spec
		}
	}
	return nil
}

// drain waits, once the proxies no longer send to the old containers,
// until each has no open connection on the ports the proxies send to, or
// until the longest of the proxies' drain periods has passed.
func (e *Executor) drain(ctx context.Context, service string, proxies []*Proxy, old []*Container) {
	var ports []int
	var limit time.Duration
	for _, px := range proxies {
		if port := px.Ports[service]; !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
		limit = max(limit, px.Drain)
	}
	e.mu.Lock()
	settled := e.reloadedAt.Add(drainSettle)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range old {
		if c.State == "exited" || c.State == "dead" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.drainOne(ctx, service, c, ports, settled, limit)
		}()
	}
	wg.Wait()
}

func (e *Executor) drainOne(ctx context.Context, service string, c *Container, ports []int, settled time.Time, limit time.Duration) {
	start := time.Now()
	settle := time.NewTimer(time.Until(settled))
	defer settle.Stop()
	select {
	case <-ctx.Done():
		return
	case <-settle.C:
	}
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	last := -1
	for {
		n, err := openConnections(ctx, e.Engine, c.ID, ports)
		switch {
		case err != nil && ctx.Err() == nil:
			e.say(service, "cannot count the connections of %s (%v): stopping it now", c.Name, err)
			return
		case err == nil && n == 0:
			e.say(service, "drained %s in %s", c.Name, time.Since(start).Round(10*time.Millisecond))
			return
		case err == nil && last == -1:
			e.say(service, "draining %s: %d open connection(s)", c.Name, n)
		}
		if err == nil {
			last = n
		}
		select {
		case <-ctx.Done():
			e.say(service, "%s still had %d open connection(s) after %s: stopping it (it finishes them within its grace period)", c.Name, last, limit)
			return
		case <-tick.C:
		}
	}
}

// openConnections counts, inside a container, the TCP connections to any
// of ports that are open or waiting to be accepted, from the kernel's
// tables of the container's network namespace (/proc/net/tcp and tcp6,
// read with cat: an image without cat cannot be asked). The tables are
// counted as they stream: a busy server's can be long.
func openConnections(ctx context.Context, eng healthcheck.ExecEngine, id string, ports []int) (int, error) {
	counter := &connCounter{ports: ports}
	var stderr strings.Builder
	code, err := healthcheck.ExecTo(ctx, eng, id, "", []string{"cat", "/proc/net/tcp", "/proc/net/tcp6"}, counter, &stderr)
	if err != nil {
		return 0, err
	}
	counter.Write([]byte("\n")) // the last line, if it had no newline
	if !counter.table {
		return 0, fmt.Errorf("cat /proc/net/tcp exited %d: %s", code, strings.TrimSpace(stderr.String()))
	}
	return counter.n, nil
}

// connCounter counts, line by line, the open connections to ports in
// /proc/net/tcp{,6} output written to it.
type connCounter struct {
	ports   []int
	n       int
	table   bool // a table header was seen
	partial []byte
}

func (c *connCounter) Write(b []byte) (int, error) {
	rest := append(c.partial, b...)
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := string(rest[:i])
		rest = rest[i+1:]
		if strings.Contains(line, "local_address") {
			c.table = true
		} else if openTo(line, c.ports) {
			c.n++
		}
	}
	c.partial = append(c.partial[:0], rest...)
	return len(b), nil
}

// TCP states, as /proc/net/tcp numbers them, of a connection that still
// has a request to answer: established (or in the listen queue), being set
// up, or closed by the client while the server has not answered.
var openStates = []string{"01", "03", "08"}

// openTo reports whether a line of /proc/net/tcp{,6} is an open
// connection whose local port is one of ports.
func openTo(line string, ports []int) bool {
	f := strings.Fields(line)
	if len(f) < 4 || !slices.Contains(openStates, f[3]) {
		return false
	}
	i := strings.LastIndexByte(f[1], ':')
	if i < 0 {
		return false
	}
	port, err := strconv.ParseUint(f[1][i+1:], 16, 16)
	return err == nil && slices.Contains(ports, int(port))
}
