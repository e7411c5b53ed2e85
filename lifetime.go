package draupnir

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// CreateOptions are the choices of an instance create beyond its image.
type CreateOptions struct {
	// TTL is how long the instance lives before it is destroyed; 0 means
	// the server's instances.default_ttl. It is capped at instances.max_ttl.
	TTL time.Duration
}

// InstancePatch changes how long an instance lives; nil fields stay as they
// are.
type InstancePatch struct {
	// TTL sets the instance's expiry to now + TTL (capped at
	// instances.max_ttl): an extension. 0 removes the expiry, when the
	// server has no max_ttl.
	TTL *time.Duration
	// ProtectFor protects the instance from every automatic destroy until
	// now + ProtectFor (capped at instances.max_protection); 0 removes the
	// protection.
	ProtectFor *time.Duration
}

// DestroyReason says which rule destroyed an instance that nobody destroyed
// explicitly.
type DestroyReason string

const (
	ReasonExpired      DestroyReason = "expired"       // its expires_at passed
	ReasonIdle         DestroyReason = "idle"          // nobody used it for instances.idle_timeout
	ReasonImageDestroy DestroyReason = "image_destroy" // its image was destroyed
)

// Tombstone is what remains of an instance that a rule destroyed, so that
// its owner can learn why it went.
type Tombstone struct {
	ID          int64
	ImageID     int64
	Owner       string
	Reason      DestroyReason
	Detail      string // the rule in words, e.g. "expired at 2026-11-30T12:00:00Z"
	DestroyedAt time.Time
}

// ParseDuration parses a duration as the API, the CLI and the configuration
// write them: Go's form ("90m", "1h30m", "45s") or whole days ("7d"). A
// bare "0" is zero.
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && strings.Trim(days, "0123456789") == "" {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n > int64(1<<63-1)/int64(24*time.Hour) {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as \"90m\", \"8h\" or \"7d\"", s)
	}
	return d, nil
}

// FormatDuration writes d the way ParseDuration reads it, in days when it is
// a whole number of them.
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d > 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	// Without Go's zero units: "10m0s" → "10m", "1h0m0s" → "1h".
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
