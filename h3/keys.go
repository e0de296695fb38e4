package h3

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Key file format: two lines of "name hex", 64 hex digits each, in any order;
// blank lines and lines starting with # are ignored:
//
//	# ProxyNow QUIC keys
//	stateless-reset 3f0c...
//	token 9a41...
const (
	keyNameReset = "stateless-reset"
	keyNameToken = "token"
)

// LoadOrCreateKeys reads the QUIC keys from the file at path, creating it
// with fresh random keys (mode 0600) when it does not exist. created reports
// whether it did. Two processes that race to create the file end up with
// the same keys: the file appears atomically, and the loser reads the
// winner's. Errors name the path (and the line, for a malformed file).
func LoadOrCreateKeys(path string) (keys *Keys, created bool, err error) {
	keys, err = loadKeys(path)
	if err == nil {
		return keys, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	keys = new(Keys)
	if _, err := rand.Read(keys.StatelessReset[:]); err != nil {
		return nil, false, fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if _, err := rand.Read(keys.Token[:]); err != nil {
		return nil, false, fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if err := writeKeysExclusive(path, keys); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Someone else created it meanwhile: use theirs.
			keys, err = loadKeys(path)
			return keys, false, err
		}
		return nil, false, err
	}
	return keys, true, nil
}

func loadKeys(path string) (*Keys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("h3: keys file: %w", err) // *PathError names the path
	}
	var k Keys
	var haveReset, haveToken bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		name, value, ok := strings.Cut(text, " ")
		value = strings.TrimSpace(value)
		if !ok {
			return nil, fmt.Errorf("h3: keys file %s:%d: want \"name hex-value\"", path, line)
		}
		var dst *[32]byte
		switch name {
		case keyNameReset:
			dst, haveReset = &k.StatelessReset, true
		case keyNameToken:
			dst, haveToken = &k.Token, true
		default:
			return nil, fmt.Errorf("h3: keys file %s:%d: unknown key %q (want %q or %q)", path, line, name, keyNameReset, keyNameToken)
		}
		if len(value) != 2*len(dst) {
			return nil, fmt.Errorf("h3: keys file %s:%d: %s must be %d hex digits, not %d", path, line, name, 2*len(dst), len(value))
		}
		if _, err := hex.Decode(dst[:], []byte(value)); err != nil {
			return nil, fmt.Errorf("h3: keys file %s:%d: %s: %w", path, line, name, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if !haveReset || !haveToken {
		return nil, fmt.Errorf("h3: keys file %s: want both %q and %q", path, keyNameReset, keyNameToken)
	}
	return &k, nil
}

// writeKeysExclusive writes keys to a temporary file next to path and links
// it into place, which fails with fs.ErrExist if path appeared meanwhile.
func writeKeysExclusive(path string, k *Keys) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".quic-keys-*")
	if err != nil {
		return fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	content := "# ProxyNow QUIC keys: share this file across restarts and instances behind one address.\n" +
		keyNameReset + " " + hex.EncodeToString(k.StatelessReset[:]) + "\n" +
		keyNameToken + " " + hex.EncodeToString(k.Token[:]) + "\n"
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("h3: keys file %s: %w", path, err)
	}
	return nil
}
