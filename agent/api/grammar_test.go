package api

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	c, err := ParseCommand(strings.Fields("deploy shop --image web=reg/web@sha256:abc --image worker=reg/w:1 --env-file - -m release --wait 1m --timeout 5m --json"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Verb != VerbDeploy || c.Project != "shop" || !c.JSON || !c.EnvFromStdin || c.Deploy.Images["web"] != "reg/web@sha256:abc" ||
		c.Deploy.Images["worker"] != "reg/w:1" || c.Deploy.Message != "release" || c.Deploy.Wait != time.Minute || c.Deploy.Timeout != 5*time.Minute {
		t.Errorf("deploy parsed as %+v", c)
	}
	if c.ComposeFromStdin || c.Deploy.Source != "" || c.Deploy.DryRun {
		t.Errorf("deploy without --compose-file, --source, --dry-run parsed as %+v", c)
	}
	c, err = ParseCommand(strings.Fields("deploy shop --compose-file - --env-file - --source 0123abcdef0123abcdef0123abcdef0123abcdef --dry-run"))
	if err != nil || !c.ComposeFromStdin || !c.EnvFromStdin || c.Deploy.Source != "0123abcdef0123abcdef0123abcdef0123abcdef" || !c.Deploy.DryRun {
		t.Errorf("deploy --compose-file - --source SHA --dry-run parsed as %+v, %v", c, err)
	}
	for _, ref := range []string{"refs/tags/v1.2.3", "main@3f2c1a0", "v1+build:7", "a", strings.Repeat("f", 128)} {
		if c, err := ParseCommand([]string{"deploy", "shop", "--source=" + ref}); err != nil || c.Deploy.Source != ref {
			t.Errorf("--source %s: %+v %v", ref, c.Deploy, err)
		}
	}
	if c, err := ParseCommand([]string{"rollback", "shop", "--to", "3"}); err != nil || c.Rollback.To != 3 || c.Rollback.Project != "shop" {
		t.Errorf("rollback: %+v %v", c, err)
	}
	if c, err := ParseCommand([]string{"status"}); err != nil || c.Project != "" {
		t.Errorf("status: %+v %v", c, err)
	}
	if c, err := ParseCommand([]string{"unlock", "shop"}); err != nil || !c.Lock.Unlock {
		t.Errorf("unlock: %+v %v", c, err)
	}
	for _, bad := range [][]string{
		nil,
		{"shell"},
		{"deploy"},
		{"deploy", "a", "b"},
		{"deploy", "shop", "--image", "web"},
		{"deploy", "shop", "--image", "web=a", "--image", "web=b"},
		{"deploy", "shop", "--env-file", "/etc/passwd"},
		{"deploy", "shop", "--privileged"},
		{"history"},
		{"lock", "shop"},
		{"rollback", "shop", "--to", "x"},
		// A project is named as the config names them: not '', not a
		// path, no control characters.
		{"deploy", ""},
		{"status", ""},
		{"history", "../shop"},
		{"deploy", "Shop"},
		{"deploy", "shop\nreboot"},
		{"deploy", "shop", "--image", "web=reg/web:1\n"},
		{"deploy", "shop", "--image", "web=reg/web 1"},
		{"lock", "shop", "-m", "line one\nagentd: forged"},
		{"lock", "shop", "-m", "\x1b[2Jcleared"},
		{"deploy", "shop", "--timeout", "-1m"},
		{"rollback", "shop", "--wait", "-1s"},
		{"rollback", "shop", "--to", "-1"},
		// The compose files come on standard input, never from a path
		// on the host; --source is a ref, not free text.
		{"deploy", "shop", "--compose-file", "compose.yaml"},
		{"deploy", "shop", "--compose-file", "/srv/shop/compose.yaml"},
		{"deploy", "shop", "--compose-file="},
		{"deploy", "shop", "--compose-file"},
		{"deploy", "shop", "--source="},
		{"deploy", "shop", "--source", "main branch"},
		{"deploy", "shop", "--source", "abc\nagentd: forged"},
		{"deploy", "shop", "--source", "$(id)"},
		{"deploy", "shop", "--source", strings.Repeat("f", 129)},
		{"deploy", "shop", "--dry-run=maybe"},
		{"rollback", "shop", "--dry-run"},
		{"rollback", "shop", "--compose-file", "-"},
		{"status", "shop", "--source", "abc"},
	} {
		if _, err := ParseCommand(bad); !errors.Is(err, ErrUsage) {
			t.Errorf("%q: err = %v, want ErrUsage", bad, err)
		}
	}
}
