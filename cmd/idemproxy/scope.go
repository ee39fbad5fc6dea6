package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/idemkit/idem/idemhttp"
)

// envScopeSecret holds the scope secret itself (not a file name). The file
// form is IDEMPROXY_SCOPE_SECRET_FILE, the variable of -scope-secret-file.
const envScopeSecret = envPrefix + "SCOPE_SECRET"

// scopeSecretSuffix names the secret a file: store generates beside its
// database when none is given.
const scopeSecretSuffix = ".scope-secret"

// resolveScopeSecret reads the scope secret given by -scope-secret-file,
// its variable IDEMPROXY_SCOPE_SECRET_FILE, IDEMPROXY_SCOPE_SECRET (the
// secret itself) or the config's scope_secret_file, in that order of
// precedence, into o.scopeSecret. fileSet says whether -scope-secret-file
// came from the command line or its variable. A shared store (Redis,
// PostgreSQL) without a secret is an error: every instance must compute
// the same scope. file: and memory: stores get one in serve.
func (o *options) resolveScopeSecret(fileSet bool) error {
	env, envOK := lookupEnv(envScopeSecret)
	_, envFileOK := lookupEnv(envName("scope-secret-file"))
	switch {
	case envOK && envFileOK:
		return fmt.Errorf("%s and %s: give one of them", envScopeSecret, envName("scope-secret-file"))
	case fileSet || !envOK && o.cfg != nil && o.cfg.ScopeSecretFile != "":
		if !fileSet {
			o.scopeSecretFile = o.cfg.ScopeSecretFile
		}
		b, err := os.ReadFile(o.scopeSecretFile)
		if err != nil {
			return fmt.Errorf("-scope-secret-file: %v", err)
		}
		s, err := checkScopeSecret(b)
		if err != nil {
			return fmt.Errorf("-scope-secret-file %s: %v", o.scopeSecretFile, err)
		}
		o.scopeSecret, o.scopeSecretFrom = s, "-scope-secret-file"
	case envOK:
		s, err := checkScopeSecret([]byte(env))
		if err != nil {
			return fmt.Errorf("%s: %v", envScopeSecret, err)
		}
		o.scopeSecret, o.scopeSecretFrom = s, envScopeSecret
	}
	if o.scopeSecret != nil {
		return nil
	}
	if spec, err := parseStoreURL(o.store); err == nil && spec.kind != storeMemory && spec.kind != storeFile {
		return fmt.Errorf("-scope-secret-file: required with a shared store (%s): every instance must derive the same "+
			"scope from the same caller; write a secret of at least 16 bytes to a file "+
			"(head -c 32 /dev/urandom | base64 > scope-secret) and pass -scope-secret-file FILE "+
			"(or %s=FILE, %s=SECRET, or scope_secret_file in -config)",
			redact(o.store), envName("scope-secret-file"), envScopeSecret)
	}
	return nil
}

// checkScopeSecret trims surrounding white space (a trailing newline) and
// requires at least idemhttp.MinScopeSecret bytes.
func checkScopeSecret(b []byte) ([]byte, error) {
	s := []byte(strings.TrimSpace(string(b)))
	switch {
	case len(s) == 0:
		return nil, errors.New("the secret is empty")
	case len(s) < idemhttp.MinScopeSecret:
		return nil, fmt.Errorf("the secret is %d bytes; at least %d are required (32 random bytes recommended)", len(s), idemhttp.MinScopeSecret)
	}
	return s, nil
}

// storeScopeSecret returns the scope secret for spec: the one given
// (o.scopeSecret), else for a file: store the secret kept beside its
// database (PATH.scope-secret, created with 32 random bytes, hex, mode 0600
// on first use), else for memory: a random per-process secret (the records
// die with the process anyway).
func storeScopeSecret(o *options, spec storeSpec, log *slog.Logger) ([]byte, error) {
	if o.scopeSecret != nil {
		log.Info("scope secret", "from", o.scopeSecretFrom)
		return o.scopeSecret, nil
	}
	switch spec.kind {
	case storeMemory:
		s := make([]byte, 32)
		if _, err := rand.Read(s); err != nil {
			return nil, err
		}
		log.Info("scope secret", "from", "random (memory: store, this process only)")
		return s, nil
	case storeFile:
		name := spec.path + scopeSecretSuffix
		s, created, err := fileScopeSecret(name)
		if err != nil {
			return nil, fmt.Errorf("scope secret %s: %w (or give -scope-secret-file)", name, err)
		}
		if created {
			log.Info("scope secret generated beside the store", "file", name)
		} else {
			log.Info("scope secret", "file", name)
		}
		return s, nil
	}
	return nil, errors.New("-scope-secret-file: required with a shared store")
}

// fileScopeSecret reads the secret in name, or creates it atomically (a
// complete file appears under name, or none) when it does not exist. Two
// processes racing to create it end up with the same secret.
func fileScopeSecret(name string) (secret []byte, created bool, err error) {
	if b, err := os.ReadFile(name); err == nil {
		s, err := checkScopeSecret(b)
		return s, false, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, false, err
	}
	s := []byte(hex.EncodeToString(raw[:]))
	tmp, err := os.CreateTemp(filepath.Dir(name), filepath.Base(name)+".tmp-*")
	if err != nil {
		return nil, false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, false, err
	}
	if _, err := tmp.Write(append(s, '\n')); err != nil {
		tmp.Close()
		return nil, false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, false, err
	}
	if err := tmp.Close(); err != nil {
		return nil, false, err
	}
	// Link fails if name exists: the first creator wins, whole.
	if err := os.Link(tmp.Name(), name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			b, err := os.ReadFile(name)
			if err != nil {
				return nil, false, err
			}
			s, err := checkScopeSecret(b)
			return s, false, err
		}
		return nil, false, err
	}
	if d, err := os.Open(filepath.Dir(name)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return s, true, nil
}

// keyDigest is what the logs show of an Idempotency-Key at info level and
// above: the first 12 hex digits of its HMAC under the scope secret, enough
// to correlate lines, useless to replay the key.
type keyDigest []byte

func (k keyDigest) of(key string) string {
	if key == "" {
		return ""
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte("idemproxy-log-key\x00"))
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil)[:6])
}
