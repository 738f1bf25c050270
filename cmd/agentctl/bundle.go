package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unicode/utf8"

	"github.com/berth-deploy/berth/agent/api"
)

// maxBundleFileBytes bounds one file agentctl reads for --compose-file,
// so a wrong path (a log, a disk image) is refused before it is read
// whole; agentd applies the project's own limits to the bundle.
const maxBundleFileBytes = 4 << 20

// readBundle reads the files of --compose-file into a bundle: the first
// is the main compose file, and every path is taken relative to its
// directory, which the others must be under.
func readBundle(paths []string) (*api.ComposeBundle, error) {
	root, err := filepath.Abs(filepath.Dir(paths[0]))
	if err != nil {
		return nil, err
	}
	b := &api.ComposeBundle{Files: map[string]string{}}
	for i, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		rel, err := filepath.Rel(root, abs)
		if err != nil || !filepath.IsLocal(rel) {
			return nil, fmt.Errorf("%s is not under %s, the directory of the compose file (%s): the files a compose file includes or extends are taken relative to it", p, root, paths[0])
		}
		rel = filepath.ToSlash(rel)
		if _, dup := b.Files[rel]; dup {
			return nil, fmt.Errorf("%s is given twice", p)
		}
		data, err := readRegular(abs)
		if err != nil {
			return nil, err
		}
		if !utf8.Valid(data) {
			return nil, fmt.Errorf("%s is not UTF-8 text", p)
		}
		b.Files[rel] = string(data)
		if i == 0 {
			b.Main = rel
		}
	}
	return b, nil
}

// readRegular reads a regular file (a symbolic link to one is followed:
// its content is what is sent), at most maxBundleFileBytes.
func readRegular(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxBundleFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxBundleFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxBundleFileBytes)
	}
	return data, nil
}
