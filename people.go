package draupnir

import "time"

// Token describes a person's access token. The server keeps only a hash of
// the token itself: Secret is set once, in the answer that issues it.
type Token struct {
	ID          int64
	Secret      string
	Principal   string
	Description string
	CreatedAt   time.Time
	ExpiresAt   time.Time
	LastUsedAt  time.Time // zero if never used
	Current     bool      // the token of the request that listed it
}

// Key is an SSH public key a person registered to log in with.
type Key struct {
	ID          int64
	Fingerprint string // SHA256:…
	Principal   string
	PublicKey   string // authorized_keys form: "ssh-ed25519 AAAA… comment"
	Comment     string
	CreatedAt   time.Time
}
