package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// TokenPrefix starts every Draupnir access token, so that a leaked one is
// easy to recognise (and to search for in logs and repositories).
const TokenPrefix = "drp_"

// DefaultTokenTTL is how long an access token issued by a login stays valid.
const DefaultTokenTTL = 30 * 24 * time.Hour

// maxPublicKeyBytes bounds a registered public key line (an RSA 16384-bit
// key is about 2.8 KB).
const maxPublicKeyBytes = 8 << 10

// KeyLookup maps a public key to a principal; sshd.FileKeys is one.
type KeyLookup interface {
	PrincipalForKey(ctx context.Context, key gossh.PublicKey) (draupnir.Principal, error)
}

// Store keeps people's access tokens and SSH keys in the state database and
// authenticates requests by them. It also accepts the static tokens of
// Tokens (the shared secret and, in the test environment only, the
// integration-test token), so that it can stand in for Tokens everywhere.
type Store struct {
	pool   *pgxpool.Pool
	static *Tokens
	files  KeyLookup // keys configured in files; they win over registered ones
	log    *slog.Logger
	now    func() time.Time
}

// StoreOptions configure a Store.
type StoreOptions struct {
	Pool *pgxpool.Pool
	// Static authenticates the configured tokens; nil: none.
	Static *Tokens
	// FileKeys are the SSH keys of the configuration files (upload keys,
	// ssh.authorized_keys). They take precedence over registered keys, and
	// a key listed there cannot be registered. nil: none.
	FileKeys KeyLookup
	Log      *slog.Logger
}

