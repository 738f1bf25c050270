// Package registry pins image references to content digests and pulls them.
// Digests are resolved by asking the registry through the engine (so the
// engine's insecure-registry and mirror settings apply), with credentials
// from a Docker config directory (config.json and its credential helpers).
// Every pull finishes before anything running is touched.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/berth-deploy/berth/compose"
	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config"
	"github.com/docker/docker/api/types/image"
	dockerregistry "github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/jsonmessage"
)

// ErrImage marks an image that cannot be resolved or pulled: the release
// cannot go ahead, and nothing has been changed.
var ErrImage = errors.New("image unavailable")

// Engine is the part of the Docker API this package uses.
type Engine interface {
	DistributionInspect(ctx context.Context, image, encodedRegistryAuth string) (dockerregistry.DistributionInspect, error)
	ImageInspect(ctx context.Context, imageID string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, options image.PullOptions) (io.ReadCloser, error)
}

// Request is one image to pin.
type Request struct {
	Service string
	Ref     string
	// Local means the image is never pulled (compose pull_policy never or
	// build): it must already be on the engine, and it is pinned by ID.
	Local bool
}

// Client resolves and pulls images with the credentials of one Docker
// config directory.
type Client struct {
	Engine Engine
	// ConfigDir holds config.json; empty means the default (DOCKER_CONFIG
	// or ~/.docker of the agent's user).
	ConfigDir string
	// Override, when set, is the credential for one registry host, used
	// instead of the config's (a request's own credentials).
	Override *Credential
}

// Credential is a username and password for one registry host.
type Credential struct {
	Server, Username, Password string
}

// Resolve pins every requested image, in parallel, and returns service ->
// pin. All failures are reported together, each with the registry's reason.
func (c *Client) Resolve(ctx context.Context, reqs []Request) (map[string]compose.Pin, error) {
	type result struct {
		service string
		pin     compose.Pin
		err     error
	}
	results := make([]result, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pin, err := c.resolve(ctx, r)
			results[i] = result{r.Service, pin, err}
		}()
	}
	wg.Wait()
	pins := map[string]compose.Pin{}
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", r.service, r.err))
			continue
		}
		pins[r.service] = r.pin
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return pins, nil
}

func (c *Client) resolve(ctx context.Context, r Request) (compose.Pin, error) {
	named, err := reference.ParseNormalizedNamed(r.Ref)
	if err != nil {
		return compose.Pin{}, fmt.Errorf("resolve %s: %w: %w", r.Ref, ErrImage, err)
	}
	if r.Local {
		img, err := c.Engine.ImageInspect(ctx, r.Ref)
		if err != nil {
			return compose.Pin{}, fmt.Errorf("resolve %s (local image): %w: %w", r.Ref, ErrImage, err)
		}
		return compose.Pin{Ref: r.Ref, Pinned: img.ID, Digest: img.ID}, nil
	}
	if canon, ok := named.(reference.Canonical); ok {
		// Already pinned by the caller: nothing to look up.
		pinned := reference.TrimNamed(named).String() + "@" + canon.Digest().String()
		return compose.Pin{Ref: r.Ref, Pinned: pinned, Digest: canon.Digest().String()}, nil
	}
	named = reference.TagNameOnly(named)
	auth, err := c.auth(named)
	if err != nil {
		return compose.Pin{}, err
	}
	di, err := c.Engine.DistributionInspect(ctx, named.String(), auth)
	if err != nil {
		return compose.Pin{}, fmt.Errorf("resolve %s: %w: %w", r.Ref, ErrImage, err)
	}
	d := di.Descriptor.Digest.String()
	return compose.Pin{Ref: r.Ref, Pinned: reference.TrimNamed(named).String() + "@" + d, Digest: d}, nil
}

// Pull fetches every pinned image that is not on the engine yet, in
// parallel, and waits for all of them. It reports which pins it pulled.
func (c *Client) Pull(ctx context.Context, pins map[string]compose.Pin, progress func(service, msg string)) error {
	// One pull per distinct image, however many services use it.
	byImage := map[string][]string{}
	for svc, p := range pins {
		byImage[p.Pinned] = append(byImage[p.Pinned], svc)
	}
	images := make([]string, 0, len(byImage))
	for img := range byImage {
		images = append(images, img)
	}
	sort.Strings(images)
	errs := make([]error, len(images))
	var wg sync.WaitGroup
	for i, img := range images {
		services := byImage[img]
		sort.Strings(services)
		who := strings.Join(services, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			pulled, err := c.pullIfMissing(ctx, img)
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("service %s: %w", who, err)
			case pulled && progress != nil:
				progress(who, "pulled "+img)
			case progress != nil:
				progress(who, "image present: "+img)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Client) pullIfMissing(ctx context.Context, ref string) (bool, error) {
	if _, err := c.Engine.ImageInspect(ctx, ref); err == nil {
		return false, nil
	} else if !errdefs.IsNotFound(err) {
		return false, fmt.Errorf("inspect %s: %w", ref, err)
	}
	if strings.HasPrefix(ref, "sha256:") {
		return false, fmt.Errorf("pull %s: %w: local image is gone", ref, ErrImage)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return false, fmt.Errorf("pull %s: %w: %w", ref, ErrImage, err)
	}
	auth, err := c.auth(named)
	if err != nil {
		return false, err
	}
	rc, err := c.Engine.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err != nil {
		return false, fmt.Errorf("pull %s: %w: %w", ref, ErrImage, err)
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return false, fmt.Errorf("pull %s: read progress: %w", ref, err)
		}
		if m.Error != nil {
			return false, fmt.Errorf("pull %s: %w: %s", ref, ErrImage, m.Error.Message)
		}
	}
	return true, nil
}

// Auth returns the encoded X-Registry-Auth header for ref's registry (""
// when there are no credentials for it): what a Swarm passes to its nodes
// to pull the image (docker stack deploy --with-registry-auth).
func (c *Client) Auth(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("registry auth for %s: %w", ref, err)
	}
	return c.auth(named)
}

// auth returns the encoded X-Registry-Auth header for the image's registry.
func (c *Client) auth(named reference.Named) (string, error) {
	host := reference.Domain(named)
	if o := c.Override; o != nil && strings.TrimPrefix(strings.TrimPrefix(o.Server, "https://"), "http://") == host {
		enc, err := dockerregistry.EncodeAuthConfig(dockerregistry.AuthConfig{Username: o.Username, Password: o.Password, ServerAddress: host})
		if err != nil {
			return "", fmt.Errorf("encode credentials for %s: %w", host, err)
		}
		return enc, nil
	}
	if host == "docker.io" {
		host = "https://index.docker.io/v1/"
	}
	dir := c.ConfigDir
	if dir == "" {
		dir = config.Dir()
	}
	cf, err := config.Load(dir)
	if err != nil {
		return "", fmt.Errorf("load docker config %s: %w", dir, err)
	}
	a, err := cf.GetAuthConfig(host)
	if err != nil {
		return "", fmt.Errorf("credentials for %s: %w", host, err)
	}
	enc, err := dockerregistry.EncodeAuthConfig(dockerregistry.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		Auth:          a.Auth,
		ServerAddress: a.ServerAddress,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	})
	if err != nil {
		return "", fmt.Errorf("encode credentials for %s: %w", host, err)
	}
	return enc, nil
}
