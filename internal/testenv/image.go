package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/client"
)

// Image describes a test image: FROM scratch, the testapp binary as
// /testapp and its entrypoint, port 8080 exposed.
type Image struct {
	Env map[string]string // baked in as ENV lines (e.g. VERSION, HEALTH)
	// Healthcheck adds HEALTHCHECK --interval=1s --timeout=2s --retries=3
	// --start-period=5s CMD ["/testapp","check"].
	Healthcheck bool
	Labels      map[string]string
	// Base is the image built upon (default scratch): a Debian base gives
	// the container a shell and cat, as a real app image has.
	Base string
}

// healthStartPeriod is the HEALTHCHECK --start-period: failed checks in it do
// not count towards "unhealthy", and a passing one still makes the container
// healthy at once.
const healthStartPeriod = 5 * time.Second

// dockerfile renders img; startPeriod is false on engines too old for
// --start-period (API < 1.29).
func (img Image) dockerfile(startPeriod bool) (string, error) {
	var b strings.Builder
	base := img.Base
	if base == "" {
		base = "scratch"
	}
	fmt.Fprintf(&b, "FROM %s\nCOPY testapp /testapp\n", base)
	for _, kv := range []struct {
		instr string
		m     map[string]string
	}{{"ENV", img.Env}, {"LABEL", img.Labels}} {
		keys := make([]string, 0, len(kv.m))
		for k := range kv.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k == "" || strings.ContainsAny(k, " \t\r\n=\"'\\$") {
				return "", fmt.Errorf("render dockerfile: invalid %s key %q", kv.instr, k)
			}
			v := kv.m[k]
			if strings.ContainsAny(v, "\r\n") {
				return "", fmt.Errorf("render dockerfile: %s %s: value contains a newline", kv.instr, k)
			}
			fmt.Fprintf(&b, "%s %s=%s\n", kv.instr, k, quoteDockerfile(v))
		}
	}
	if img.Healthcheck {
		b.WriteString("HEALTHCHECK --interval=1s --timeout=2s --retries=3")
		if startPeriod {
			fmt.Fprintf(&b, " --start-period=%s", healthStartPeriod)
		}
		b.WriteString(` CMD ["/testapp","check"]` + "\n")
	}
	b.WriteString("EXPOSE 8080\nENTRYPOINT [\"/testapp\"]\n")
	return b.String(), nil
}

