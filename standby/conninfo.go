package standby

import (
	"fmt"

	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/internal/conninfo"
)

// parseConninfo reads a source's libpq connection string in either form
// and refuses the keywords config.CheckConninfoKeys refuses: a password
// would reach pg_basebackup's argv and the standby's configuration, which
// a snapshot carries into every image, and Draupnir sets passfile and
// replication itself. Sources need not come through config, so the
// standby checks again.
func parseConninfo(s string) (conninfo.Keywords, error) {
	k, err := conninfo.Parse(s)
	if err != nil {
		return nil, err
	}
	if err := config.CheckConninfoKeys(k); err != nil {
		return nil, fmt.Errorf("conninfo %w", err)
	}
	return k, nil
}
