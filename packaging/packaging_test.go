package packaging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
	"gopkg.in/yaml.v3"
)

// goreleaserVersion is the GoReleaser the release config is checked and built
// with: v2.15.1 is the newest that builds with Go 1.26.
const goreleaserVersion = "v2.15.1"

// TestPackages checks goreleaser.yaml, builds a snapshot release from it
// (this machine's architecture only, to keep it short) and installs what it
// built in containers of the Debian base image: the .deb with dpkg (install,
// reinstall, remove, purge) and the release archive with scripts/install.sh
// (a corrupted archive, an archive checksums.txt does not list, a good one
// from a directory, again from a URL).
//
// It installs GoReleaser (once, into a cache under os.TempDir()) and may build
// the base image, so it runs only when CI or BERTH_REQUIRE_DOCKER is set; then
// anything missing is a failure.
func TestPackages(t *testing.T) {
	if !testenv.Required() {
		t.Skip("installs goreleaser, builds packages and runs containers: set BERTH_REQUIRE_DOCKER=1 (or CI) to run it")
	}
	start := time.Now()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatalf("docker CLI: %v (CI or BERTH_REQUIRE_DOCKER is set: not skipping)", err)
	}
	if out, err := run(t, root, 30*time.Second, "docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Fatalf("docker engine unreachable: %v\n%s(CI or BERTH_REQUIRE_DOCKER is set: not skipping)", err, out)
	}

	gr := goreleaser(t)
	t.Run("check", func(t *testing.T) {
		out, err := run(t, root, time.Minute, gr, "check", "--config", "goreleaser.yaml")
		if err != nil {
			t.Fatalf("goreleaser check: %v\n%s", err, out)
		}
	})

	rel := snapshot(t, gr, root)
	image := baseImage(t, root)
	t.Logf("setup done in %s", time.Since(start).Round(time.Second))

	t.Run("deb", func(t *testing.T) { testDeb(t, image, rel) })
	t.Run("deb-with-systemd", func(t *testing.T) { testDebSystemd(t, image, rel) })
	t.Run("rpm", func(t *testing.T) { testRPM(t, image, rel) })
	t.Run("install.sh", func(t *testing.T) { testInstallScript(t, image, root, rel) })
}

// release is what a snapshot build left in its dist directory.
type release struct {
	dist, version     string
	deb, rpm, archive string // file names in dist
	checksums         map[string]string
}

// testDeb installs the .deb in a fresh container and checks what it did, then
// reinstalls it over an edited config, removes it and purges it.
func testDeb(t *testing.T, image string, rel release) {
	c := startContainer(t, image, rel.dist+":/dist:ro")
	deb := "/dist/" + rel.deb

	out := c.must(t, "dpkg -i "+deb)
	t.Logf("dpkg -i:\n%s", out)
	if !strings.Contains(out, "NOT started or enabled") {
		t.Errorf("dpkg -i did not say that agentd is not started:\n%s", out)
	}
	if !strings.Contains(out, "no docker group") {
		t.Errorf("dpkg -i did not warn that there is no docker group:\n%s", out)
	}
	checkInstalled(t, c, rel, "/lib/systemd/system")
	c.must(t, "test -f /usr/lib/sysusers.d/berth.conf && test -f /usr/lib/tmpfiles.d/berth.conf")
	if got := c.must(t, "dpkg-query -W -f='${Conffiles}' berth"); !strings.Contains(got, "/etc/berth/agentd.yaml") {
		t.Errorf("/etc/berth/agentd.yaml is not a conffile: %q", got)
	}

	// An operator's edits and the release history survive a reinstall
	// (prerm/postrm "upgrade", postinst "configure OLD").
	c.must(t, `echo '# edited by the operator' >>/etc/berth/agentd.yaml && echo history >/var/lib/berth/marker && chown berth:berth /var/lib/berth/marker`)
	t.Logf("dpkg -i again:\n%s", c.must(t, "dpkg -i "+deb))
	c.must(t, "grep -q '^# edited by the operator' /etc/berth/agentd.yaml")
	c.must(t, "test \"$(cat /var/lib/berth/marker)\" = history")
	expectStat(t, c, "/etc/berth/agentd.yaml", "640 root berth")
	expectStat(t, c, "/var/lib/berth", "700 berth berth")

	// Removal keeps the config (edited), the state and the user.
	t.Logf("dpkg -r:\n%s", c.must(t, "dpkg -r berth"))
	c.must(t, "! test -e /usr/bin/agentd && ! test -e /usr/bin/agentctl")
	c.must(t, "! test -e /lib/systemd/system/agentd.service && ! test -e /lib/systemd/system/agentd.socket")
	c.must(t, "grep -q '^# edited by the operator' /etc/berth/agentd.yaml")
	c.must(t, "test \"$(cat /var/lib/berth/marker)\" = history")
	c.must(t, "getent passwd berth && getent group berth")
	if got := c.must(t, "dpkg-query -W -f='${db:Status-Abbrev}' berth"); strings.TrimSpace(got) != "rc" {
		t.Errorf("after dpkg -r the status is %q, want rc (removed, config-files kept)", got)
	}

	// Purge deletes the conffile (and /etc/berth, empty), never the state.
	t.Logf("dpkg --purge:\n%s", c.must(t, "dpkg --purge berth"))
	c.must(t, "! test -e /etc/berth/agentd.yaml && ! test -e /etc/berth")
	c.must(t, "test \"$(cat /var/lib/berth/marker)\" = history")
	expectStat(t, c, "/var/lib/berth", "700 berth berth")
}

