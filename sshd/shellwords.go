package sshd

import (
	"errors"
	"strings"
)

// splitCommand splits an SSH command line into words the way a POSIX shell
// would, without any of its expansions: words are separated by blanks,
// 'single quotes' keep everything literally, "double quotes" keep everything
// but \\ \" \$ \` and backslash-newline, and a backslash outside quotes
// escapes the next character. There is no shell behind the server, so
// unquoted operators (| & ; < > ( ) $ `) are errors rather than silently
// literal words. An empty line gives no words.
func splitCommand(line string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool // also true for an empty quoted word such as ''
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch c {
		case ' ', '\t', '\n', '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case '\\':
			if i+1 >= len(line) {
				return nil, errors.New("command line ends with a lone backslash")
			}
			i++
			if line[i] != '\n' { // backslash-newline continues the line
				cur.WriteByte(line[i])
				inWord = true
			}
		case '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unbalanced single quote in command line")
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case '"':
			i++
			closed := false
			for ; i < len(line); i++ {
				d := line[i]
				if d == '"' {
					closed = true
					break
				}
				if d == '\\' && i+1 < len(line) {
					switch line[i+1] {
					case '\\', '"', '$', '`':
						i++
						d = line[i]
					case '\n':
						i++
						continue
					}
				}
				cur.WriteByte(d)
			}
			if !closed {
				return nil, errors.New("unbalanced double quote in command line")
			}
			inWord = true
		case '|', '&', ';', '<', '>', '(', ')', '$', '`':
			return nil, errors.New("shell syntax " + string(c) + " is not supported: the server runs commands directly, without a shell (quote the character to pass it literally)")
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// quoteWord quotes s for a POSIX shell, so that splitCommand(quoteWord(s))
// gives back s; used by tests and fuzzing to check splitCommand.
func quoteWord(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
