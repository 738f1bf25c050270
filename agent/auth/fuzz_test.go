package auth

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-deploy/berth/agent/config"
	"golang.org/x/crypto/ssh"
)

const fuzzKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILtjzoBBff9vS9ZnYo3WjC5RXuSufoPZPhFeJBL54yex"

// FuzzIdentities: an identities section never panics the config's loading
// and validation, and one that validates compiles, with every key found
// again for the identity that holds it, and nothing allowed on an empty
// project but status.
func FuzzIdentities(f *testing.F) {
	for _, s := range []string{
		"- name: ci\n  ssh_keys: ['" + fuzzKey + "']\n  projects: [shop]\n  verbs: [deploy, status]\n",
		"- name: ops\n  ssh_keys: ['from=\"127.0.0.0/8\" " + fuzzKey + "']\n  projects: ['*']\n  verbs: ['*']\n",
		"- name: ci\n  ssh_keys: ['command=\"sh\" " + fuzzKey + "']\n  projects: [shop]\n  verbs: [deploy]\n",
		"- name: ci\n  ssh_keys: ['no-port-forwardin " + fuzzKey + "']\n  projects: [shop]\n  verbs: [deploy]\n",
		"- name: a\n  ssh_keys: ['" + fuzzKey + "']\n  projects: [shop]\n  verbs: [deploy]\n- name: b\n  ssh_keys: ['" + fuzzKey + "']\n  projects: [shop]\n  verbs: [deploy]\n",
		"- name: ci\n  local_users: [root]\n  projects: [nope]\n  verbs: [reboot]\n",
		"- {}\n",
		"{}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, identities string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services: {}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "agentd.yaml")
		body := "state_dir: " + dir + "\nprojects:\n  shop:\n    compose_file: compose.yaml\nidentities:\n" + identities
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil || cfg.Validate() != nil {
			return
		}
		ids, err := New(cfg.Identities)
		if err != nil {
			t.Fatalf("a validated config does not compile: %v\n%s", err, identities)
		}
		for _, id := range cfg.Identities {
			for _, line := range id.SSHKeys {
				key, from, err := config.ParseKey(line)
				if err != nil {
					t.Fatalf("identity %s: a validated key does not parse: %v", id.Name, err)
				}
				if name, gotFrom, ok := ids.ByKey(key); !ok || name != id.Name || gotFrom != from {
					t.Fatalf("key %s of %s: ByKey = %q %q %v", ssh.FingerprintSHA256(key), id.Name, name, gotFrom, ok)
				}
			}
			for _, verb := range config.Verbs {
				if verb != "status" && ids.Allowed(id.Name, "", verb) {
					t.Fatalf("identity %s may %s an empty project", id.Name, verb)
				}
			}
		}
	})
}
