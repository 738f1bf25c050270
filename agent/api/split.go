package api

import (
	"errors"
	"fmt"
	"strings"
)

// SplitCommand splits a command line (an SSH exec request, or
// SSH_ORIGINAL_COMMAND) into words with the quoting
// rules of a POSIX shell, since that is how the client quoted it (OpenSSH
// sends its arguments joined by spaces): blanks separate words, '...' is
// literal, "..." is literal but for \\ \" \$ \` and backslash-newline, and
// a backslash outside quotes keeps the next character literal.
//
// No shell runs, so what a shell would interpret unquoted (; & | < > ( )
// $ ` a newline, and a # starting a word) or expand inside double quotes
// ($ `) is an error rather than a literal: taking "deploy shop; reboot" as
// the words deploy, shop;, reboot would surprise whoever wrote it.
func SplitCommand(line string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool // inside a word, even an empty quoted one
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case c == '\\':
			if i+1 == len(line) {
				return nil, errors.New("trailing backslash")
			}
			i++
			if line[i] != '\n' { // backslash-newline continues the line
				cur.WriteByte(line[i])
				in = true
			}
		case c == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			in = true
		case c == '"':
			n, err := doubleQuoted(line[i+1:], &cur)
			if err != nil {
				return nil, err
			}
			i += n + 1
			in = true
		case c == '\n' || c == '\r':
			// A shell would run what follows as a second command.
			return nil, errors.New("unquoted newline: agentd runs no shell, and one command per session")
		case strings.IndexByte(";&|<>()$`", c) >= 0 || c == '#' && !in:
			return nil, fmt.Errorf("unquoted %q: agentd runs no shell; quote it to mean it literally", c)
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}

// doubleQuoted copies the inside of a double-quoted string at the start
// of s to cur and returns the index of its closing quote in s.
func doubleQuoted(s string, cur *strings.Builder) (int, error) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return i, nil
		case '\\':
			if i+1 < len(s) && strings.IndexByte("\\\"$`\n", s[i+1]) >= 0 {
				i++
				if s[i] != '\n' {
					cur.WriteByte(s[i])
				}
				continue
			}
			cur.WriteByte(c)
		case '$', '`':
			return 0, fmt.Errorf("%q inside double quotes: a shell would expand it and agentd runs none; use single quotes", c)
		default:
			cur.WriteByte(c)
		}
	}
	return 0, errors.New("unterminated double quote")
}