// quoteDockerfile double-quotes v for an ENV or LABEL line, escaping what the
// Dockerfile parser would otherwise interpret (quotes, backslashes and $).
func quoteDockerfile(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`)
	return `"` + r.Replace(v) + `"`
}

// buildContext returns an in-memory tar holding the Dockerfile and the binary.
func buildContext(dockerfile string, binary []byte) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"Dockerfile", 0o644, []byte(dockerfile)},
		{"testapp", 0o755, binary},
	}
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("write tar header %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("write tar %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return &buf, nil
}

// Build builds img with the engine's classic builder (no BuildKit needed),
// tags it ref and returns the image ID. Any error in the build output fails
// the test.
func Build(t testing.TB, cli *client.Client, ref string, img Image) string {
	t.Helper()
	binary, err := os.ReadFile(TestAppBinary(t))
	if err != nil {
		t.Fatalf("build %s: read testapp: %v", ref, err)
	}
	// HEALTHCHECK --start-period arrived with API 1.29 (Docker 17.05).
	dockerfile, err := img.dockerfile(versions.GreaterThanOrEqualTo(cli.ClientVersion(), "1.29"))
	if err != nil {
		t.Fatalf("build %s: %v", ref, err)
	}
	tarball, err := buildContext(dockerfile, binary)
	if err != nil {
		t.Fatalf("build %s: %v", ref, err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	resp, err := cli.ImageBuild(ctx, tarball, build.ImageBuildOptions{
		Tags:        []string{ref},
		Dockerfile:  "Dockerfile",
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1,
	})
	if err != nil {
		t.Fatalf("build %s: %v", ref, err)
	}
	defer resp.Body.Close()
	var id string
	transcript, err := readStream(resp.Body, func(aux json.RawMessage) {
		var v struct{ ID string }
		if json.Unmarshal(aux, &v) == nil && v.ID != "" {
			id = v.ID
		}
	})
	if err != nil {
		t.Fatalf("build %s: %v\nDockerfile:\n%s\noutput:\n%s", ref, err, dockerfile, transcript)
	}
	if id == "" {
		inspect, err := cli.ImageInspect(ctx, ref)
		if err != nil {
			t.Fatalf("build %s: inspect result: %v\noutput:\n%s", ref, err, transcript)
		}
		id = inspect.ID
	}
	return id
}

// emptyAuth is base64("{}"): some engines reject a push without any
// X-Registry-Auth header.
const emptyAuth = "e30="

// digestInStatus finds the digest in a push's final status line,
// "TAG: digest: sha256:<64 hex> size: N", or returns "".
func digestInStatus(transcript string) string {
	const marker = "digest: sha256:"
	i := strings.Index(transcript, marker)
	if i < 0 {
		return ""
	}
	hex := transcript[i+len("digest: "):]
	if n := len("sha256:") + 64; len(hex) >= n {
		return hex[:n]
	}
	return ""
}

// Push pushes ref to its registry and returns the manifest digest
// ("sha256:..."). An error in the push output fails the test.
func Push(t testing.TB, cli *client.Client, ref string) string {
	t.Helper()
	return push(t, cli, ref, emptyAuth)
}

// push pushes with the given encoded X-Registry-Auth.
func push(t testing.TB, cli *client.Client, ref, auth string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	body, err := cli.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: auth})
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	defer body.Close()
	var digest string
	transcript, err := readStream(body, func(aux json.RawMessage) {
		var v struct{ Digest string }
		if json.Unmarshal(aux, &v) == nil && v.Digest != "" {
			digest = v.Digest
		}
	})
	if err != nil {
		t.Fatalf("push %s: %v\noutput:\n%s", ref, err, transcript)
	}
	if digest == "" {
		digest = digestInStatus(transcript)
	}
	if digest == "" {
		t.Fatalf("push %s: no digest in the output:\n%s", ref, transcript)
	}
	return digest
}

// BuildAndPush builds img as ref, pushes it and returns the manifest digest.
func BuildAndPush(t testing.TB, cli *client.Client, ref string, img Image) string {
	t.Helper()
	Build(t, cli, ref, img)
	return Push(t, cli, ref)
}

// pull pulls ref and returns the first error, whether from the request or
// from the progress stream.
func pull(ctx context.Context, cli *client.Client, ref string) error {
	body, err := cli.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: emptyAuth})
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	defer body.Close()
	if _, err := readStream(body, nil); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// streamMessage is one JSON message of the engine's build/push/pull stream.
type streamMessage struct {
	Stream      string `json:"stream"`
	Status      string `json:"status"`
	ID          string `json:"id"`
	Progress    string `json:"progress"`
	Error       string `json:"error"`
	ErrorDetail *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
	Aux json.RawMessage `json:"aux"`
}

// readStream decodes a Docker JSON message stream to its end, passing every
// aux payload to onAux (if not nil). It returns a transcript of the stream and
// status lines and the stream's first error message as an error.
func readStream(r io.Reader, onAux func(json.RawMessage)) (string, error) {
	var transcript strings.Builder
	var streamErr error
	dec := json.NewDecoder(r)
	for {
		var m streamMessage
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return transcript.String(), streamErr
		}
		if err != nil {
			return transcript.String(), fmt.Errorf("decode stream: %w", err)
		}
		switch {
		case m.Stream != "":
			transcript.WriteString(m.Stream)
		case m.Status != "" && m.Progress == "":
			if m.ID != "" {
				transcript.WriteString(m.ID + ": ")
			}
			transcript.WriteString(m.Status + "\n")
		}
		if len(m.Aux) > 0 && onAux != nil {
			onAux(m.Aux)
		}
		msg := m.Error
		if msg == "" && m.ErrorDetail != nil {
			msg = m.ErrorDetail.Message
		}
		if msg != "" && streamErr == nil {
			streamErr = errors.New(msg)
		}
	}
}