// testDebSystemd installs the .deb where systemd is installed (though not
// running, as in any container) and Docker's group exists, as on a real
// Debian host: the user comes from systemd-sysusers and the state directory
// from systemd-tmpfiles, berth joins the docker group, and removal disables
// an agentd the operator had enabled.
func testDebSystemd(t *testing.T, image string, rel release) {
	c := startContainer(t, image, rel.dist+":/dist:ro")
	c.must(t, aptInstall("systemd"))
	c.must(t, "groupadd --system docker")
	// What systemd-sysusers makes of the file on its own, in an empty root.
	c.must(t, "mkdir -p /tmp/sysroot/etc && dpkg-deb -x /dist/"+rel.deb+" /tmp/pkg && "+
		"systemd-sysusers --root=/tmp/sysroot /tmp/pkg/usr/lib/sysusers.d/berth.conf")
	if got := c.must(t, "grep ^berth: /tmp/sysroot/etc/passwd | cut -d: -f5-"); strings.TrimSpace(got) != "Berth deploy agent:/var/lib/berth:/usr/sbin/nologin" {
		t.Errorf("systemd-sysusers made the user %q, want GECOS, home and shell Berth deploy agent:/var/lib/berth:/usr/sbin/nologin", got)
	}
	c.must(t, "grep -q ^berth: /tmp/sysroot/etc/group")

	out := c.must(t, "dpkg -i /dist/"+rel.deb)
	t.Logf("dpkg -i:\n%s", out)
	if strings.Contains(out, "no docker group") {
		t.Errorf("dpkg -i warned about the docker group, which exists:\n%s", out)
	}
	checkInstalled(t, c, rel, "/lib/systemd/system")
	if groups := c.must(t, "id -nG berth"); !strings.Contains(" "+strings.TrimSpace(groups)+" ", " docker ") {
		t.Errorf("berth is not in the docker group: %q", groups)
	}
	// Both files as installed are accepted by the real tools.
	c.must(t, "systemd-sysusers /usr/lib/sysusers.d/berth.conf && systemd-tmpfiles --create /usr/lib/tmpfiles.d/berth.conf")
	expectStat(t, c, "/var/lib/berth", "700 berth berth")

	// The operator enables agentd; an upgrade keeps it enabled, removal
	// disables it.
	c.must(t, "systemctl enable agentd.service && test -L /etc/systemd/system/multi-user.target.wants/agentd.service")
	out = c.must(t, "dpkg -i /dist/"+rel.deb)
	if !strings.Contains(out, "enabled but not running") {
		t.Errorf("a reinstall with agentd enabled did not say it is enabled but not running:\n%s", out)
	}
	c.must(t, "test -L /etc/systemd/system/multi-user.target.wants/agentd.service")
	t.Logf("dpkg -r:\n%s", c.must(t, "dpkg -r berth"))
	c.must(t, "! test -e /etc/systemd/system/multi-user.target.wants/agentd.service")
	c.must(t, "test -f /etc/berth/agentd.yaml && test -d /var/lib/berth")
}

