package api

import (
	"strings"
	"testing"
)

// TestBundleCheck: every path a bundle may not hold is refused, naming it;
// the limits are counted; the main file is the one named, or the first
// default name at the root.
func TestBundleCheck(t *testing.T) {
	ok := "services: {}\n"
	for _, tc := range []struct {
		name  string
		files map[string]string
		main  string
		want  string // the main file, or a part of the error
		err   bool
	}{
		{"default compose.yaml", map[string]string{"compose.yaml": ok, "docker-compose.yml": ok}, "", "compose.yaml", false},
		{"default docker-compose.yml", map[string]string{"docker-compose.yml": ok, "sub/compose.yaml": ok}, "", "docker-compose.yml", false},
		{"named main in a directory", map[string]string{"deploy/prod.yaml": ok, "deploy/base.yaml": ok}, "deploy/prod.yaml", "deploy/prod.yaml", false},
		{"no default at the root", map[string]string{"sub/compose.yaml": ok}, "", "no compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml at the bundle's root", true},
		{"main not in the bundle", map[string]string{"compose.yaml": ok}, "prod.yaml", `the main file "prod.yaml" is not in the bundle`, true},
		{"empty", map[string]string{}, "", "holds no files", true},
		{"absolute", map[string]string{"/etc/compose.yaml": ok}, "", `"/etc/compose.yaml" is absolute`, true},
		{"dot-dot", map[string]string{"compose.yaml": ok, "../x.yaml": ok}, "", `"../x.yaml": no . or .. in a path`, true},
		{"inner dot-dot", map[string]string{"compose.yaml": ok, "a/../../x": ok}, "", `"a/../../x": no . or ..`, true},
		{"dot", map[string]string{"./compose.yaml": ok}, "", `no . or ..`, true},
		{"empty element", map[string]string{"compose.yaml": ok, "a//b": ok}, "", "has an empty element", true},
		{"trailing slash", map[string]string{"compose.yaml": ok, "a/": ok}, "", "has an empty element", true},
		{"empty path", map[string]string{"compose.yaml": ok, "": ok}, "", "an empty path", true},
		{"NUL", map[string]string{"compose.yaml": ok, "a\x00b": ok}, "", "control character", true},
		{"newline", map[string]string{"compose.yaml": ok, "a\nb": ok}, "", "control character", true},
		{"backslash", map[string]string{"compose.yaml": ok, `..\x`: ok}, "", "no backslash", true},
		{"not UTF-8", map[string]string{"compose.yaml": ok, "a\xffb": ok}, "", "not UTF-8", true},
		{"too long a path", map[string]string{"compose.yaml": ok, strings.Repeat("a", 1025): ok}, "", "a path of 1025 bytes", true},
		{"file and directory", map[string]string{"compose.yaml": ok, "conf": ok, "conf/nginx.conf": ok}, "", `"conf" is a file and the directory of "conf/nginx.conf"`, true},
		{"file and directory, deeper", map[string]string{"compose.yaml": ok, "a/b": ok, "a/b/c/d": ok, "a/b-c": ok}, "", `"a/b" is a file and the directory of "a/b/c/d"`, true},
		{"a root .env", map[string]string{"compose.yaml": ok, ".env": "SECRET=x"}, "", ".env: a shipped compose file comes without a .env", true},
		{"a .env beside an included file", map[string]string{"compose.yaml": ok, "app/.env": "A=1"}, "", "app/.env: a shipped compose file comes without a .env", true},
		{"a .env beside the main file", map[string]string{"deploy/compose.yaml": ok, "deploy/.env": "A=1"}, "deploy/compose.yaml", "deploy/.env: a shipped", true},
		{"other env files", map[string]string{"compose.yaml": ok, "app.env": "A=1", ".env.example": "A=", "x/.envrc": ""}, "", "compose.yaml", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &ComposeBundle{Files: tc.files, Main: tc.main}
			got, err := b.Check(64, 1<<20)
			switch {
			case tc.err && err == nil:
				t.Errorf("accepted (main %q); want an error with %q", got, tc.want)
			case tc.err && !strings.Contains(err.Error(), tc.want):
				t.Errorf("err = %v, want %q", err, tc.want)
			case !tc.err && err != nil:
				t.Errorf("err = %v", err)
			case !tc.err && got != tc.want:
				t.Errorf("main = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBundleLimits(t *testing.T) {
	files := map[string]string{"compose.yaml": strings.Repeat("x", 600)}
	for i := range 3 {
		files[string(rune('a'+i))+".yaml"] = strings.Repeat("y", 100)
	}
	b := &ComposeBundle{Files: files}
	if _, err := b.Check(4, 900); err != nil {
		t.Errorf("at the limits: %v", err)
	}
	if _, err := b.Check(3, 900); err == nil || !strings.Contains(err.Error(), "holds 4 files; a project takes at most 3 (max_compose_files)") {
		t.Errorf("one file too many: %v", err)
	}
	if _, err := b.Check(4, 899); err == nil || !strings.Contains(err.Error(), "holds 900 bytes; a project takes at most 899 (max_compose_bytes)") {
		t.Errorf("one byte too many: %v", err)
	}
	var nilBundle *ComposeBundle
	if _, err := nilBundle.Check(4, 900); err == nil {
		t.Error("a nil bundle was accepted")
	}
}

// TestBundleID: the ID follows the files (names and contents), not the
// map's order or the main file's name, and two files cannot be shifted
// into one another.
func TestBundleID(t *testing.T) {
	a := &ComposeBundle{Files: map[string]string{"compose.yaml": "x", "b": "yz"}}
	b := &ComposeBundle{Files: map[string]string{"b": "yz", "compose.yaml": "x"}, Main: "compose.yaml"}
	if a.ID() != b.ID() {
		t.Error("the same files got different IDs")
	}
	for _, other := range []map[string]string{
		{"compose.yaml": "x", "b": "yZ"},
		{"compose.yaml": "x", "c": "yz"},
		{"compose.yaml": "xb", "": "yz"},
		{"compose.yaml": "x"},
	} {
		if (&ComposeBundle{Files: other}).ID() == a.ID() {
			t.Errorf("%v has the ID of %v", other, a.Files)
		}
	}
	if len(a.ID()) != 32 {
		t.Errorf("ID %q: want 32 hex digits", a.ID())
	}
}

func TestCheckSource(t *testing.T) {
	for _, s := range []string{"", "3f2c1a0b", "refs/tags/v1.2", "main@3f2c1a0", "v1.0+build:7"} {
		if err := CheckSource(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"a b", "x\n", "$(id)", strings.Repeat("a", 129), "é"} {
		if err := CheckSource(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
