package clip

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 4, ""},
		{"abcd", 4, "abcd"},
		{"abcde", 4, "abcd…(+1 bytes)"},
		{"héllo", 2, "h…(+5 bytes)"}, // é is 2 bytes: not cut in half
		{"héllo", 3, "hé…(+3 bytes)"},
		{"abc", 0, "…(+3 bytes)"},
		{"abc", -1, "…(+3 bytes)"},
	} {
		if got := String(tc.s, tc.n); got != tc.want {
			t.Errorf("String(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
	long := strings.Repeat("é", 100_000)
	got := F(long)
	if !utf8.ValidString(got) || len(got) > Field+len("…(+200000 bytes)") {
		t.Errorf("F of 200,000 bytes: %d bytes, valid UTF-8: %v", len(got), utf8.ValidString(got))
	}
}
