package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// nodesCmd lists, drains and undrains the nodes of a cluster (the upload
// principal's business; the server refuses anyone else).
func (a *app) nodesCmd() *cobra.Command {
	cmd := a.group("nodes", "List, drain and undrain the nodes of a cluster (upload principal)")
	cmd.Long = `Several servers sharing one state database are one service; each is a node.
List them with their capacity, drain one to stop new instances there (its
instances keep running), and undrain it again.`
	cmd.AddCommand(
		&cobra.Command{
			Use:     "list",
			Aliases: []string{"ls"},
			Short:   "List the nodes, their state and capacity",
			Args:    exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				list, err := a.b.Nodes.List(cmd.Context(), a.b.Principal)
				if err != nil {
					return err
				}
				return a.printNodes(list)
			},
		},
		a.drainCmd("drain", "Stop placing new instances on node NAME; its instances keep running", a.b.Nodes.Drain),
		a.drainCmd("undrain", "Place new instances on node NAME again", a.b.Nodes.Undrain),
	)
	return cmd
}

func (a *app) drainCmd(use, short string, set func(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Node, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := set(cmd.Context(), a.b.Principal, args[0])
			if err != nil {
				return err
			}
			return a.printNodes([]*draupnir.Node{n})
		},
	}
}

func (a *app) printNodes(list []*draupnir.Node) error {
	if a.json {
		doc := wire.Document[[]wire.NodeResource]{Data: make([]wire.NodeResource, len(list))}
		for i, n := range list {
			doc.Data[i] = wire.NewNodeResource(n)
		}
		return writeJSON(a.stdout, doc)
	}
	if len(list) == 0 {
		_, err := fmt.Fprintln(a.stdout, "No nodes: this server is a single node.")
		return err
	}
	tw := table(a.stdout)
	fmt.Fprintln(tw, "NAME\tSTATE\tHOST\tINSTANCES\tFREE PORTS\tFREE DISK\tFREE MEMORY\tLAST HEARTBEAT")
	for _, n := range list {
		state := "up"
		switch {
		case n.Down && n.Drained:
			state = "down, drained"
		case n.Down:
			state = "down"
		case n.Drained:
			state = "drained"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", n.Name, state, n.AdvertiseHost, n.Instances, n.FreePorts,
			sizeStr(n.FreeDiskBytes), sizeStr(n.FreeMemoryBytes), timeStr(n.HeartbeatAt))
	}
	return tw.Flush()
}
