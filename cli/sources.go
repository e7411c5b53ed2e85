package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

func (a *app) sourcesCmd() *cobra.Command {
	cmd := a.group("sources", "Live sources and their image series")
	cmd.Long = `Sources are PostgreSQL servers that the Draupnir server refreshes image
series from ([[sources]] in its configuration): on their schedule, or now with
'sources refresh NAME' (upload principal). 'new NAME' starts an instance of a
source's newest ready image.`
	cmd.AddCommand(
		&cobra.Command{
			Use:     "list",
			Aliases: []string{"ls"},
			Short:   "List sources",
			Args:    exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := a.needSources(); err != nil {
					return err
				}
				list, err := a.b.Sources.List(cmd.Context(), a.b.Principal)
				if err != nil {
					return err
				}
				return a.printSources(list)
			},
		},
		&cobra.Command{
			Use:   "show NAME",
			Short: "Show source NAME: state, last and next refresh, lag, images kept",
			Args:  exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				name, err := a.sourceArg(cmd, args[0])
				if err != nil {
					return err
				}
				s, err := a.b.Sources.Get(cmd.Context(), a.b.Principal, name)
				if err != nil {
					return err
				}
				return a.printSource(s)
			},
		},
		&cobra.Command{
			Use:   "refresh NAME",
			Short: "Refresh source NAME now: start making a new image of it",
			Long: `Start a refresh of source NAME and print the image it is making; the server
finishes it whatever happens to this command. Follow it with 'images show N':
it ends ready, or failed with the reason (the earlier images keep serving).`,
			Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				name, err := a.sourceArg(cmd, args[0])
				if err != nil {
					return err
				}
				img, err := a.b.Sources.Refresh(cmd.Context(), a.b.Principal, name)
				if err != nil {
					return err
				}
				return a.printImage(img)
			},
		},
	)
	return cmd
}

func (a *app) needSources() error {
	if a.b.Sources == nil {
		return draupnir.Errorf(draupnir.KindNotFound, "this server has no sources")
	}
	return nil
}

func (a *app) sourceArg(cmd *cobra.Command, name string) (string, error) {
	if !draupnir.ValidSourceName(name) {
		return "", usagef(cmd, "%q is not a source name (lower-case letters, digits, '-' and '_')", name)
	}
	return name, a.needSources()
}

func (a *app) printSources(list []*draupnir.Source) error {
	if a.json {
		doc := wire.Document[[]wire.SourceResource]{Data: make([]wire.SourceResource, len(list))}
		for i, s := range list {
			doc.Data[i] = wire.NewSourceResource(s)
		}
		return writeJSON(a.stdout, doc)
	}
	if len(list) == 0 {
		_, err := fmt.Fprintln(a.stdout, "No sources.")
		return err
	}
	tw := table(a.stdout)
	fmt.Fprintln(tw, "NAME\tMODE\tSTATE\tLAST REFRESH\tNEXT REFRESH\tIMAGES\tLAG")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Mode, s.State, timeStr(s.LastRefreshAt),
			timeStr(s.NextRefreshAt), idsStr(s.ImageIDs), lagStr(s))
	}
	return tw.Flush()
}

func (a *app) printSource(s *draupnir.Source) error {
	if a.json {
		return writeJSON(a.stdout, wire.Document[wire.SourceResource]{Data: wire.NewSourceResource(s)})
	}
	tw := table(a.stdout)
	fmt.Fprintf(tw, "Name:\t%s\n", s.Name)
	fmt.Fprintf(tw, "Mode:\t%s\n", s.Mode)
	if s.Conninfo != "" {
		fmt.Fprintf(tw, "Conninfo:\t%s\n", s.Conninfo)
	}
	fmt.Fprintf(tw, "State:\t%s\n", s.State)
	if s.RefreshingImageID != 0 {
		fmt.Fprintf(tw, "Refreshing:\timage %d\n", s.RefreshingImageID)
	}
	if s.LastError != "" {
		fmt.Fprintf(tw, "Last error:\t%s\n", oneLine(s.LastError))
	}
	fmt.Fprintf(tw, "Schedule:\t%s\n", dash(s.Schedule))
	fmt.Fprintf(tw, "Last refresh:\t%s\n", timeStr(s.LastRefreshAt))
	fmt.Fprintf(tw, "Next refresh:\t%s\n", timeStr(s.NextRefreshAt))
	fmt.Fprintf(tw, "Keep:\t%d\n", s.Keep)
	fmt.Fprintf(tw, "Images:\t%s\n", idsStr(s.ImageIDs))
	if s.Mode == draupnir.SourceFollow {
		fmt.Fprintf(tw, "Standby:\t%s\n", dash(s.StandbyState))
		if s.StandbyError != "" {
			fmt.Fprintf(tw, "Standby error:\t%s\n", oneLine(s.StandbyError))
		}
		fmt.Fprintf(tw, "Lag:\t%s\n", lagStr(s))
	}
	return tw.Flush()
}

func idsStr(ids []int64) string {
	if len(ids) == 0 {
		return "-"
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, ",")
}

// lagStr is a follow source's replay lag, "-" for a pull source.
func lagStr(s *draupnir.Source) string {
	if s.Mode != draupnir.SourceFollow || s.StandbyState == "" || s.StandbyState == "unavailable" {
		return "-"
	}
	bytes := "0 B"
	if s.LagBytes > 0 {
		bytes = sizeStr(s.LagBytes)
	}
	return fmt.Sprintf("%s, %.1fs", bytes, s.LagSeconds)
}
