package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/berth-deploy/berth/agent/clip"
)

// DefaultComposeNames are the names a bundle's main compose file is looked
// up by, in order, at the bundle's root when Main is empty (as docker
// compose looks them up in a directory).
var DefaultComposeNames = []string{"compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"}

// maxBundlePath bounds the length of one path in a bundle.
const maxBundlePath = 1024

// ErrBundle marks a bundle that is refused before anything is written:
// exit code 2.
var ErrBundle = errors.New("shipped compose file")

// Check validates a bundle against the limits (at most maxFiles files, at
// most maxBytes bytes of content in all) and returns the path of its main
// compose file. Every path must be relative, slash-separated and clean:
// not absolute, no "." or ".." element, no empty element, no backslash,
// no control character (NUL included), valid UTF-8, at most 1024 bytes.
// No path may be both a file and the directory of another file. A .env
// is refused, anywhere (compose reads one beside the main file and beside
// an included file): interpolation variables come from the host's env file
// and the request's allowed variables, never from the shipped files.
func (b *ComposeBundle) Check(maxFiles int, maxBytes int64) (string, error) {
	if b == nil || len(b.Files) == 0 {
		return "", fmt.Errorf("%w: the bundle holds no files", ErrBundle)
	}
	if len(b.Files) > maxFiles {
		return "", fmt.Errorf("%w: the bundle holds %d files; a project takes at most %d (max_compose_files)", ErrBundle, len(b.Files), maxFiles)
	}
	var total int64
	for _, c := range b.Files {
		total += int64(len(c))
	}
	if total > maxBytes {
		return "", fmt.Errorf("%w: the bundle holds %d bytes; a project takes at most %d (max_compose_bytes)", ErrBundle, total, maxBytes)
	}
	paths := slices.Sorted(maps.Keys(b.Files))
	for _, p := range paths {
		if err := checkBundlePath(p); err != nil {
			return "", fmt.Errorf("%w: %w", ErrBundle, err)
		}
		if path.Base(p) == ".env" {
			// compose reads a .env beside the main file, and beside an
			// included one, for interpolation.
			return "", fmt.Errorf("%w: %s: a shipped compose file comes without a .env: its variables come from the host's env file (projects.NAME.env_file) and the request's allowed variables", ErrBundle, p)
		}
	}
	// Sorted, a directory comes right before the files under it... or
	// not (a "-" sorts before "/"): compare every prefix.
	files := map[string]bool{}
	for _, p := range paths {
		files[p] = true
	}
	for _, p := range paths {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if files[dir] {
				return "", fmt.Errorf("%w: %q is a file and the directory of %q", ErrBundle, dir, p)
			}
		}
	}
	if b.Main != "" {
		if !files[b.Main] {
			return "", fmt.Errorf("%w: the main file %q is not in the bundle", ErrBundle, b.Main)
		}
		return b.Main, nil
	}
	for _, name := range DefaultComposeNames {
		if files[name] {
			return name, nil
		}
	}
	return "", fmt.Errorf("%w: no %s at the bundle's root: name the main file", ErrBundle, strings.Join(DefaultComposeNames, ", "))
}

func checkBundlePath(p string) error {
	switch {
	case p == "":
		return errors.New("an empty path")
	case len(p) > maxBundlePath:
		return fmt.Errorf("a path of %d bytes (at most %d)", len(p), maxBundlePath)
	case !utf8.ValidString(p):
		return fmt.Errorf("%q is not UTF-8", p)
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("%q holds a control character", p)
	case strings.Contains(p, `\`):
		return fmt.Errorf("%q: paths are slash-separated (no backslash)", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q is absolute: paths are relative to the bundle's root", p)
	}
	for _, elem := range strings.Split(p, "/") {
		switch elem {
		case "":
			return fmt.Errorf("%q has an empty element", p)
		case ".", "..":
			return fmt.Errorf("%q: no . or .. in a path", p)
		}
	}
	return nil
}

// ID names a bundle's files by their content: the same files always get
// the same ID (the main file's name does not count).
func (b *ComposeBundle) ID() string {
	h := sha256.New()
	for _, p := range slices.Sorted(maps.Keys(b.Files)) {
		fmt.Fprintf(h, "%d:%s%d:", len(p), p, len(b.Files[p]))
		h.Write([]byte(b.Files[p]))
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Describe names a bundle's main file and counts the others, for a line
// of text: "compose.yaml (+2 files)".
func (b *ComposeBundle) Describe() string {
	main := b.Main
	if main == "" {
		for _, name := range DefaultComposeNames {
			if _, ok := b.Files[name]; ok {
				main = name
				break
			}
		}
	}
	switch n := len(b.Files) - 1; {
	case n == 1:
		return main + " (+1 file)"
	case n > 1:
		return fmt.Sprintf("%s (+%d files)", main, n)
	}
	return main
}

// sourcePattern is what a release's Source may be: a commit, a tag or a
// branch as CI names them ($CI_COMMIT_SHA, refs/tags/v1.2, main@3f2c1a0).
var sourcePattern = regexp.MustCompile(`^[A-Za-z0-9._/@+:-]{1,128}$`)

// CheckSource accepts an empty source (none named) or 1 to 128 of
// A-Z a-z 0-9 . _ / @ + : -.
func CheckSource(s string) error {
	if s == "" || sourcePattern.MatchString(s) {
		return nil
	}
	return fmt.Errorf("source %q: want a commit or ref: 1 to 128 of A-Z a-z 0-9 . _ / @ + : -", clip.F(s))
}
