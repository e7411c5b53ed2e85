package sshd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// FileKeys maps public keys to principals from two OpenSSH authorized_keys
// files: every key of the upload file authenticates the upload principal;
// every key of the user file authenticates the user its comment names
// ("ssh-ed25519 AAAA… alice@example.com") or its draupnir-user="…" option
// names. The files are read again when they change, so keys can be revoked
// without a restart; a file that no longer parses refuses every key until it
// is fixed (failing closed).
type FileKeys struct {
	uploadPath, userPath string

	mu     sync.Mutex
	stamps [2]fileStamp
	keys   map[string]draupnir.Principal
	err    error // the last reload's error
}

type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
}

// allowedKeyOptions are the authorized_keys options that are accepted: the
// restrictions are what the server enforces anyway. Any other option (from=,
// command=, …) would be silently ignored, so it is an error.
var allowedKeyOptions = map[string]bool{
	"restrict": true, "no-pty": true, "no-port-forwarding": true, "no-agent-forwarding": true,
	"no-x11-forwarding": true, "no-user-rc": true,
}

// LoadFileKeys reads the upload and user authorized_keys files; an empty path
// means no such keys. Errors name the file and line at fault.
func LoadFileKeys(uploadKeysPath, userKeysPath string) (*FileKeys, error) {
	k := &FileKeys{uploadPath: uploadKeysPath, userPath: userKeysPath}
	if err := k.reload(true); err != nil {
		return nil, err
	}
	return k, nil
}

// PrincipalForKey returns the principal of key, or a KindUnauthorized error.
func (k *FileKeys) PrincipalForKey(ctx context.Context, key gossh.PublicKey) (draupnir.Principal, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.reload(false); err != nil {
		return draupnir.Principal{}, err
	}
	p, ok := k.keys[string(key.Marshal())]
	if !ok {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown public key %s", gossh.FingerprintSHA256(key))
	}
	return p, nil
}

// reload parses the files again if they changed (or if force is set).
func (k *FileKeys) reload(force bool) error {
	var stamps [2]fileStamp
	for i, p := range []string{k.uploadPath, k.userPath} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			k.err = fmt.Errorf("authorized keys: %w", err)
			return k.err
		}
		stamps[i] = fileStamp{mtime: fi.ModTime(), size: fi.Size()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			stamps[i].ino = st.Ino
		}
	}
	if !force && stamps == k.stamps && k.keys != nil {
		return k.err
	}
	keys := map[string]draupnir.Principal{}
	err := errors.Join(
		parseKeysFile(k.uploadPath, true, keys),
		parseKeysFile(k.userPath, false, keys),
	)
	k.stamps = stamps
	k.err = err
	if err != nil {
		k.keys = map[string]draupnir.Principal{}
		return err
	}
	k.keys = keys
	return nil
}

// parseKeysFile adds the keys of the authorized_keys file at path to keys.
func parseKeysFile(path string, upload bool, keys map[string]draupnir.Principal) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("authorized keys: %w", err)
	}
	for i, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		p, key, err := parseKeyLine(line, upload)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		id := string(key.Marshal())
		if old, ok := keys[id]; ok && old != p {
			return fmt.Errorf("%s:%d: key %s is already registered for %q", path, i+1, gossh.FingerprintSHA256(key), old.Name)
		}
		keys[id] = p
	}
	return nil
}

func parseKeyLine(line []byte, upload bool) (draupnir.Principal, gossh.PublicKey, error) {
	key, comment, options, rest, err := gossh.ParseAuthorizedKey(line)
	if err != nil {
		return draupnir.Principal{}, nil, fmt.Errorf("not an authorized_keys line: %w", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return draupnir.Principal{}, nil, errors.New("one key per line")
	}
	user := ""
	for _, o := range options {
		name, value, hasValue := strings.Cut(o, "=")
		switch {
		case strings.EqualFold(name, "draupnir-user") && hasValue && !upload:
			user = strings.Trim(value, `"`)
			if user == "" {
				return draupnir.Principal{}, nil, errors.New(`empty draupnir-user="…" option`)
			}
		case allowedKeyOptions[strings.ToLower(name)] && !hasValue:
		default:
			return draupnir.Principal{}, nil, fmt.Errorf("option %q is not supported here", o)
		}
	}
	if upload {
		return draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, key, nil
	}
	if user == "" {
		user = strings.TrimSpace(comment)
		if user == "" {
			return draupnir.Principal{}, nil, errors.New(`key names no user: end the line with the user's email or add draupnir-user="…"`)
		}
		if strings.IndexFunc(user, unicode.IsSpace) >= 0 {
			return draupnir.Principal{}, nil, fmt.Errorf(`comment %q is not a user name: use draupnir-user="…" to name the user`, user)
		}
	}
	if err := validUserName(user); err != nil {
		return draupnir.Principal{}, nil, err
	}
	return draupnir.Principal{Name: user}, key, nil
}

func validUserName(user string) error {
	if strings.EqualFold(user, draupnir.UploadPrincipal) {
		return fmt.Errorf("user name %q is reserved for the upload principal (use the upload keys file)", user)
	}
	if len(user) > 254 || strings.IndexFunc(user, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("invalid user name %q", user)
	}
	return nil
}
