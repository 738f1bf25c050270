// Package clip cuts strings a caller controls to a bounded size before
// they are logged, so that no client can make agentd write long lines.
package clip

import (
	"strconv"
	"unicode/utf8"
)

// Field is the most bytes a logged field from a caller keeps: a command
// word, a key comment, a user or identity name, a project, a request type.
const Field = 128

// String returns s when it is at most n bytes long; otherwise its first
// bytes, cut on a rune boundary so that at most n remain, followed by a
// mark of how many bytes were cut: "abc…(+1234 bytes)".
func String(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n, 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(+" + strconv.Itoa(len(s)-cut) + " bytes)"
}

// F is String(s, Field).
func F(s string) string { return String(s, Field) }
