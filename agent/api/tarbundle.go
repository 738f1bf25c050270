package api

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/berth-deploy/berth/agent/clip"
)

// RequestEnvEntry is the entry of a compose archive that holds the
// request's env file (with --env-file - and --compose-file - both): it is
// not a compose file, and never recorded.
const RequestEnvEntry = "request.env"

// BundleLimits bound a compose bundle as a door reads it.
type BundleLimits struct {
	Files    int   // compose files, at most
	Bytes    int64 // their content, in all
	EnvBytes int64 // the request's env file (request.env), at most
}

// TarBytes is the most a compose archive within l may take on the wire:
// the content, and for each entry its header and padding (a long name
// adds a header of its own), and GNU tar's padding of the archive to
// 10 KiB records.
func (l BundleLimits) TarBytes() int64 {
	return l.Bytes + l.EnvBytes + int64(l.maxEntries())*2048 + 10240
}

// maxEntries is the most entries of any kind an archive may have: the
// files, as many directories, request.env and a pax global header.
func (l BundleLimits) maxEntries() int { return 2*l.Files + 2 }

// ErrArchive marks a compose archive that cannot be taken.
var ErrArchive = errors.New("compose archive")

// ReadComposeTar reads a compose bundle from a tar archive, as
// `tar -cf - compose.yaml ...` or `git archive HEAD compose.yaml` write it
// (ustar, pax or GNU; uncompressed). Its regular files are the bundle's
// files, under their names relative to the archive's root ("./" dropped);
// directories are taken as implied, a pax global header (git archive's
// commit) is skipped, and anything else (symbolic or hard links, devices,
// FIFOs, sparse files) is refused. A name must be a plain relative path:
// not absolute, no "..", no control characters. Every file must be UTF-8
// text. The bundle must then pass ComposeBundle.Check: its main file is
// found as Main "" says (one of DefaultComposeNames at the root).
//
// With withEnv, the entry request.env at the root is the request's env
// file, returned apart and required; without it, an archive that has one
// is refused, since it would otherwise be taken (and recorded) as a
// compose file. What is refused is named, clipped; no content is quoted.
func ReadComposeTar(r io.Reader, lim BundleLimits, withEnv bool) (b *ComposeBundle, env []byte, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrArchive, err)
		}
	}()
	br := &sniffReader{r: r}
	tr := tar.NewReader(br)
	files := map[string]string{}
	dirs := map[string]bool{}
	var total int64
	haveEnv := false
	for entries := 0; ; entries++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if entries == 0 {
				return nil, nil, errors.New("standard input is empty or not a tar archive: send one, e.g. tar -cf - compose.yaml")
			}
			break
		}
		if err != nil {
			if entries == 0 {
				if gz := br.first; len(gz) >= 2 && gz[0] == 0x1f && gz[1] == 0x8b {
					return nil, nil, errors.New("standard input is compressed (gzip): send the tar archive uncompressed (tar -cf -, not -z)")
				}
				return nil, nil, fmt.Errorf("standard input is not a tar archive (%v): send one, e.g. tar -cf - compose.yaml", err)
			}
			return nil, nil, fmt.Errorf("read the archive after %d entries: %v", entries, err)
		}
		if entries >= lim.maxEntries() {
			return nil, nil, fmt.Errorf("more than %d entries: a bundle has at most %d files", lim.maxEntries(), lim.Files)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue // metadata of the whole archive, e.g. git archive's commit
		}
		name, err := entryName(h.Name)
		if err != nil {
			return nil, nil, err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if _, ok := files[name]; ok {
				return nil, nil, fmt.Errorf("%s is both a file and a directory", clip.F(name))
			}
			dirs[name] = true
			continue
		case tar.TypeReg:
		default:
			return nil, nil, fmt.Errorf("%s: %s; only regular files and directories are taken", clip.F(name), entryKind(h.Typeflag))
		}
		if name == "." || strings.HasSuffix(h.Name, "/") {
			return nil, nil, fmt.Errorf("%q: a regular file named as a directory", clip.F(h.Name))
		}
		if name == RequestEnvEntry {
			if !withEnv {
				return nil, nil, fmt.Errorf("%s is in the archive, but the command has no --env-file -: it holds the request's variables and would be taken for a compose file (and recorded); add --env-file - or leave it out", RequestEnvEntry)
			}
			if haveEnv {
				return nil, nil, fmt.Errorf("%s is in the archive twice", RequestEnvEntry)
			}
			if env, err = readEntry(tr, lim.EnvBytes); err != nil {
				return nil, nil, fmt.Errorf("%s: %w (at most %d bytes)", RequestEnvEntry, err, lim.EnvBytes)
			}
			haveEnv = true
			continue
		}
		if _, dup := files[name]; dup {
			return nil, nil, fmt.Errorf("%s is in the archive twice", clip.F(name))
		}
		if dirs[name] {
			return nil, nil, fmt.Errorf("%s is both a file and a directory", clip.F(name))
		}
		if len(files) == lim.Files {
			return nil, nil, fmt.Errorf("more than %d files: a bundle has at most %d", lim.Files, lim.Files)
		}
		data, err := readEntry(tr, lim.Bytes-total)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w (the files of a bundle take at most %d bytes in all)", clip.F(name), err, lim.Bytes)
		}
		if !utf8.Valid(data) {
			return nil, nil, fmt.Errorf("%s is not UTF-8 text", clip.F(name))
		}
		total += int64(len(data))
		files[name] = string(data)
	}
	for name := range files {
		for dir := name; strings.Contains(dir, "/"); {
			dir = dir[:strings.LastIndexByte(dir, '/')]
			if _, ok := files[dir]; ok {
				return nil, nil, fmt.Errorf("%s is both a file and a directory", clip.F(dir))
			}
		}
	}
	if withEnv && !haveEnv {
		return nil, nil, fmt.Errorf("--env-file - with --compose-file -: the env file is the archive's entry %s, and it has none", RequestEnvEntry)
	}
	if len(files) == 0 {
		return nil, nil, errors.New("no compose file in the archive")
	}
	b = &ComposeBundle{Files: files}
	if _, err := b.Check(lim.Files, lim.Bytes); err != nil {
		return nil, nil, err
	}
	return b, env, nil
}

