package api

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"
)

var testLimits = BundleLimits{Files: 4, Bytes: 1000, EnvBytes: 100}

// entry is one header (and content) of a test archive.
type entry struct {
	name, body string
	typ        byte
	link       string
}

func archive(t testing.TB, format tar.Format, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link, Format: format}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			h = &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: map[string]string{"comment": "3f2c1a0"}, Format: tar.FormatPAX}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("header %q: %v", e.name, err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadComposeTar(t *testing.T) {
	const compose = "services:\n  web:\n    image: reg/web\n"
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		data := archive(t, format,
			entry{name: "./", typ: tar.TypeDir},
			entry{name: "./compose.yaml", body: compose},
			entry{name: "./common/", typ: tar.TypeDir},
			entry{name: "./common/base.yaml", body: "services: {}\n"},
			entry{name: "request.env", body: "DJANGO_SECRET_KEY=s3cret\n"},
		)
		b, env, err := ReadComposeTar(bytes.NewReader(data), testLimits, true)
		if err != nil {
			t.Fatalf("%v: %v", format, err)
		}
		want := map[string]string{"compose.yaml": compose, "common/base.yaml": "services: {}\n"}
		if !maps.Equal(b.Files, want) || b.Main != "" || string(env) != "DJANGO_SECRET_KEY=s3cret\n" {
			t.Errorf("%v: files %q, main %q, env %q", format, b.Files, b.Main, env)
		}
		if m, err := b.Check(testLimits.Files, testLimits.Bytes); m != "compose.yaml" || err != nil {
			t.Errorf("%v: main file %q, %v", format, m, err)
		}
	}
	// git archive's pax global header (the commit) is metadata: skipped.
	data := archive(t, tar.FormatPAX, entry{name: "pax_global_header", typ: tar.TypeXGlobalHeader}, entry{name: "docker-compose.yml", body: compose})
	if b, env, err := ReadComposeTar(bytes.NewReader(data), testLimits, false); err != nil || len(b.Files) != 1 || env != nil {
		t.Errorf("with a pax global header: %+v %q %v", b, env, err)
	}
	// The sum of the files may be exactly the limit.
	data = archive(t, tar.FormatPAX, entry{name: "compose.yaml", body: strings.Repeat("#", 600)}, entry{name: "b.yaml", body: strings.Repeat("#", 400)})
	if _, _, err := ReadComposeTar(bytes.NewReader(data), testLimits, false); err != nil {
		t.Errorf("1000 bytes in all, the limit: %v", err)
	}
}

