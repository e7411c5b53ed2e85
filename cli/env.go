package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
)

// sshCADir is where the snippet printed in SSH sessions writes CA files on
// the client: the client's cache dir, expanded by the client's shell.
const sshCADir = `${XDG_CACHE_HOME:-$HOME/.cache}/draupnir`

func (a *app) envCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "env N",
		Short: "Print the shell settings (PGHOST, PGPORT…, DATABASE_URL) that connect to instance N",
		Long: `Print export lines for PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE (and,
for instances with TLS, PGSSLMODE=verify-full and PGSSLROOTCERT) so that psql
and other libpq programs connect to instance N, and DATABASE_URL, the same as
one postgresql:// URI, for application frameworks:

  ` + a.evalExample("env N") + `

When it fails, it prints the error on stderr and, for eval, a command that
fails (false), so that the line above stops before psql.` + a.envCANote(),
		Annotations: map[string]string{annEvalOutput: "true"},
		Args:        exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(cmd, "instance id", args[0])
			if err != nil {
				return err
			}
			inst, err := a.b.Instances.Get(cmd.Context(), a.b.Principal, id)
			if err != nil {
				return err
			}
			return a.printEnv(inst)
		},
	}
}

func (a *app) envCANote() string {
	if a.env.SSH {
		return `

The output writes the instance's CA certificate into ` + sshCADir + `
on your machine (mode 0600) when it is evaluated.`
	}
	return `

The instance's CA certificate is written (mode 0600) into your cache directory.`
}

// envVar is one exported variable; raw values are already shell syntax.
type envVar struct {
	name, value string
	raw         bool
}

func (a *app) printEnv(inst *draupnir.Instance) error {
	host := inst.Hostname
	if host == "" {
		host = a.env.Host
	}
	vars := []envVar{
		{name: "PGHOST", value: host},
		{name: "PGPORT", value: strconv.Itoa(inst.Port)},
		{name: "PGUSER", value: inst.Username},
		{name: "PGPASSWORD", value: inst.Password},
		{name: "PGDATABASE", value: inst.Database},
	}
	uri := connURI(host, inst.Port, inst.Username, inst.Password, inst.Database)
	url := envVar{name: "DATABASE_URL", value: uri}
	var pre string // shell commands that must run before the exports
	if inst.CACertificate != "" {
		name := "instance-" + strconv.FormatInt(inst.ID, 10) + "-ca.pem"
		if a.env.SSH {
			pre = caSnippet(sshCADir, name, inst.CACertificate)
			// The client's shell expands the path: it cannot be
			// percent-encoded here, and libpq takes it as it is.
			url = envVar{name: url.name, raw: true,
				value: `"` + uri + "?sslmode=verify-full&sslrootcert=" + sshCADir + "/" + name + `"`}
			vars = append(vars,
				envVar{name: "PGSSLMODE", value: "verify-full"},
				envVar{name: "PGSSLROOTCERT", value: `"` + sshCADir + "/" + name + `"`, raw: true})
		} else {
			path, err := a.writeCA(name, inst.CACertificate)
			if err != nil {
				return err
			}
			url.value += "?sslmode=verify-full&sslrootcert=" + uriEscape(path)
			vars = append(vars,
				envVar{name: "PGSSLMODE", value: "verify-full"},
				envVar{name: "PGSSLROOTCERT", value: path})
		}
	}
	vars = append(vars, url)
	if a.json {
		m := make(map[string]string, len(vars))
		for _, v := range vars {
			m[v.name] = v.value
		}
		if pre != "" {
			// No file is written over SSH: give the certificate itself.
			delete(m, "PGSSLROOTCERT")
			delete(m, "DATABASE_URL")
			m["ca_certificate"] = inst.CACertificate
		}
		return writeJSON(a.stdout, m)
	}
	var b strings.Builder
	b.WriteString(pre)
	b.WriteString("export")
	for _, v := range vars {
		b.WriteByte(' ')
		b.WriteString(v.name)
		b.WriteByte('=')
		if v.raw {
			b.WriteString(v.value)
		} else {
			b.WriteString(ShellQuote(v.value))
		}
	}
	b.WriteByte('\n')
	_, err := fmt.Fprint(a.stdout, b.String())
	return err
}

// connURI is the libpq connection URI (postgresql://, which every
// framework's parser accepts) of a server, without parameters.
func connURI(host string, port int, user, password, db string) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // an IPv6 address
	} else {
		host = uriEscape(host)
	}
	return "postgresql://" + uriEscape(user) + ":" + uriEscape(password) + "@" + host + ":" +
		strconv.Itoa(port) + "/" + uriEscape(db)
}

// uriEscape percent-encodes every byte of s but RFC 3986's unreserved
// characters, so that the result is one literal component anywhere in a
// URI (user, password, path or query value) and never special to a shell.
func uriEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// caSnippet returns shell commands that write pem into dir/name with umask
// 077. It uses printf with one quoted word per line rather than a
// here-document, and ends each command with ';', so that it survives both
// eval "$(…)" and the unquoted eval $(…) that the original documents: the
// latter joins all lines into one, which a here-document cannot survive.
func caSnippet(dir, name, pem string) string {
	var b strings.Builder
	b.WriteString(`(umask 077 && mkdir -p "` + dir + `" && printf '%s\n'`)
	for _, line := range strings.Split(strings.TrimRight(pem, "\n"), "\n") {
		b.WriteByte(' ')
		b.WriteString(ShellQuote(strings.TrimRight(line, "\r")))
	}
	b.WriteString(` > "` + dir + "/" + name + `") || echo "draupnir: could not write the CA certificate" >&2;` + "\n")
	return b.String()
}

// writeCA writes the CA certificate into the user's cache dir (0600) and
// returns its path.
func (a *app) writeCA(name, pem string) (string, error) {
	dir := a.env.CacheDir
	if dir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("finding a cache directory for the instance's CA certificate: %w", err)
		}
		dir = d
	}
	dir = filepath.Join(dir, "draupnir")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating %s for the instance's CA certificate: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	if err := writeFileAtomic(path, []byte(pem), 0o600); err != nil {
		return "", fmt.Errorf("writing the instance's CA certificate: %w", err)
	}
	return path, nil
}

// writeFileAtomic writes data into a new file next to path and renames it
// into place, so that readers never see half a file and an existing file
// with looser permissions is replaced, not reused.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this fails harmlessly
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ShellQuote quotes s as one word for POSIX shells (sh, bash, zsh, dash). Words
// made only of characters that are never special are left bare; anything
// else is put in single quotes, inside which every byte is literal; a single
// quote in s closes the quotes, is written escaped, and reopens them. The
// empty string becomes a pair of single quotes.
func ShellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		if !isShellSafe(s[i]) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			b.WriteString(`'\''`)
			continue
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('\'')
	return b.String()
}

// isShellSafe reports whether c needs no quoting anywhere in a word. '=' is
// safe after the first character only in assignments, and '~' and '#' are
// special at the start of a word, so all three are quoted.
func isShellSafe(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '_', '-', '.', '/', ':', ',', '+', '@', '%':
		return true
	}
	return false
}