// entryName is an entry's name as a path relative to the archive's root
// ("." for the root itself), or why it cannot be one.
func entryName(raw string) (string, error) {
	if raw == "" || strings.ContainsFunc(raw, unicode.IsControl) {
		return "", fmt.Errorf("an entry named %q: want a relative path without control characters", clip.F(raw))
	}
	name := strings.TrimRight(raw, "/")
	for strings.HasPrefix(name, "./") {
		name = strings.TrimLeft(name[2:], "/")
	}
	if name == "" || name == "." {
		if strings.HasPrefix(raw, "/") {
			return "", fmt.Errorf("%q: an absolute path; want paths relative to the archive's root", clip.F(raw))
		}
		return ".", nil
	}
	if !fs.ValidPath(name) || strings.Contains(name, `\`) {
		return "", fmt.Errorf("%q: want a relative path inside the archive (not absolute, no .., no empty or . elements, no backslash)", clip.F(raw))
	}
	return name, nil
}

// readEntry reads the current entry, at most max bytes.
func readEntry(r io.Reader, max int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("read: %v", err)
	}
	if n > max {
		return nil, errors.New("too large")
	}
	return buf.Bytes(), nil
}

func entryKind(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "a symbolic link"
	case tar.TypeLink:
		return "a hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "a device"
	case tar.TypeFifo:
		return "a FIFO"
	case tar.TypeGNUSparse:
		return "a sparse file"
	}
	return fmt.Sprintf("an entry of type %q", t)
}

// sniffReader keeps the first two bytes read through it, to tell a
// compressed stream from a tar archive.
type sniffReader struct {
	r     io.Reader
	first []byte
}

func (c *sniffReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if len(c.first) < 2 {
		c.first = append(c.first, p[:min(n, 2-len(c.first))]...)
	}
	return n, err
}