// testRPM installs the .rpm with Debian's rpm (--nodeps: the Debian image
// has no rpm database of its dependencies): the scriptlets get rpm's
// numeric arguments (1 install, 2 upgrade, 0 removal) instead of dpkg's
// words, the units go to /usr/lib/systemd/system, and the config is a
// %config(noreplace).
func testRPM(t *testing.T, image string, rel release) {
	c := startContainer(t, image, rel.dist+":/dist:ro")
	c.must(t, aptInstall("rpm"))
	rpm := "rpm --nodeps --force-debian "
	out := c.must(t, rpm+"-i /dist/"+rel.rpm)
	t.Logf("rpm -i:\n%s", out)
	if !strings.Contains(out, "NOT started or enabled") {
		t.Errorf("rpm -i did not say that agentd is not started:\n%s", out)
	}
	checkInstalled(t, c, rel, "/usr/lib/systemd/system")
	c.must(t, "! test -e /lib/systemd/system/agentd.service || test /lib -ef /usr/lib")
	if got := c.must(t, "rpm -q --configfiles berth"); strings.TrimSpace(got) != "/etc/berth/agentd.yaml" {
		t.Errorf("rpm config files: %q, want /etc/berth/agentd.yaml", got)
	}
	if got := c.must(t, "rpm -qp --recommends /dist/"+rel.rpm); !strings.Contains(got, "docker") {
		t.Errorf("rpm recommends %q, want docker or moby-engine", got)
	}

	c.must(t, `echo '# edited by the operator' >>/etc/berth/agentd.yaml && echo history >/var/lib/berth/marker`)
	t.Logf("rpm -U --replacepkgs:\n%s", c.must(t, rpm+"-U --replacepkgs /dist/"+rel.rpm))
	c.must(t, "grep -q '^# edited by the operator' /etc/berth/agentd.yaml && test -x /usr/bin/agentd")
	expectStat(t, c, "/etc/berth/agentd.yaml", "640 root berth")

	// rpm -e keeps an edited config as agentd.yaml.rpmsave, and the state.
	t.Logf("rpm -e:\n%s", c.must(t, rpm+"-e berth"))
	c.must(t, "! test -e /usr/bin/agentd && ! test -e /usr/lib/systemd/system/agentd.service")
	c.must(t, "grep -q '^# edited by the operator' /etc/berth/agentd.yaml.rpmsave")
	c.must(t, "test \"$(cat /var/lib/berth/marker)\" = history && getent passwd berth")
	// Installing again points at the saved config.
	if out := c.must(t, rpm+"-i /dist/"+rel.rpm); !strings.Contains(out, "agentd.yaml.rpmsave") {
		t.Errorf("a reinstall did not mention the saved config:\n%s", out)
	}
}

// aptInstall is a script that installs Debian packages in a container of the
// base image, from the mirror its sources.list names.
func aptInstall(pkgs ...string) string {
	return "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && " +
		"apt-get install -y -qq --no-install-recommends " + strings.Join(pkgs, " ") + " >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }"
}

