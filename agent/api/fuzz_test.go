package api

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// Seeds for the command grammar: commands CI sends, and what an attacker
// tried.
var commandSeeds = []string{
	"status",
	"status shop --json",
	"deploy shop --image web=registry.example.com/shop/web@sha256:0123 --env-file - -m 'from CI' --wait 1m --timeout 10m",
	"deploy shop --image=web=reg/web:v2 --image worker=reg/worker:v2 --json",
	"deploy shop --image web=reg/web@sha256:0123 --compose-file - --env-file - --source 0123456789abcdef0123456789abcdef01234567 -m 'from CI'",
	"deploy shop --compose-file - --dry-run --source=refs/tags/v1.2+build:7",
	"deploy shop --compose-file /srv/shop/compose.yaml",
	"deploy shop --compose-file=",
	"deploy shop --source ''",
	"deploy shop --source 'main; reboot'",
	"deploy shop --dry-run=false --source=a@b",
	"rollback shop --to 3 --message \"bad release\"",
	"history shop",
	"lock shop --message 'maintenance window'",
	"unlock shop",
	"deploy shop; reboot",
	"deploy `id`",
	"deploy $(id)",
	"status\nreboot",
	"deploy ''",
	"deploy shop --env-file /etc/shadow",
	"lock shop -m \"$HOME\"",
	"deploy sh\\\nop",
	"deploy 'sh\nop'",
	"lock shop -m 'a\x1b[2Jb'",
	"deploy shop --timeout -1s",
	"rollback shop --to -2",
	"deploy shop -- --json",
	"status # comment",
	"\"",
	"'",
	"\\",
}

// FuzzSplitCommand: the splitter never panics, never lets an unquoted
// shell metacharacter or newline through, and what it accepts splits the
// same way again once re-quoted.
func FuzzSplitCommand(f *testing.F) {
	for _, s := range commandSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		words, err := SplitCommand(line)
		if err != nil {
			return
		}
		if unquotedMeta(line) {
			t.Fatalf("SplitCommand(%q) accepted an unquoted metacharacter or newline: %q", line, words)
		}
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
		again, err := SplitCommand(strings.Join(quoted, " "))
		if err != nil || !slices.Equal(again, words) {
			t.Fatalf("%q re-quoted splits as %q, %v; want %q", line, again, err, words)
		}
	})
}

// unquotedMeta reports whether line has, outside quotes and not after a
// backslash, a character a shell would interpret.
func unquotedMeta(line string) bool {
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\':
			i++
			inWord = true
		case c == '\'':
			i += strings.IndexByte(line[i+1:], '\'') + 1
			inWord = true
		case c == '"':
			for i++; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' {
					i++
				}
			}
			inWord = true
		case c == ' ' || c == '\t':
			inWord = false
		case strings.IndexByte(";&|<>()$`\n\r", c) >= 0, c == '#' && !inWord:
			return true
		default:
			inWord = true
		}
	}
	return false
}

// FuzzParseCommand: a command line that splits and parses gives a
// command of a known verb whose fields are plain (a project name, no
// control characters, nothing negative), and which parses to the same
// command again from its canonical words.
func FuzzParseCommand(f *testing.F) {
	for _, s := range commandSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		words, err := SplitCommand(line)
		if err != nil {
			return
		}
		c, err := ParseCommand(words)
		if err != nil {
			if !errors.Is(err, ErrUsage) {
				t.Fatalf("ParseCommand(%q): %v is not ErrUsage", words, err)
			}
			return
		}
		if !slices.Contains([]string{VerbDeploy, VerbRollback, VerbStatus, VerbHistory, VerbLock, VerbUnlock}, c.Verb) {
			t.Fatalf("%q: verb %q", words, c.Verb)
		}
		if c.Project == "" && c.Verb != VerbStatus || c.Project != "" && !projectName.MatchString(c.Project) {
			t.Fatalf("%q: project %q", words, c.Project)
		}
		plain := func(s string) bool {
			return !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) })
		}
		for svc, ref := range c.Deploy.Images {
			if !plain(svc) || !plain(ref) || strings.ContainsAny(svc+ref, " \t") || svc == "" || ref == "" {
				t.Fatalf("%q: image %q=%q", words, svc, ref)
			}
		}
		for _, m := range []string{c.Deploy.Message, c.Rollback.Message, c.Lock.Message} {
			if !plain(m) {
				t.Fatalf("%q: message %q", words, m)
			}
		}
		if c.Deploy.Source != "" && !sourcePattern.MatchString(c.Deploy.Source) {
			t.Fatalf("%q: source %q", words, c.Deploy.Source)
		}
		if c.Verb != VerbDeploy && (c.ComposeFromStdin || c.Deploy.DryRun || c.Deploy.Source != "") {
			t.Fatalf("%q: deploy's flags on %s: %+v", words, c.Verb, c)
		}
		if c.Deploy.Wait < 0 || c.Deploy.Timeout < 0 || c.Rollback.Wait < 0 || c.Rollback.Timeout < 0 || c.Rollback.To < 0 {
			t.Fatalf("%q: negative wait, timeout or release: %+v", words, c)
		}
		again, err := ParseCommand(canonical(c))
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("%q parsed as %+v; its canonical words %q parse as %+v, %v", words, c, canonical(c), again, err)
		}
	})
}

// canonical renders a command back into words of the grammar.
func canonical(c Command) []string {
	w := []string{c.Verb}
	if c.Project != "" {
		w = append(w, c.Project)
	}
	flag := func(name, value string) { w = append(w, "--"+name+"="+value) }
	switch c.Verb {
	case VerbDeploy:
		for _, svc := range slices.Sorted(maps.Keys(c.Deploy.Images)) {
			flag("image", svc+"="+c.Deploy.Images[svc])
		}
		if c.EnvFromStdin {
			flag("env-file", "-")
		}
		if c.ComposeFromStdin {
			flag("compose-file", "-")
		}
		if c.Deploy.Source != "" {
			flag("source", c.Deploy.Source)
		}
		flag("dry-run", strconv.FormatBool(c.Deploy.DryRun))
		flag("message", c.Deploy.Message)
		flag("wait", c.Deploy.Wait.String())
		flag("timeout", c.Deploy.Timeout.String())
	case VerbRollback:
		flag("to", strconv.Itoa(c.Rollback.To))
		flag("message", c.Rollback.Message)
		flag("wait", c.Rollback.Wait.String())
		flag("timeout", c.Rollback.Timeout.String())
	case VerbLock:
		flag("message", c.Lock.Message)
	}
	if c.JSON {
		w = append(w, "--json")
	}
	return w
}
