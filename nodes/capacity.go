package nodes

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir/internal/diskspace"
)

// FreeDisk is what may still be written on the filesystem of dir before its
// reserve is reached (never negative).
func FreeDisk(dir string) (int64, error) {
	room, err := diskspace.Of(dir)
	if err != nil {
		return 0, err
	}
	return max(room.Avail(), 0), nil
}

// FreeMemory is the machine's MemAvailable: what new processes can have
// without swapping.
func FreeMemory() (int64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("reading free memory: %w", err)
	}
	return memAvailable(data)
}

func memAvailable(meminfo []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			break
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("reading free memory: no MemAvailable line in /proc/meminfo")
}

// HostPublicKey reads the SSH host key at path (a private key, as sshd
// keeps it) and returns its public half as an authorized_keys line without
// comment or newline: the node's ssh_public_key.
func HostPublicKey(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the ssh host key: %w", err)
	}
	signer, err := gossh.ParsePrivateKey(data)
	if err != nil {
		return "", fmt.Errorf("ssh host key %s: %w", path, err)
	}
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey()))), nil
}
