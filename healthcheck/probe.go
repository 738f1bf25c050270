package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
)

// prober is one of a spec's probes, bound to a container.
type prober interface {
	// describe says what the probe waits for, e.g. "the TCP probe to
	// connect to 172.17.0.3:5432".
	describe() string
	// attempt tries once; result says what happened, e.g. "last answer
	// 500 Internal Server Error".
	attempt(ctx context.Context) (ok bool, result string)
}

// probers binds the probes of spec to the container in. HTTP and TCP probes
// connect from this host to the container's address.
func (c *Checker) probers(spec Spec, in container.InspectResponse, w watched) ([]prober, error) {
	var ps []prober
	var host string
	if spec.HTTP != nil || spec.TCP != nil {
		var err error
		if host, err = probeHost(in); err != nil {
			return nil, err
		}
	}
	perAttempt := min(spec.Interval, maxAttempt)
	perAttempt = max(perAttempt, minAttempt)
	if h := spec.HTTP; h != nil {
		if h.Port <= 0 || h.Port > 65535 {
			return nil, fmt.Errorf("HTTP probe: invalid port %d", h.Port)
		}
		path := h.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		status := h.Status
		if status == 0 {
			status = http.StatusOK
		}
		ps = append(ps, &httpProber{
			url:     "http://" + net.JoinHostPort(host, strconv.Itoa(h.Port)) + path,
			host:    h.Host,
			status:  status,
			timeout: perAttempt,
			client: &http.Client{
				// No proxy from the environment: the container is local. No
				// keep-alive, so no connection outlives the gate. Redirects
				// are not followed: the first answer is the one checked.
				Transport:     &http.Transport{DisableKeepAlives: true},
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
		})
	}
	if t := spec.TCP; t != nil {
		if t.Port <= 0 || t.Port > 65535 {
			return nil, fmt.Errorf("TCP probe: invalid port %d", t.Port)
		}
		ps = append(ps, &tcpProber{addr: net.JoinHostPort(host, strconv.Itoa(t.Port)), timeout: perAttempt})
	}
	if len(spec.Exec) > 0 {
		ps = append(ps, &execProber{eng: c.Engine, id: w.id, cmd: spec.Exec})
	}
	return ps, nil
}

// probeHost returns the address this host reaches the container at: its IP
// on the first network (by name) that gives it one, or the loopback address
// for a container on the host's network.
func probeHost(in container.InspectResponse) (string, error) {
	if in.ContainerJSONBase != nil && in.HostConfig != nil && in.HostConfig.NetworkMode.IsHost() {
		return "127.0.0.1", nil
	}
	var names []string
	if ns := in.NetworkSettings; ns != nil {
		names = slices.Sorted(maps.Keys(ns.Networks))
		for _, n := range names {
			if ep := ns.Networks[n]; ep != nil && ep.IPAddress != "" {
				return ep.IPAddress, nil
			}
		}
		for _, n := range names {
			if ep := ns.Networks[n]; ep != nil && ep.GlobalIPv6Address != "" {
				return ep.GlobalIPv6Address, nil
			}
		}
	}
	if len(names) == 0 {
		return "", errors.New("find the container's address: it is on no network")
	}
	return "", fmt.Errorf("find the container's address: no IP address on its networks (%s)", strings.Join(names, ", "))
}

// httpProber GETs url and wants status.
type httpProber struct {
	url     string
	host    string // Host header, if set
	status  int
	timeout time.Duration // per attempt
	client  *http.Client
}

func (p *httpProber) describe() string {
	s := "the HTTP probe GET " + p.url
	if p.host != "" {
		s += " (Host: " + p.host + ")"
	}
	return s + " to answer " + strconv.Itoa(p.status)
}

func (p *httpProber) attempt(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return false, "last attempt: " + err.Error()
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", "berth-healthcheck")
	resp, err := p.client.Do(req)
	if err != nil {
		return false, "last attempt: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	result := "last answer " + resp.Status
	if b := oneLine(string(body), 200); b != "" && resp.StatusCode != p.status {
		result += fmt.Sprintf(" (body %q)", b)
	}
	return resp.StatusCode == p.status, result
}

// tcpProber wants addr to accept a connection.
type tcpProber struct {
	addr    string
	timeout time.Duration // per attempt
}

func (p *tcpProber) describe() string { return "the TCP probe to connect to " + p.addr }

func (p *tcpProber) attempt(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return false, "last attempt: " + err.Error()
	}
	conn.Close()
	return true, "connected"
}

// execProber runs cmd in the container and wants exit code 0. An attempt is
// bounded by the gate's deadline only: a check command may be slow.
type execProber struct {
	eng ExecEngine
	id  string
	cmd []string
}

func (p *execProber) describe() string {
	return fmt.Sprintf("the exec probe %q to exit 0", strings.Join(p.cmd, " "))
}

func (p *execProber) attempt(ctx context.Context) (bool, string) {
	code, out, err := Exec(ctx, p.eng, p.id, p.cmd)
	if err != nil {
		return false, "last attempt: " + err.Error()
	}
	result := "last exit code " + strconv.Itoa(code)
	if o := oneLine(out, 300); o != "" {
		result += ": " + o
	}
	return code == 0, result
}

// probeResult is the outcome of one attempt of probe number idx.
type probeResult struct {
	idx    int
	ok     bool
	result string
}

// runProbe attempts p every interval until it passes or ctx ends, and sends
// every outcome to results.
func runProbe(ctx context.Context, idx int, p prober, interval time.Duration, results chan<- probeResult) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		ok, result := p.attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		select {
		case results <- probeResult{idx: idx, ok: ok, result: result}:
		case <-ctx.Done():
			return
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
