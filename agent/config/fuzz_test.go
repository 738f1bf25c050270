package config

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// A public key for the seeds (its private half is not kept anywhere).
const fuzzKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILtjzoBBff9vS9ZnYo3WjC5RXuSufoPZPhFeJBL54yex"

// FuzzParseKey: an authorized_keys line never panics ParseKey, and a line
// it accepts carries only the options agentd knows: from= (non-empty, and
// returned as the key's patterns) and the harmless no-* ones.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		fuzzKey + " ci@example",
		`from="10.0.0.0/8,!10.9.9.9" ` + fuzzKey,
		`restrict,no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc ` + fuzzKey,
		`command="/bin/sh" ` + fuzzKey,
		`no-port-forwardin ` + fuzzKey,
		`permitopen="127.0.0.1:22" ` + fuzzKey,
		`environment="LD_PRELOAD=/tmp/x.so" ` + fuzzKey,
		`from="" ` + fuzzKey,
		`from ` + fuzzKey,
		`FROM="127.0.0.1",No-Pty ` + fuzzKey,
		`from="a",from="b" ` + fuzzKey,
		`restrict=yes ` + fuzzKey,
		fuzzKey + "\n" + fuzzKey,
		"ssh-ed25519 AAAA",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		key, from, err := ParseKey(line)
		if err != nil {
			return
		}
		if key == nil {
			t.Fatalf("ParseKey(%q): no key and no error", line)
		}
		_, _, options, _, perr := ssh.ParseAuthorizedKey([]byte(line))
		if perr != nil {
			t.Fatalf("ParseKey accepted %q, which x/crypto does not parse: %v", line, perr)
		}
		var froms []string
		for _, o := range options {
			name, value, hasValue := strings.Cut(o, "=")
			switch {
			case strings.EqualFold(name, "from") && hasValue:
				froms = append(froms, strings.Trim(value, `"`))
			case allowedKeyOptions[strings.ToLower(name)] && !hasValue:
			default:
				t.Fatalf("ParseKey(%q) accepted the option %q", line, o)
			}
		}
		if len(froms) > 0 && (from == "" || !slices.Contains(froms, from)) {
			t.Fatalf("ParseKey(%q): from %q, but the line says %q", line, from, froms)
		}
		if len(froms) == 0 && from != "" {
			t.Fatalf("ParseKey(%q): from %q out of nowhere", line, from)
		}
	})
}

// The seeds reach the accepting path: a fuzz target whose seeds all fail
// to parse would prove nothing.
func TestFuzzKeySeedIsAKey(t *testing.T) {
	if _, from, err := ParseKey(`from="10.0.0.0/8" ` + fuzzKey); err != nil || from != "10.0.0.0/8" {
		t.Fatalf("ParseKey of the seed: %q, %v", from, err)
	}
}
