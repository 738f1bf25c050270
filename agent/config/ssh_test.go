package config

import (
	"strings"
	"testing"
	"time"
)

func TestSSHCommandLimits(t *testing.T) {
	dir := t.TempDir()
	c, err := Load(write(t, dir, "agentd.yaml", "ssh:\n  listen: 127.0.0.1:2222\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.SSH.MaxCommandBytes != 4096 || c.SSH.StdinTimeout != 30*time.Second {
		t.Errorf("defaults: max_command_bytes %d, stdin_timeout %s", c.SSH.MaxCommandBytes, c.SSH.StdinTimeout)
	}
	if n, d := c.CommandLimits(); n != 4096 || d != 30*time.Second {
		t.Errorf("CommandLimits() = %d, %s", n, d)
	}
	// Without an ssh section, agentctl ssh-command still runs commands:
	// the defaults hold.
	none := &Config{}
	if n, d := none.CommandLimits(); n != DefaultMaxCommandBytes || d != DefaultStdinTimeout {
		t.Errorf("CommandLimits() without ssh = %d, %s", n, d)
	}

	c, err = Load(write(t, dir, "bad.yaml", "ssh:\n  listen: 127.0.0.1:2222\n  max_command_bytes: 100000\n  stdin_timeout: -1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	for _, want := range []string{"ssh.max_command_bytes 100000: want 256 to 65536", "ssh.stdin_timeout -1s: must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("problems %v do not include %q", err, want)
		}
	}
}