// NewStore returns a Store over a migrated state database.
func NewStore(opts StoreOptions) *Store {
	s := &Store{pool: opts.Pool, static: opts.Static, files: opts.FileKeys, log: opts.Log, now: time.Now}
	if s.static == nil {
		s.static = NewTokens("", "production")
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// hashToken is the stored form of a token.
func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// newSecret returns TokenPrefix followed by 256 random bits, base64url.
func newSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

var errBadToken = draupnir.Errorf(draupnir.KindUnauthorized, "the access token is not valid")

// IssueToken creates an access token for the user p, valid for ttl (≤ 0:
// DefaultTokenTTL), and returns it. It is the only time the token exists in
// clear outside the client.
func (s *Store) IssueToken(ctx context.Context, p draupnir.Principal, description string, ttl time.Duration) (string, draupnir.Token, error) {
	if p.Upload || p.Name == "" {
		return "", draupnir.Token{}, draupnir.Errorf(draupnir.KindForbidden, "access tokens are issued to people only")
	}
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	description = cleanText(description, 200)
	token := newSecret()
	t := draupnir.Token{Principal: p.Name, Description: description, ExpiresAt: s.now().Add(ttl).UTC().Truncate(time.Microsecond)}
	err := s.pool.QueryRow(ctx, `INSERT INTO access_tokens (token_hash, principal, description, expires_at)
		VALUES ($1, $2, $3, $4) RETURNING id, created_at`,
		hashToken(token), t.Principal, t.Description, t.ExpiresAt).Scan(&t.ID, &t.CreatedAt)
	if err != nil {
		return "", draupnir.Token{}, fmt.Errorf("storing an access token: %w", err)
	}
	// Expired tokens are of no use to anyone; sweep them now and then.
	if _, err := s.pool.Exec(ctx, "DELETE FROM access_tokens WHERE expires_at < now() - interval '1 day'"); err != nil {
		s.log.WarnContext(ctx, "deleting expired access tokens", "err", err)
	}
	return token, t, nil
}

// AuthenticateToken returns the principal of a bearer token: the static
// tokens first, then the stored ones (unexpired). Unknown, expired and
// revoked tokens get a KindUnauthorized error.
func (s *Store) AuthenticateToken(ctx context.Context, token string) (draupnir.Principal, error) {
	if p, err := s.static.AuthenticateToken(ctx, token); err == nil {
		return p, nil
	}
	if !strings.HasPrefix(token, TokenPrefix) || len(token) > 100 {
		return draupnir.Principal{}, errBadToken
	}
	// The lookup is by hash: timing reveals nothing about stored tokens.
	var (
		id        int64
		name      string
		expiresAt time.Time
		lastUsed  *time.Time
	)
	err := s.pool.QueryRow(ctx, `SELECT id, principal, expires_at, last_used_at FROM access_tokens WHERE token_hash = $1`,
		hashToken(token)).Scan(&id, &name, &expiresAt, &lastUsed)
	if errors.Is(err, pgx.ErrNoRows) {
		return draupnir.Principal{}, errBadToken
	}
	if err != nil {
		// The cause names the state database (host, user, socket): it is
		// for the log, not for a client who may not even have a token.
		return draupnir.Principal{}, &draupnir.Error{Kind: draupnir.KindUnavailable,
			Msg: "cannot check the access token now; try again shortly", Err: fmt.Errorf("looking up an access token: %w", err)}
	}
	now := s.now()
	if !now.Before(expiresAt) {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "the access token has expired; run authenticate again")
	}
	// Record use at most once a minute, to keep reads reads.
	if lastUsed == nil || now.Sub(*lastUsed) > time.Minute {
		if _, err := s.pool.Exec(ctx, "UPDATE access_tokens SET last_used_at = now() WHERE id = $1", id); err != nil {
			s.log.WarnContext(ctx, "recording the use of an access token", "token_id", id, "err", err)
		}
	}
	return draupnir.Principal{Name: name}, nil
}

// ListTokens returns p's unexpired tokens, newest first; current (the
// caller's own token, may be empty) is marked.
func (s *Store) ListTokens(ctx context.Context, p draupnir.Principal, current string) ([]draupnir.Token, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, principal, description, created_at, expires_at, last_used_at, token_hash = $2
		FROM access_tokens WHERE principal = $1 AND expires_at > now() ORDER BY id DESC`, p.Name, hashToken(current))
	if err != nil {
		return nil, fmt.Errorf("listing access tokens: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (draupnir.Token, error) {
		var t draupnir.Token
		var last *time.Time
		err := r.Scan(&t.ID, &t.Principal, &t.Description, &t.CreatedAt, &t.ExpiresAt, &last, &t.Current)
		if last != nil {
			t.LastUsedAt = *last
		}
		return t, err
	})
}

// RevokeToken deletes p's token id; someone else's is KindNotFound.
func (s *Store) RevokeToken(ctx context.Context, p draupnir.Principal, id int64) error {
	tag, err := s.pool.Exec(ctx, "DELETE FROM access_tokens WHERE id = $1 AND principal = $2", id, p.Name)
	if err != nil {
		return fmt.Errorf("revoking an access token: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return draupnir.Errorf(draupnir.KindNotFound, "token %d does not exist", id)
	}
	return nil
}

// Logout revokes token itself. A static token (shared secret, test token)
// cannot be revoked: KindConflict.
func (s *Store) Logout(ctx context.Context, token string) error {
	tag, err := s.pool.Exec(ctx, "DELETE FROM access_tokens WHERE token_hash = $1", hashToken(token))
	if err != nil {
		return fmt.Errorf("revoking an access token: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return draupnir.Errorf(draupnir.KindConflict, "this token is configured on the server and cannot be revoked by logging out")
	}
	return nil
}

// AddKey registers the public key in line (authorized_keys form, options
// refused) for the user p.
func (s *Store) AddKey(ctx context.Context, p draupnir.Principal, line string) (draupnir.Key, error) {
	if p.Upload || p.Name == "" {
		return draupnir.Key{}, draupnir.Errorf(draupnir.KindForbidden, "the upload principal's keys are configured in ssh.upload_authorized_keys")
	}
	if len(line) > maxPublicKeyBytes {
		return draupnir.Key{}, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "public_key", Msg: "public_key is too long"}
	}
	pub, comment, options, rest, err := gossh.ParseAuthorizedKey([]byte(strings.TrimSpace(line)))
	if err != nil {
		return draupnir.Key{}, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "public_key",
			Msg: "public_key is not an OpenSSH public key (the contents of a .pub file)"}
	}
	if len(options) > 0 || len(strings.TrimSpace(string(rest))) > 0 {
		return draupnir.Key{}, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "public_key",
			Msg: "public_key must be one key without authorized_keys options"}
	}
	if _, ok := pub.(gossh.CryptoPublicKey); !ok {
		// Certificates would need a CA policy this server does not have.
		return draupnir.Key{}, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "public_key", Msg: "certificates cannot be registered; register the plain key"}
	}
	if pub.Type() == gossh.KeyAlgoDSA {
		return draupnir.Key{}, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "public_key", Msg: "DSA keys are not accepted"}
	}
	if s.files != nil {
		if _, err := s.files.PrincipalForKey(ctx, pub); err == nil {
			return draupnir.Key{}, draupnir.Errorf(draupnir.KindConflict, "this key is already configured on the server")
		}
	}
	k := draupnir.Key{
		Fingerprint: gossh.FingerprintSHA256(pub),
		Principal:   p.Name,
		PublicKey:   strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub))),
		Comment:     cleanText(comment, 200),
	}
	err = s.pool.QueryRow(ctx, `INSERT INTO ssh_keys (fingerprint, principal, public_key, comment) VALUES ($1, $2, $3, $4)
		RETURNING id, created_at`, k.Fingerprint, k.Principal, k.PublicKey, k.Comment).Scan(&k.ID, &k.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		// Whose it is stays unsaid.
		return draupnir.Key{}, draupnir.Errorf(draupnir.KindConflict, "key %s is already registered", k.Fingerprint)
	}
	if err != nil {
		return draupnir.Key{}, fmt.Errorf("registering an SSH key: %w", err)
	}
	if k.Comment != "" {
		k.PublicKey += " " + k.Comment
	}
	return k, nil
}

// ListKeys returns p's registered keys, oldest first.
func (s *Store) ListKeys(ctx context.Context, p draupnir.Principal) ([]draupnir.Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, fingerprint, principal, public_key, comment, created_at
		FROM ssh_keys WHERE principal = $1 ORDER BY id`, p.Name)
	if err != nil {
		return nil, fmt.Errorf("listing SSH keys: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (draupnir.Key, error) {
		var k draupnir.Key
		err := r.Scan(&k.ID, &k.Fingerprint, &k.Principal, &k.PublicKey, &k.Comment, &k.CreatedAt)
		if k.Comment != "" {
			k.PublicKey += " " + k.Comment
		}
		return k, err
	})
}

