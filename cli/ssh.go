package cli

import (
	"strconv"
	"strings"
)

// sshArgs is the part of an ssh command line after "ssh" that reaches t:
// "-p 2222 upload@db.example.com". An unknown host shows as HOST, and the
// port is left out when it is ssh's own default (or unknown).
func (t sshTarget) sshArgs() string {
	var b strings.Builder
	if t.port != 0 && t.port != 22 {
		b.WriteString("-p " + strconv.Itoa(t.port) + " ")
	}
	b.WriteString(t.login())
	return b.String()
}

// scpPort is scp's option for t's port ("-P 2222 "), or nothing.
func (t sshTarget) scpPort() string {
	if t.port != 0 && t.port != 22 {
		return "-P " + strconv.Itoa(t.port) + " "
	}
	return ""
}

// scpDest is scp's destination for dir on t: "upload@db.example.com:/dir/".
func (t sshTarget) scpDest(dir string) string {
	login := t.login()
	if strings.Contains(t.host, ":") {
		// scp would read an IPv6 address's colons as the path separator.
		login = strings.TrimSuffix(login, t.host) + "[" + t.host + "]"
	}
	return login + ":" + dir
}

func (t sshTarget) login() string {
	host := t.host
	if host == "" {
		host = "HOST"
	}
	if t.user == "" {
		return host
	}
	return t.user + "@" + host
}

// uploadTarget is where the upload principal sends backups: in SSH
// sessions this server, elsewhere DRAUPNIR_SSH or its defaults. When
// neither names a host, the host shows as HOST.
func (a *app) uploadTarget() sshTarget {
	if a.env.SSH {
		return sshTarget{user: "upload", host: a.env.Host, port: a.env.SSHPort}
	}
	t, err := parseSSHTarget(getenv(a.env)("DRAUPNIR_SSH"), a.env.Host)
	if err != nil {
		return sshTarget{user: "upload", port: DefaultSSHPort}
	}
	return t
}