func TestReadComposeTarRefuses(t *testing.T) {
	main := entry{name: "compose.yaml", body: "services: {}\n"}
	env := entry{name: "request.env", body: "A=1\n"}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(archive(t, tar.FormatPAX, main))
	zw.Close()
	for _, tc := range []struct {
		name    string
		data    []byte
		withEnv bool
		says    string
	}{
		{"empty", nil, false, "empty or not a tar archive"},
		{"an env file, not a tar", []byte("DJANGO_SECRET_KEY=s3cret-value-that-must-not-be-echoed\n" + strings.Repeat("\n", 600)), false, "not a tar archive"},
		{"gzip", gz.Bytes(), false, "compressed (gzip)"},
		{"truncated", archive(t, tar.FormatPAX, main, entry{name: "b.yaml", body: strings.Repeat("x", 900)})[:1500], false, "read the archive after"},
		{"symlink", archive(t, tar.FormatPAX, main, entry{name: "b.yaml", typ: tar.TypeSymlink, link: "/etc/shadow"}), false, "b.yaml: a symbolic link"},
		{"hard link", archive(t, tar.FormatPAX, main, entry{name: "b.yaml", typ: tar.TypeLink, link: "compose.yaml"}), false, "b.yaml: a hard link"},
		{"device", archive(t, tar.FormatPAX, main, entry{name: "null", typ: tar.TypeChar}), false, "null: a device"},
		{"fifo", archive(t, tar.FormatPAX, main, entry{name: "p", typ: tar.TypeFifo}), false, "p: a FIFO"},
		{"absolute", archive(t, tar.FormatPAX, main, entry{name: "/etc/cron.d/x", body: "x"}), false, "want a relative path"},
		{"absolute root", archive(t, tar.FormatPAX, entry{name: "/", typ: tar.TypeDir}, main), false, "an absolute path"},
		{"dot-dot", archive(t, tar.FormatPAX, main, entry{name: "../../etc/x.yaml", body: "x"}), false, "want a relative path"},
		{"dot-dot inside", archive(t, tar.FormatPAX, main, entry{name: "a/../../x.yaml", body: "x"}), false, "want a relative path"},
		{"backslash", archive(t, tar.FormatPAX, main, entry{name: `a\..\x.yaml`, body: "x"}), false, "no backslash"},
		{"control character", archive(t, tar.FormatPAX, main, entry{name: "a\nagentd: forged", body: "x"}), false, "without control characters"},
		{"twice", archive(t, tar.FormatPAX, main, main), false, "compose.yaml is in the archive twice"},
		{"file and directory", archive(t, tar.FormatPAX, main, entry{name: "a", body: "x"}, entry{name: "a/b.yaml", body: "x"}), false, "a is both a file and a directory"},
		{"directory and file", archive(t, tar.FormatPAX, main, entry{name: "a/", typ: tar.TypeDir}, entry{name: "a", body: "x"}), false, "a is both a file and a directory"},
		{"too many files", archive(t, tar.FormatPAX, main, entry{name: "1", body: "x"}, entry{name: "2", body: "x"}, entry{name: "3", body: "x"}, entry{name: "4", body: "x"}), false, "more than 4 files"},
		{"too many entries", archive(t, tar.FormatPAX, main, entry{name: "1/", typ: tar.TypeDir}, entry{name: "2/", typ: tar.TypeDir}, entry{name: "3/", typ: tar.TypeDir},
			entry{name: "4/", typ: tar.TypeDir}, entry{name: "5/", typ: tar.TypeDir}, entry{name: "6/", typ: tar.TypeDir}, entry{name: "7/", typ: tar.TypeDir}, entry{name: "8/", typ: tar.TypeDir}, entry{name: "9/", typ: tar.TypeDir}, entry{name: "10/", typ: tar.TypeDir}), false, "more than 10 entries"},
		{"too large in all", archive(t, tar.FormatPAX, entry{name: "compose.yaml", body: strings.Repeat("#", 600)}, entry{name: "b.yaml", body: strings.Repeat("#", 401)}), false, "b.yaml: too large"},
		{"not UTF-8", archive(t, tar.FormatPAX, main, entry{name: "b.yaml", body: "\xff\xfe"}), false, "b.yaml is not UTF-8 text"},
		{"no main file", archive(t, tar.FormatPAX, entry{name: "sub/compose.yaml", body: "x"}), false, "no compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml at the bundle's root"},
		{"a root .env", archive(t, tar.FormatPAX, main, entry{name: ".env", body: "A=1\n"}), false, ".env: a shipped compose file comes without a .env"},
		{"only directories", archive(t, tar.FormatPAX, entry{name: "sub/", typ: tar.TypeDir}), false, "no compose file in the archive"},
		// request.env holds secrets: without --env-file - it is refused,
		// not taken (and recorded) as a compose file.
		{"request.env without --env-file -", archive(t, tar.FormatPAX, main, env), false, "request.env is in the archive, but the command has no --env-file -"},
		{"--env-file - without request.env", archive(t, tar.FormatPAX, main), true, "the archive's entry request.env, and it has none"},
		{"request.env twice", archive(t, tar.FormatPAX, main, env, env), true, "request.env is in the archive twice"},
		{"request.env too large", archive(t, tar.FormatPAX, main, entry{name: "request.env", body: strings.Repeat("A=1\n", 26)}), true, "request.env: too large (at most 100 bytes)"},
	} {
		b, _, err := ReadComposeTar(bytes.NewReader(tc.data), testLimits, tc.withEnv)
		if !errors.Is(err, ErrArchive) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %+v, %v; want ErrArchive saying %q", tc.name, b, err, tc.says)
		}
		if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "\n")) {
			t.Errorf("%s: the error quotes content or spans lines: %q", tc.name, err)
		}
	}
}