// RemoveKey deletes p's key id; someone else's is KindNotFound.
func (s *Store) RemoveKey(ctx context.Context, p draupnir.Principal, id int64) error {
	tag, err := s.pool.Exec(ctx, "DELETE FROM ssh_keys WHERE id = $1 AND principal = $2", id, p.Name)
	if err != nil {
		return fmt.Errorf("removing an SSH key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return draupnir.Errorf(draupnir.KindNotFound, "key %d does not exist", id)
	}
	return nil
}

// PrincipalForKey maps a verified SSH public key to its principal: the
// configuration files first, then the registered keys. It satisfies
// sshd.Keys.
func (s *Store) PrincipalForKey(ctx context.Context, key gossh.PublicKey) (draupnir.Principal, error) {
	if s.files != nil {
		p, err := s.files.PrincipalForKey(ctx, key)
		if err == nil {
			return p, nil
		}
		if draupnir.KindOf(err) != draupnir.KindUnauthorized {
			// A broken keys file fails closed for its keys but must not lock
			// out people whose keys are registered; log it and go on.
			s.log.WarnContext(ctx, "ssh key files", "err", err)
		}
	}
	fp := gossh.FingerprintSHA256(key)
	var name, stored string
	err := s.pool.QueryRow(ctx, "SELECT principal, public_key FROM ssh_keys WHERE fingerprint = $1", fp).Scan(&name, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown public key %s", fp)
	}
	if err != nil {
		return draupnir.Principal{}, fmt.Errorf("looking up SSH key %s: %w", fp, err)
	}
	// Compare the whole key, not only its hash's text.
	want, _, _, _, err := gossh.ParseAuthorizedKey([]byte(stored))
	if err != nil || string(want.Marshal()) != string(key.Marshal()) {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown public key %s", fp)
	}
	return draupnir.Principal{Name: name}, nil
}

// cleanText keeps client-supplied text printable and short.
func cleanText(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > n {
		s = s[:n]
		for len(s) > 0 && !utf8ValidEnd(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

func utf8ValidEnd(s string) bool { return strings.ToValidUTF8(s, "\x00") == s }
