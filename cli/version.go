package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
)

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of the client and of the server",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := map[string]string{}
			if !a.env.SSH {
				out["client"] = draupnir.Version
			}
			var verr error
			if a.b.ServerVersion != nil {
				s, err := a.b.ServerVersion(cmd.Context())
				if err != nil {
					verr = err
				} else {
					out["server"] = s
				}
			}
			if a.json {
				if err := writeJSON(a.stdout, out); err != nil {
					return err
				}
			} else {
				if c, ok := out["client"]; ok {
					fmt.Fprintf(a.stdout, "client %s\n", c)
				}
				if s, ok := out["server"]; ok {
					fmt.Fprintf(a.stdout, "server %s\n", s)
				}
			}
			if verr != nil {
				// The client's own version is still useful: warn, don't fail.
				fmt.Fprintf(a.stderr, "%s: server version unknown: %s\n", a.env.name(), oneLine(verr.Error()))
			}
			return nil
		},
	}
}
