package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/compose-spec/compose-go/v2/dotenv"
)

// shippedDir is where shipped compose files are written, under state_dir:
// shipped/PROJECT/ID, ID naming the files by their content.
const shippedDir = "shipped"

// source is the compose file a deploy loads: the host's, or shipped files
// written under state_dir.
type source struct {
	file    string             // the path loaded
	shipped *api.ComposeBundle // the shipped files, Main resolved; nil: the host's file
	dir     string             // where the shipped files are
	fresh   bool               // dir was written by this deploy
	// cleanup removes what this deploy wrote if no release came of it.
	cleanup func(released bool)
}

// ErrNoComposeFile is a deploy of a project without a host compose file
// that neither ships one nor has a live release that shipped one.
var ErrNoComposeFile = errors.New("no compose file")

// composeSource decides which compose file a deploy loads: the one the
// request ships; else the host's compose_file; else, for a ship-only
// project, the files the live release shipped. Shipped files are written
// under state_dir (a dry run's to a directory of its own, removed after).
func (r *releaseRun) composeSource(req api.DeployRequest, dry bool) (source, error) {
	none := func(bool) {}
	b := req.Compose
	if b == nil && r.pc.ComposeFile != "" {
		return source{file: r.pc.ComposeFile, cleanup: none}, nil
	}
	if b == nil {
		cur, ok, err := r.svc.store.Current(r.project)
		if err != nil {
			return source{}, err
		}
		if !ok || cur.Shipped == nil {
			return source{}, fmt.Errorf("%w: project %s has no compose_file on this host and its live release did not ship one: ship the compose file with the deploy (--compose-file)", ErrNoComposeFile, r.project)
		}
		b = cur.Shipped
		r.progress("", "no compose file in the request: using the one live release %d shipped", cur.Number)
	}
	main, err := b.Check(r.pc.MaxComposeFiles, r.pc.MaxComposeBytes)
	if err != nil {
		return source{}, err
	}
	b = &api.ComposeBundle{Files: b.Files, Main: main}
	dir, fresh, err := r.svc.writeBundle(r.project, b, dry)
	if err != nil {
		return source{}, err
	}
	src := source{file: filepath.Join(dir, filepath.FromSlash(main)), shipped: b, dir: dir, fresh: fresh}
	src.cleanup = func(released bool) {
		if dry || (fresh && !released) {
			if err := os.RemoveAll(dir); err != nil {
				r.log.Warn("remove shipped files", "dir", dir, "err", err)
			}
		}
	}
	return src, nil
}

// writeBundle writes b's files for project and returns their directory,
// and whether this call created it. A deploy's go to
// state_dir/shipped/PROJECT/ID, kept while a recorded release uses them (a
// container may bind-mount one, and a rollback redeploys them); the same
// files are written once. A dry run's go to a directory of their own,
// which the caller removes.
func (s *Service) writeBundle(project string, b *api.ComposeBundle, dry bool) (dir string, fresh bool, err error) {
	root := filepath.Join(s.cfg.StateDir, shippedDir, project)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", false, fmt.Errorf("write shipped files: %w", err)
	}
	if dry {
		tmp, err := os.MkdirTemp(root, ".dry-")
		if err != nil {
			return "", false, fmt.Errorf("write shipped files: %w", err)
		}
		if err := writeFiles(tmp, b); err != nil {
			os.RemoveAll(tmp)
			return "", false, err
		}
		return tmp, true, nil
	}
	final := filepath.Join(root, b.ID())
	if sameFiles(final, b) {
		return final, false, nil
	}
	tmp, err := os.MkdirTemp(root, ".tmp-")
	if err != nil {
		return "", false, fmt.Errorf("write shipped files: %w", err)
	}
	if err := writeFiles(tmp, b); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	// Deploys of a project hold its lock: no other writer. What is there
	// under this name differs (someone edited it): replace it.
	if err := os.RemoveAll(final); err != nil {
		os.RemoveAll(tmp)
		return "", false, fmt.Errorf("write shipped files: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return "", false, fmt.Errorf("write shipped files: %w", err)
	}
	return final, true, nil
}

// writeFiles writes b's files under dir (which is new and empty; the paths
// are checked: none leaves it).
func writeFiles(dir string, b *api.ComposeBundle) error {
	for p, content := range b.Files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("write shipped files: %w", err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write shipped files: %w", err)
		}
	}
	return nil
}

// sameFiles reports whether dir holds exactly b's files, as regular files
// with the same content.
func sameFiles(dir string, b *api.ComposeBundle) bool {
	seen := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fs.ErrInvalid
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		want, ok := b.Files[filepath.ToSlash(rel)]
		if !ok {
			return fs.ErrInvalid
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, []byte(want)) {
			return fs.ErrInvalid
		}
		seen++
		return nil
	})
	return err == nil && seen == len(b.Files)
}

// pruneShipped removes the shipped files of project that no recorded
// release uses any more, and what an interrupted write left. A dry run's
// directory is its own to remove (dry runs hold no lock).
func (s *Service) pruneShipped(project string) error {
	root := filepath.Join(s.cfg.StateDir, shippedDir, project)
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	hist, err := s.store.History(project)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, rel := range hist {
		if rel.Shipped != nil {
			used[rel.Shipped.ID()] = true
		}
	}
	var errs []error
	for _, e := range entries {
		if used[e.Name()] || strings.HasPrefix(e.Name(), ".dry-") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cutDir takes the shipped files' directory out of a message, so it names
// the files as the caller sent them.
func (src source) cutDir(err error) error {
	if err == nil || src.dir == "" || !strings.Contains(err.Error(), src.dir) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(strings.ReplaceAll(err.Error(), src.dir+string(filepath.Separator), ""), src.dir, "."))
}

// secretValues are the values a refusal must not show (nor agentd log):
// the request's variables and, when the compose file was shipped, whose
// author chooses where the host's variables go (a refused key, say), the
// values of the host's env file too, those of 8 bytes or more.
func (r *releaseRun) secretValues(env map[string]string, shipped bool) map[string]string {
	if !shipped || r.pc.EnvFile == "" {
		return env
	}
	host, err := dotenv.GetEnvFromFile(map[string]string{}, []string{r.pc.EnvFile})
	if err != nil {
		return env // the load fails too, and says why
	}
	// Short values ("true", "80", "web") are what a refusal is about more
	// often than secrets: a secret is longer.
	maps.DeleteFunc(host, func(_, v string) bool { return len(v) < minSecretLen })
	maps.Copy(host, env)
	return host
}

// minSecretLen is the shortest value of the host's env file that is
// redacted from a shipped file's refusal.
const minSecretLen = 8