// What tar(1) and git archive write, as CI sends them, is taken.
func TestReadComposeTarFromTools(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "common"), 0o755)
	os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("include: [common/base.yaml]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "common", "base.yaml"), []byte("services: {}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "request.env"), []byte("A=1\n"), 0o600)
	want := []string{"common/base.yaml", "compose.yaml"}
	for _, tc := range []struct {
		name    string
		args    []string
		withEnv bool
	}{
		{"tar", []string{"tar", "-cf", "-", "compose.yaml", "common", "request.env"}, true},
		{"tar .", []string{"tar", "-cf", "-", "--exclude=request.env", "."}, false},
		{"tar --format=ustar", []string{"tar", "--format=ustar", "-cf", "-", "compose.yaml", "common/base.yaml"}, false},
		{"tar --format=pax", []string{"tar", "--format=pax", "-cf", "-", "compose.yaml", "common/base.yaml"}, false},
		{"git archive", []string{"sh", "-c", "git init -q . && git add compose.yaml common && git -c user.name=t -c user.email=t@t commit -qm c && git archive HEAD compose.yaml common"}, false},
	} {
		if _, err := exec.LookPath(tc.args[0]); err != nil {
			t.Fatalf("%s: %v (the test needs tar, git and sh)", tc.name, err)
		}
		cmd := exec.Command(tc.args[0], tc.args[1:]...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, env, err := ReadComposeTar(bytes.NewReader(out), testLimits, tc.withEnv)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := slices.Sorted(maps.Keys(b.Files)); !slices.Equal(got, want) || tc.withEnv != (env != nil) {
			t.Errorf("%s: files %q env %q; want %q", tc.name, got, env, want)
		}
	}
}

// TarBytes leaves room for the largest archive the limits allow: as many
// files as allowed, in as many directories, with long names, at the byte
// limit, and request.env at its.
func TestBundleLimitsTarBytes(t *testing.T) {
	lim := BundleLimits{Files: 64, Bytes: 1 << 20, EnvBytes: 1 << 20}
	var entries []entry
	long := strings.Repeat("d", 200)
	for i := range lim.Files {
		dir := long + "/" + strings.Repeat("e", 150) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		entries = append(entries, entry{name: dir + "/", typ: tar.TypeDir})
		name := "compose.yaml"
		if i > 0 {
			name = dir + "/" + long + ".yaml"
		}
		entries = append(entries, entry{name: name, body: strings.Repeat("#", int(lim.Bytes)/lim.Files)})
	}
	entries = append(entries, entry{name: RequestEnvEntry, body: strings.Repeat("#", int(lim.EnvBytes))})
	for _, format := range []tar.Format{tar.FormatPAX, tar.FormatGNU} {
		data := archive(t, format, entries...)
		// GNU tar pads to 10 KiB records.
		padded := (len(data) + 10239) / 10240 * 10240
		if int64(padded) > lim.TarBytes() {
			t.Errorf("%v: the largest archive takes %d bytes (padded), TarBytes is %d", format, padded, lim.TarBytes())
		}
		if _, _, err := ReadComposeTar(bytes.NewReader(data), lim, true); err != nil {
			t.Errorf("%v: %v", format, err)
		}
	}
}

// FuzzReadComposeTar: whatever comes on standard input, the reader does
// not panic, and what it takes is within the limits, under plain relative
// paths, with a main file, and request.env apart only when asked for.
func FuzzReadComposeTar(f *testing.F) {
	t := f
	f.Add(archive(t, tar.FormatPAX, entry{name: "compose.yaml", body: "services: {}\n"}, entry{name: "request.env", body: "A=1\n"}), true)
	f.Add(archive(t, tar.FormatGNU, entry{name: "./", typ: tar.TypeDir}, entry{name: "./compose.yaml", body: "x"}, entry{name: "./a/b.yaml", body: "y"}), false)
	f.Add(archive(t, tar.FormatUSTAR, entry{name: "compose.yaml", body: "x"}, entry{name: "l", typ: tar.TypeSymlink, link: "/etc"}), false)
	f.Add([]byte("A=1\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, withEnv bool) {
		b, env, err := ReadComposeTar(bytes.NewReader(data), testLimits, withEnv)
		if err != nil {
			if !errors.Is(err, ErrArchive) {
				t.Fatalf("error %v is not ErrArchive", err)
			}
			return
		}
		if len(b.Files) > testLimits.Files || int64(len(env)) > testLimits.EnvBytes || (env != nil) != withEnv {
			t.Fatalf("%d files, env %q (withEnv %v)", len(b.Files), env, withEnv)
		}
		var total int
		for name, body := range b.Files {
			total += len(body)
			if !fs.ValidPath(name) || name == "." || name == RequestEnvEntry || strings.ContainsFunc(name, unicode.IsControl) {
				t.Fatalf("file name %q", name)
			}
		}
		if total > int(testLimits.Bytes) {
			t.Fatalf("%d bytes of files", total)
		}
		if _, err := b.Check(testLimits.Files, testLimits.Bytes); err != nil {
			t.Fatal(err)
		}
	})
}
