package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// LoadOrCreateHostKey reads an OpenSSH ed25519 private key at path, or
// creates one (mode 0600, parent dir 0700 if it must be created) on first
// start. Like sshd, it refuses a key file that group or others may read.
func LoadOrCreateHostKey(path string) (ssh.Signer, error) {
	signer, err := loadHostKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return signer, err
	}
	if err := createHostKey(path); err != nil {
		return nil, err
	}
	return loadHostKey(path)
}

func loadHostKey(path string) (ssh.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("read host key %s: group or others may read it (mode %04o): chmod 600 it", path, perm)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("parse host key %s: %w", path, err)
	}
	return signer, nil
}

// createHostKey writes a new ed25519 key to a temporary file and links it
// into place: a link, unlike a rename, fails when path exists, so of two
// agentd starting at once one key wins and both use it.
func createHostKey(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("create host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "berth agentd host key")
	if err != nil {
		return fmt.Errorf("create host key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".host-key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("create host key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(pem.EncodeToMemory(block))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create host key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create host key: %w", err)
	}
	return nil
}

// KnownHostsLine returns the line CI pins with StrictHostKeyChecking=yes,
// e.g. "[deploy.example.com]:2222 ssh-ed25519 AAAA..." (plain
// "host ssh-ed25519 ..." when port is 22).
func KnownHostsLine(pub ssh.PublicKey, host string, port int) string {
	return knownhosts.Line([]string{net.JoinHostPort(host, strconv.Itoa(port))}, pub)
}
