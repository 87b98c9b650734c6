package apiserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// Keys of the token Secret.
const (
	SecretKeyTokens    = "token"
	SecretKeyAccessKey = "access-token-key"
)

const accessTokenContext = "spawner.dev access token v1\x00"

// MinSecretBytes is the shortest control token or access-token key the
// api-server accepts: 256 bits if the bytes are random. `openssl rand
// -base64 32` prints 44 characters, `openssl rand -hex 32` 64.
const MinSecretBytes = 32

// committedSecrets are the SHA-256 (hex) of every control token and
// access-token key ever committed to this repository (found with
// `git log -p -- deploy/ | grep -E 'token|key'`): the dev Secret that
// deploy/api-server/secret.yaml carried until spawner stopped shipping one.
// Anyone who has read the repository knows them, so the api-server refuses
// them. Only the hashes are kept here, so this file does not republish them.
var committedSecrets = map[string]string{
	"ffe112c9142d4eeef3018e35015c016069495bcde0db05017e59c92079278f3a": "the control token of the former deploy/api-server/secret.yaml",
	"d41c6d0aa0819f158ed056d5d234cdda81dedf71452bf2309ab74c1634fa3c1b": "the access-token key of the former deploy/api-server/secret.yaml",
}

// secretFix is the sentence every credential error ends with: what to do.
const secretFix = "create the Secret with random values, e.g. kubectl -n spawner-system create secret generic spawner-api-tokens " +
	"--from-literal=token=\"$(openssl rand -base64 32)\" --from-literal=access-token-key=\"$(openssl rand -base64 32)\" " +
	"(docs/production.md, \"Secrets\")"

// checkSecret rejects a token or key that is short or was published in this
// repository; what names it without repeating it (logs are not secret).
func checkSecret(what string, v []byte) error {
	if len(v) < MinSecretBytes {
		return fmt.Errorf("%s is %d bytes, shorter than %d: %s", what, len(v), MinSecretBytes, secretFix)
	}
	sum := sha256.Sum256(v)
	if where, ok := committedSecrets[hex.EncodeToString(sum[:])]; ok {
		return fmt.Errorf("%s is %s, published in spawner's repository and so known to anyone: %s", what, where, secretFix)
	}
	return nil
}

// accessKeys derives per-backend access tokens.
type accessKeys struct{ key []byte }

// newSalt returns 16 random bytes, hex encoded.
func newSalt() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b[:])
}

// token is the backend's access token for a salt: 128 bits, base64url.
func (k *accessKeys) token(salt string) string {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(accessTokenContext))
	m.Write([]byte(salt))
	sum := m.Sum(nil)
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// tokenFor returns the access token of a backend, and false when it has no
// salt (created by something else than the api-server).
func (k *accessKeys) tokenFor(slab *spawnerv1.SessionLivedBackend) (string, bool) {
	salt := slab.Annotations[spawnerv1.AnnotationAccessTokenSalt]
	if salt == "" {
		return "", false
	}
	return k.token(salt), true
}

// hashToken is the hex SHA-256 stored in spawner.dev/access-token-sha256.
func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// tokenMatches compares a presented token with the backend's stored hash in
// constant time.
func tokenMatches(slab *spawnerv1.SessionLivedBackend, tok string) bool {
	want := slab.Annotations[spawnerv1.AnnotationAccessTokenHash]
	if len(want) != 64 || tok == "" || len(tok) > 256 {
		return false
	}
	var wantSum [32]byte
	if _, err := hex.Decode(wantSum[:], []byte(want)); err != nil {
		return false
	}
	got := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(got[:], wantSum[:]) == 1
}

// bearerTokens is the set of control API tokens, kept as SHA-256 digests so
// every comparison has the same length and takes the same time.
type bearerTokens struct {
	set    atomic.Pointer[[][32]byte]
	loaded atomic.Bool
}

func (b *bearerTokens) store(tokens [][32]byte) {
	b.set.Store(&tokens)
	b.loaded.Store(true)
}

// valid reports whether tok is one of the tokens. It compares against every
// token, without stopping at the first match.
func (b *bearerTokens) valid(tok string) bool {
	p := b.set.Load()
	if p == nil || tok == "" {
		return false
	}
	got := sha256.Sum256([]byte(tok))
	ok := 0
	for i := range *p {
		ok |= subtle.ConstantTimeCompare(got[:], (*p)[i][:])
	}
	return ok == 1
}

