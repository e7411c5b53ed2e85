package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	gossh "golang.org/x/crypto/ssh"
)

// loadOrCreateHostKey reads the host key at path, creating an ed25519 key
// (0600, OpenSSH format) if there is none. Creation is atomic: a concurrent
// creator's key wins and is read back.
func loadOrCreateHostKey(path string) (gossh.Signer, error) {
	data, err := readHostKey(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := createHostKey(path); err != nil {
			return nil, err
		}
		data, err = readHostKey(path)
	}
	if err != nil {
		return nil, err
	}
	signer, err := gossh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("ssh host key %s: %w", path, err)
	}
	return signer, nil
}

func readHostKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ssh host key %s is accessible by others (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	return data, nil
}

func createHostKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generating ssh host key: %w", err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "draupnir host key")
	if err != nil {
		return fmt.Errorf("encoding ssh host key: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating ssh host key directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".host_key-*")
	if err != nil {
		return fmt.Errorf("creating ssh host key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600.
	if _, err := tmp.Write(pem.EncodeToMemory(block)); err != nil {
		tmp.Close()
		return fmt.Errorf("writing ssh host key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing ssh host key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing ssh host key: %w", err)
	}
	// Link fails if another process created the key meanwhile: keep theirs.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("installing ssh host key: %w", err)
	}
	return nil
}
