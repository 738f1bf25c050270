package sshd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestLoadOrCreateHostKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ssh")
	path := filepath.Join(dir, "ssh_host_ed25519_key")

	first, err := LoadOrCreateHostKey(path)
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	if got := first.PublicKey().Type(); got != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s, want %s", got, ssh.KeyAlgoED25519)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", p, st.Mode().Perm(), want)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".host-key-*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	second, err := LoadOrCreateHostKey(path)
	if err != nil {
		t.Fatalf("second start: %v", err)
	}
	if !bytes.Equal(first.PublicKey().Marshal(), second.PublicKey().Marshal()) {
		t.Error("the second start made a new key")
	}

	// OpenSSH reads the file as a private key with the same public key.
	out, err := exec.Command("ssh-keygen", "-y", "-f", path).Output()
	if err != nil {
		t.Fatalf("ssh-keygen -y: %v", err)
	}
	if got, want := strings.Fields(string(out))[1], strings.Fields(string(ssh.MarshalAuthorizedKey(first.PublicKey())))[1]; got != want {
		t.Errorf("ssh-keygen -y: %s, want %s", got, want)
	}
}

func TestLoadHostKeyRefusesReadableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if _, err := LoadOrCreateHostKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateHostKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("err = %v, want a refusal that says chmod 600", err)
	}
}

func TestLoadHostKeyRefusesGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateHostKey(path); err == nil || !strings.HasPrefix(err.Error(), "parse host key") {
		t.Errorf("err = %v, want parse host key ...", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "not a key\n" {
		t.Error("the file was overwritten")
	}
}

func TestKnownHostsLine(t *testing.T) {
	signer, err := LoadOrCreateHostKey(filepath.Join(t.TempDir(), "key"))
	if err != nil {
		t.Fatal(err)
	}
	pub := signer.PublicKey()
	b64 := strings.Fields(string(ssh.MarshalAuthorizedKey(pub)))[1]
	for _, tc := range []struct {
		host string
		port int
		want string
	}{
		{"deploy.example.com", 2222, "[deploy.example.com]:2222 ssh-ed25519 " + b64},
		{"deploy.example.com", 22, "deploy.example.com ssh-ed25519 " + b64},
		{"192.0.2.7", 2222, "[192.0.2.7]:2222 ssh-ed25519 " + b64},
		{"2001:db8::7", 2222, "[2001:db8::7]:2222 ssh-ed25519 " + b64},
		{"2001:db8::7", 22, "2001:db8::7 ssh-ed25519 " + b64},
	} {
		if got := KnownHostsLine(pub, tc.host, tc.port); got != tc.want {
			t.Errorf("KnownHostsLine(%s, %d) = %q, want %q", tc.host, tc.port, got, tc.want)
		}
	}
}