// parseTokens reads one token per line; blank lines and # comments are skipped.
func parseTokens(data []byte) [][32]byte {
	out, _ := parseCheckedTokens("", data)
	return out
}

// parseCheckedTokens is parseTokens that, with a non-empty source, also
// rejects every token checkSecret rejects (naming the source and line).
func parseCheckedTokens(source string, data []byte) ([][32]byte, error) {
	var out [][32]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if source != "" {
			if err := checkSecret(fmt.Sprintf("the control token on line %d of %s", n, source), []byte(line)); err != nil {
				return nil, err
			}
		}
		out = append(out, sha256.Sum256([]byte(line)))
	}
	return out, nil
}

// credentials loads the bearer tokens and the access-token key from the
// configured file and/or Secret, and keeps the tokens fresh.
type credentials struct {
	cfg    *Config
	kube   kubernetes.Interface
	log    *slog.Logger
	tokens bearerTokens
	access *accessKeys
}

func splitNamespaced(s string) (string, string, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf("%q is not namespace/name", s)
	}
	return ns, name, nil
}

func (c *credentials) readSecret(ctx context.Context) (map[string][]byte, error) {
	ns, name, err := splitNamespaced(c.cfg.TokenSecret)
	if err != nil {
		return nil, fmt.Errorf("--token-secret: %w", err)
	}
	s, err := c.kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Secret %s: %w", c.cfg.TokenSecret, err)
	}
	return s.Data, nil
}

// loadTokens reads the bearer tokens once.
func (c *credentials) loadTokens(ctx context.Context) error {
	var all [][32]byte
	if c.cfg.TokenFile != "" {
		data, err := os.ReadFile(c.cfg.TokenFile)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no control API token: --token-file %s does not exist (is the Secret spawner-api-tokens missing?): %s", c.cfg.TokenFile, secretFix)
		}
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		toks, err := parseCheckedTokens("--token-file "+c.cfg.TokenFile, data)
		if err != nil {
			return err
		}
		all = append(all, toks...)
	}
	if c.cfg.TokenSecret != "" {
		data, err := c.readSecret(ctx)
		if err != nil {
			return err
		}
		toks, err := parseCheckedTokens("key "+SecretKeyTokens+" of Secret "+c.cfg.TokenSecret, data[SecretKeyTokens])
		if err != nil {
			return err
		}
		all = append(all, toks...)
	}
	if len(all) == 0 {
		return errors.New("no control API token: give --token-file or --token-secret with at least one token; " + secretFix)
	}
	c.tokens.store(all)
	return nil
}

// init loads tokens and the access key; it fails when there are no tokens.
func (c *credentials) init(ctx context.Context) error {
	if err := c.loadTokens(ctx); err != nil {
		return err
	}
	var key []byte
	switch {
	case c.cfg.AccessKeyFile != "":
		data, err := os.ReadFile(c.cfg.AccessKeyFile)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no access-token key: --access-token-key-file %s does not exist (is key %s missing from the Secret?): %s", c.cfg.AccessKeyFile, SecretKeyAccessKey, secretFix)
		}
		if err != nil {
			return fmt.Errorf("--access-token-key-file: %w", err)
		}
		key = bytes.TrimSpace(data)
	case c.cfg.TokenSecret != "":
		data, err := c.readSecret(ctx)
		if err != nil {
			return err
		}
		key = bytes.TrimSpace(data[SecretKeyAccessKey])
	}
	if len(key) == 0 {
		key = make([]byte, 32)
		rand.Read(key)
		c.log.Warn("no access-token key given (--access-token-key-file or key access-token-key in --token-secret): using a random one; " +
			"other replicas and later restarts cannot re-derive the URLs of backends created now")
	} else if err := checkSecret("the access-token key", key); err != nil {
		return err
	}
	c.access = &accessKeys{key: key}
	return nil
}

// reload re-reads the tokens until ctx ends; a failed read keeps the old set.
func (c *credentials) reload(ctx context.Context) {
	if c.cfg.TokenReload <= 0 {
		return
	}
	t := time.NewTicker(c.cfg.TokenReload)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.loadTokens(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("re-reading control API tokens failed; keeping the previous set", "err", err)
			}
		}
	}
}
