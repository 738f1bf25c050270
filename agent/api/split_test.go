package api

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"", nil},
		{"  \t ", nil},
		{"status", []string{"status"}},
		{"deploy shop --image web=registry/web@sha256:abc", []string{"deploy", "shop", "--image", "web=registry/web@sha256:abc"}},
		{"  deploy   shop  ", []string{"deploy", "shop"}},
		{`lock shop --message 'two words'`, []string{"lock", "shop", "--message", "two words"}},
		{`lock shop --message "two words"`, []string{"lock", "shop", "--message", "two words"}},
		{`lock shop -m it\'s`, []string{"lock", "shop", "-m", "it's"}},
		{`lock shop -m "say \"hi\" \$5 \\ \x"`, []string{"lock", "shop", "-m", `say "hi" $5 \ \x`}},
		{`lock shop -m 'a;b|c$d'`, []string{"lock", "shop", "-m", "a;b|c$d"}},
		{`lock shop -m ''`, []string{"lock", "shop", "-m", ""}},
		{`lock shop -m a""b`, []string{"lock", "shop", "-m", "ab"}},
		{`lock shop -m fix#12`, []string{"lock", "shop", "-m", "fix#12"}},
		{"deploy \\\nshop", []string{"deploy", "shop"}},
		{`deploy sh'o'p`, []string{"deploy", "shop"}},
		{"a\u00e9b c", []string{"a\u00e9b", "c"}},
	} {
		got, err := SplitCommand(tc.line)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", tc.line, got, err, tc.want)
		}
	}
}

func TestSplitCommandRefusesWhatAShellWouldInterpret(t *testing.T) {
	for _, tc := range []struct{ line, err string }{
		{"deploy shop; reboot", `unquoted ';'`},
		{"status && reboot", `unquoted '&'`},
		{"status | tee x", `unquoted '|'`},
		{"status > x", `unquoted '>'`},
		{"status < x", `unquoted '<'`},
		{"deploy $(id)", `unquoted '$'`},
		{"deploy `id`", "unquoted '`'"},
		{"status # comment", `unquoted '#'`},
		{`lock shop -m "$HOME"`, `'$' inside double quotes`},
		{"lock shop -m \"`id`\"", "'`' inside double quotes"},
		{`lock shop -m 'open`, "unterminated single quote"},
		{`lock shop -m "open`, "unterminated double quote"},
		{`lock shop -m "open\"`, "unterminated double quote"},
		{`status \`, "trailing backslash"},
		{"status\nreboot", "unquoted newline"},
		{"deploy shop\n", "unquoted newline"},
		{"deploy shop\r\nid", "unquoted newline"},
		{"deploy $(reboot)", `unquoted '$'`},
		{"deploy shop`reboot`", "unquoted '`'"},
	} {
		got, err := SplitCommand(tc.line)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("SplitCommand(%q) = %q, %v; want an error with %q", tc.line, got, err, tc.err)
		}
	}
}
