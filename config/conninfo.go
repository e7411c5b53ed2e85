package config

import (
	"errors"
	"fmt"

	"github.com/draupnir-db/draupnir/internal/conninfo"
)

// CheckConninfoKeys reports a keyword a source's conninfo must not set. It
// is the one statement of that rule: configuration validation and the
// standby manager, which also takes sources from elsewhere, both call it.
// The error reads after the word "conninfo".
func CheckConninfoKeys(k conninfo.Keywords) error {
	// A password here would be on pg_basebackup's command line, which
	// every local user can read, and in a follow standby's configuration,
	// which its snapshots carry into images.
	if _, ok := k["password"]; ok {
		return errors.New("must not hold a password: put it in the source's passfile (a line host:port:replication:user:password)")
	}
	for _, key := range []string{"passfile", "replication"} {
		if _, ok := k[key]; ok {
			return fmt.Errorf("must not set %s, which draupnir sets itself (use the source's passfile key)", key)
		}
	}
	return nil
}