// testInstallScript runs scripts/install.sh in a fresh container: refusals
// first (nothing may be installed), then an install, then an idempotent
// reinstall from a URL.
func testInstallScript(t *testing.T, image, root string, rel release) {
	archive, err := os.ReadFile(filepath.Join(rel.dist, rel.archive))
	if err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(filepath.Join(rel.dist, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// bad/: the archive with one byte changed; unlisted/: checksums.txt
	// without the archive's line.
	tmp := t.TempDir()
	corrupt := bytes.Clone(archive)
	corrupt[len(corrupt)/2] ^= 0xff
	var others []string
	for _, l := range strings.SplitAfter(string(sums), "\n") {
		if !strings.HasSuffix(strings.TrimSpace(l), rel.archive) {
			others = append(others, l)
		}
	}
	for dir, files := range map[string]map[string][]byte{
		"bad":      {rel.archive: corrupt, "checksums.txt": sums},
		"unlisted": {rel.archive: archive, "checksums.txt": []byte(strings.Join(others, ""))},
	} {
		if err := os.Mkdir(filepath.Join(tmp, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(tmp, dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}

	c := startContainer(t, image, rel.dist+":/dist:ro", tmp+":/tmp/in:ro",
		filepath.Join(root, "scripts", "install.sh")+":/src/install.sh:ro")
	// A host with Docker: berth must join its group.
	c.must(t, "groupadd --system docker")
	nothingInstalled := "! test -e /usr/bin/agentd && ! test -e /usr/bin/agentctl && ! test -e /etc/berth && " +
		"! test -e /var/lib/berth && ! test -e /etc/systemd/system/agentd.service && ! getent passwd berth"

	for _, bad := range []struct{ dir, want string }{
		{"bad", "CHECKSUM MISMATCH"},
		{"unlisted", "checksums.txt has no entry for " + rel.archive},
	} {
		out, code := c.sh("/src/install.sh --from /tmp/in/" + bad.dir)
		t.Logf("install.sh --from %s/ (exit %d):\n%s", bad.dir, code, out)
		if code != 1 {
			t.Errorf("install.sh --from %s/: exit %d, want 1", bad.dir, code)
		}
		if !strings.Contains(out, bad.want) || !strings.Contains(out, "Nothing was installed") && !strings.Contains(out, "nothing was installed") {
			t.Errorf("install.sh --from %s/: the refusal does not say %q and that nothing was installed", bad.dir, bad.want)
		}
		c.must(t, nothingInstalled)
	}

	out := c.must(t, "/src/install.sh --from /dist")
	t.Logf("install.sh --from /dist:\n%s", out)
	if !strings.Contains(out, "sha256 ok") || !strings.Contains(out, "NOT started or enabled") {
		t.Errorf("install.sh did not report the verified checksum and that nothing is started:\n%s", out)
	}
	checkInstalled(t, c, rel, "/etc/systemd/system")
	if groups := c.must(t, "id -nG berth"); !strings.Contains(" "+strings.TrimSpace(groups)+" ", " docker ") {
		t.Errorf("berth is not in the docker group: %q", groups)
	}

	// Again, from a URL (curl), over an edited config: idempotent, and the
	// config is kept.
	c.must(t, `echo '# edited by the operator' >>/etc/berth/agentd.yaml && echo history >/var/lib/berth/marker`)
	c.must(t, "cd /dist && (python3 -m http.server 8765 --bind 127.0.0.1 >/tmp/http.log 2>&1 &) && "+
		"for i in $(seq 50); do curl -fso /dev/null http://127.0.0.1:8765/checksums.txt && exit 0; sleep 0.1; done; cat /tmp/http.log; exit 1")
	out = c.must(t, "/src/install.sh --version v"+rel.version+" --from http://127.0.0.1:8765/")
	t.Logf("install.sh --version v%s --from http://127.0.0.1:8765/:\n%s", rel.version, out)
	if !strings.Contains(out, "kept the existing /etc/berth/agentd.yaml") {
		t.Errorf("the second install.sh did not keep the config:\n%s", out)
	}
	c.must(t, "grep -q '^# edited by the operator' /etc/berth/agentd.yaml")
	c.must(t, "test \"$(cat /var/lib/berth/marker)\" = history")
	checkInstalled(t, c, rel, "/etc/systemd/system")
}

// checkInstalled checks what both the package and install.sh must leave
// behind, with the units in unitDir.
func checkInstalled(t *testing.T, c *container, rel release, unitDir string) {
	t.Helper()
	passwd := strings.Split(strings.TrimSpace(c.must(t, "getent passwd berth")), ":")
	if len(passwd) != 7 || passwd[5] != "/var/lib/berth" || !strings.HasSuffix(passwd[6], "nologin") {
		t.Errorf("user berth: %q, want home /var/lib/berth and a nologin shell", passwd)
	}
	if uid := c.must(t, "id -u berth"); strings.TrimSpace(uid) == "0" || len(strings.TrimSpace(uid)) > 3 {
		t.Errorf("user berth has uid %s, want a system uid", uid)
	}
	c.must(t, "getent group berth")
	if got, want := strings.TrimSpace(c.must(t, "agentd --version")), "agentd "+rel.version; got != want {
		t.Errorf("agentd --version = %q, want %q", got, want)
	}
	if got, want := strings.TrimSpace(c.must(t, "agentctl version")), "agentctl "+rel.version; got != want {
		t.Errorf("agentctl version = %q, want %q", got, want)
	}
	expectStat(t, c, "/usr/bin/agentd", "755 root root")
	expectStat(t, c, "/usr/bin/agentctl", "755 root root")
	expectStat(t, c, "/etc/berth", "750 root berth")
	expectStat(t, c, "/etc/berth/agentd.yaml", "640 root berth")
	expectStat(t, c, "/var/lib/berth", "700 berth berth")
	for _, u := range []string{"agentd.service", "agentd.socket"} {
		expectStat(t, c, unitDir+"/"+u, "644 root root")
	}
	c.must(t, "grep -qx 'ExecStart=/usr/bin/agentd --config /etc/berth/agentd.yaml' "+unitDir+"/agentd.service")
	// The config is valid as installed, for root and for agentd's user.
	if out := c.must(t, "agentd --config /etc/berth/agentd.yaml --check"); !strings.Contains(out, "ok (0 projects)") {
		t.Errorf("agentd --check: %s", out)
	}
	c.must(t, "runuser -u berth -- agentd --config /etc/berth/agentd.yaml --check")
	// Nothing was started or enabled.
	c.must(t, "! test -e /run/berth/agentd.sock && ! test -e /etc/systemd/system/multi-user.target.wants/agentd.service")
}

func expectStat(t *testing.T, c *container, path, want string) {
	t.Helper()
	if got := strings.TrimSpace(c.must(t, "stat -c '%a %U %G' "+path)); got != want {
		t.Errorf("%s: mode and owner %q, want %q", path, got, want)
	}
}

// goreleaser returns the path of GoReleaser goreleaserVersion: the one in
// $HOME/go/bin if it is that version, else one installed with `go install`
// into os.TempDir()/berth-tools, where it stays for the next run.
func goreleaser(t *testing.T) string {
	t.Helper()
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "goreleaser")
		if out, err := exec.Command(p, "--version").CombinedOutput(); err == nil && strings.Contains(string(out), goreleaserVersion+"\n") {
			return p
		}
	}
	dir := filepath.Join(os.TempDir(), "berth-tools", "goreleaser-"+goreleaserVersion)
	p := filepath.Join(dir, "goreleaser")
	if _, err := os.Stat(p); err == nil {
		t.Logf("goreleaser %s: %s (cached)", goreleaserVersion, p)
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	start := time.Now()
	t.Logf("installing goreleaser %s into %s (this compile takes minutes, once)", goreleaserVersion, dir)
	cmd := exec.CommandContext(t.Context(), goBin, "install", "github.com/goreleaser/goreleaser/v2@"+goreleaserVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install goreleaser %s: %v\n%s", goreleaserVersion, err, out)
	}
	t.Logf("goreleaser %s installed in %s", goreleaserVersion, time.Since(start).Round(time.Second))
	return p
}

// snapshot runs `goreleaser release --snapshot` on goreleaser.yaml with the
// builds narrowed to linux/GOARCH (GoReleaser's --single-target exists only
// for `goreleaser build`, which makes no archives or packages) and dist in a
// temporary directory; everything else is the file as it is.
func snapshot(t *testing.T, gr, root string) release {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "goreleaser.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("goreleaser.yaml: %v", err)
	}
	builds, _ := doc["builds"].([]any)
	if len(builds) == 0 {
		t.Fatal("goreleaser.yaml has no builds")
	}
	for _, b := range builds {
		b.(map[string]any)["goarch"] = []string{runtime.GOARCH}
	}
	tmp := t.TempDir()
	dist := filepath.Join(tmp, "dist")
	doc["dist"] = dist
	narrowed, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(tmp, "goreleaser.yaml")
	if err := os.WriteFile(cfg, narrowed, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := run(t, root, 10*time.Minute, gr, "release", "--snapshot", "--clean", "--skip=publish", "--config", cfg)
	if err != nil {
		t.Fatalf("goreleaser release --snapshot: %v\n%s", err, out)
	}
	t.Logf("goreleaser release --snapshot (linux/%s) in %s", runtime.GOARCH, time.Since(start).Round(time.Second))

	var meta struct{ Version string }
	if data, err := os.ReadFile(filepath.Join(dist, "metadata.json")); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(data, &meta); err != nil || meta.Version == "" {
		t.Fatalf("dist/metadata.json: no version (%v): %s", err, data)
	}
	rel := release{dist: dist, version: meta.Version, checksums: map[string]string{}}
	sums, err := os.ReadFile(filepath.Join(dist, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		if sum, name, ok := strings.Cut(l, "  "); ok {
			rel.checksums[name] = sum
		}
	}
	for name := range rel.checksums {
		switch {
		case strings.HasSuffix(name, "_"+runtime.GOARCH+".deb"):
			rel.deb = name
		case strings.HasSuffix(name, ".rpm"):
			rel.rpm = name
		case name == fmt.Sprintf("berth_%s_linux_%s.tar.gz", rel.version, runtime.GOARCH):
			rel.archive = name
		}
	}
	if rel.deb == "" || rel.rpm == "" || rel.archive == "" {
		t.Fatalf("checksums.txt does not list a .deb, an .rpm and berth_%s_linux_%s.tar.gz:\n%s", rel.version, runtime.GOARCH, sums)
	}
	t.Logf("built %s, %s, %s (version %s)", rel.deb, rel.rpm, rel.archive, rel.version)

	// The archive carries what install.sh and operators need.
	list, err := run(t, dist, time.Minute, "tar", "-tzf", rel.archive)
	if err != nil {
		t.Fatalf("tar -tzf %s: %v\n%s", rel.archive, err, list)
	}
	top := strings.TrimSuffix(rel.archive, ".tar.gz") + "/"
	for _, f := range []string{"agentd", "agentctl", "README.md", "docs/agentd.md", "systemd/agentd.service", "systemd/agentd.socket", "packaging/agentd.yaml"} {
		if !strings.Contains("\n"+list, "\n"+top+f+"\n") {
			t.Errorf("%s has no %s%s:\n%s", rel.archive, top, f, list)
		}
	}
	return rel
}

// baseImage returns the tag of the Debian base image, building it if needed
// (scripts/base-image.sh caches it by tag).
func baseImage(t *testing.T, root string) string {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(t.Context(), filepath.Join(root, "scripts", "base-image.sh"))
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/base-image.sh: %v\n%s", err, stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tag := strings.TrimSpace(lines[len(lines)-1])
	if tag == "" {
		t.Fatalf("scripts/base-image.sh printed no tag:\n%s", stderr.Bytes())
	}
	t.Logf("base image %s (%s)", tag, time.Since(start).Round(time.Second))
	return tag
}

// container is a running container of the base image, removed when the test
// ends.
type container struct{ id string }

// containerGrace is how long a container outlives its test's deadline
// (go test -timeout) when nothing removed it.
const containerGrace = 30 * time.Second

// startContainer starts a container of image that is removed when the test
// ends, and in any case once the test's deadline has passed: a test binary
// that go test kills at its -timeout runs no cleanup, so the container runs
// sleep for no longer than the test may last (plus containerGrace), with
// --rm. Its name is chosen before docker run, so that a docker run cut short
// after it created the container is removed too.
func startContainer(t *testing.T, image string, volumes ...string) *container {
	t.Helper()
	c := &container{id: testenv.UniqueName("berth-packaging")}
	t.Cleanup(func() { removeContainer(t, c.id) })
	args := []string{"run", "-d", "--rm", "--init", "--name", c.id, "--label", containerLabel}
	for _, v := range volumes {
		args = append(args, "-v", v)
	}
	args = append(args, image, "sleep", strconv.Itoa(int(containerLife(t).Seconds())))
	if out, err := run(t, "", 2*time.Minute, "docker", args...); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	return c
}

// containerLabel marks the containers these tests start.
const containerLabel = "org.berth.test=packaging"

// containerLife is how long a container of t may run: until t's deadline
// and containerGrace more, or two hours when go test set none.
func containerLife(t *testing.T) time.Duration {
	if d, ok := t.Deadline(); ok {
		return time.Until(d) + containerGrace
	}
	return 2 * time.Hour
}

// removeContainer removes a container, which may be gone already.
func removeContainer(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "rm", "-f", name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such container") && !strings.Contains(string(out), "is already in progress") {
		t.Errorf("docker rm -f %s: %v\n%s", name, err, out)
	}
}

// sh runs a bash script in the container and returns its combined output
// and exit code (-1 if docker exec itself failed).
func (c *container) sh(script string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "exec", c.id, "bash", "-c", script).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	default:
		return string(out) + err.Error(), -1
	}
}

// must runs script and fails the test unless it exits 0.
func (c *container) must(t *testing.T, script string) string {
	t.Helper()
	out, code := c.sh(script)
	if code != 0 {
		t.Fatalf("in the container: %s\nexit %d:\n%s", script, code, out)
	}
	return out
}

// run runs a command in dir with a timeout and returns its combined output.
func run(t *testing.T, dir string, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}
