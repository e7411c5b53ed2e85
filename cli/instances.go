package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
)

func (a *app) instancesCmd() *cobra.Command {
	cmd := a.group("instances", "Manage your instances (PostgreSQL servers made from images)")
	cmd.Long = `Instances are PostgreSQL servers started from a ready image in a fraction of a
second. Each is yours alone; destroy it when you are done. 'env N' prints the
settings psql and other libpq programs need to connect.`
	cmd.AddCommand(
		a.instancesListCmd(),
		&cobra.Command{
			Use:   "show N",
			Short: "Show instance N with its connection details",
			Args:  exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "instance id", args[0])
				if err != nil {
					return err
				}
				inst, err := a.b.Instances.Get(cmd.Context(), a.b.Principal, id)
				if err != nil {
					return err
				}
				return a.printInstance(inst)
			},
		},
		a.instancesCreateCmd(),
		a.lifetimeCmd("extend N DURATION", "Make instance N expire DURATION from now (e.g. 8h, 7d; 0 for never)",
			func(d time.Duration) draupnir.InstancePatch { return draupnir.InstancePatch{TTL: &d} }),
		a.lifetimeCmd("protect N DURATION", "Keep expiry and idle clean-up away from instance N for DURATION (e.g. 8h, 7d)",
			func(d time.Duration) draupnir.InstancePatch { return draupnir.InstancePatch{ProtectFor: &d} }),
		a.lifetimeCmd("unprotect N", "Remove instance N's protection",
			func(time.Duration) draupnir.InstancePatch {
				var zero time.Duration
				return draupnir.InstancePatch{ProtectFor: &zero}
			}),
		a.instancesResetCmd(),
		&cobra.Command{
			Use:   "save N",
			Short: "Save instance N's current data as a new image",
			Long: `Save instance N's current data as a new ready image, yours: anyone can start
instances of it, and you (or the upload principal) can destroy it. The
instance keeps running; the image records which instance and image it came
from.`,
			Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "instance id", args[0])
				if err != nil {
					return err
				}
				img, err := a.b.Instances.Save(cmd.Context(), a.b.Principal, id)
				if err != nil {
					return err
				}
				return a.printImage(img)
			},
		},
		&cobra.Command{
			Use:     "destroy N",
			Aliases: []string{"rm"},
			Short:   "Stop instance N and delete its data",
			Args:    exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "instance id", args[0])
				if err != nil {
					return err
				}
				if err := a.b.Instances.Destroy(cmd.Context(), a.b.Principal, id); err != nil {
					return err
				}
				return a.done("Destroyed instance %d.", id)
			},
		},
	)
	return cmd
}

func (a *app) instancesResetCmd() *cobra.Command {
	var image string
	cmd := &cobra.Command{
		Use:   "reset N [--image M]",
		Short: "Put instance N back to its image's data (or image M's)",
		Long: `Put instance N back to the data of the image it was made of, or with --image
to that of ready image M, keeping its port, username and password: what you
connect with does not change. Its connections are dropped and everything
written to it is lost; it answers when the instance accepts connections again.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(cmd, "instance id", args[0])
			if err != nil {
				return err
			}
			var imageID int64
			if cmd.Flags().Changed("image") {
				if imageID, err = parseID(cmd, "--image", image); err != nil {
					return err
				}
			}
			inst, err := a.b.Instances.Reset(cmd.Context(), a.b.Principal, id, imageID)
			if err != nil {
				return err
			}
			return a.printInstance(inst)
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "reset to ready image `M` instead of the instance's own")
	return cmd
}

func (a *app) newCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "new [SOURCE]",
		Short: "Start an instance of the newest ready image (of SOURCE's series)",
		Long: `Start an instance of the newest ready image (the one backed up last) and
print it, with the command that sets up psql to connect to it. With SOURCE,
the newest ready image of that source's series ('sources list' names them).`,
		Args: maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var img *draupnir.Image
			var err error
			if len(args) == 1 {
				img, err = newestOfSource(cmd, a.b, args[0])
			} else {
				img, err = newestReady(cmd.Context(), a.b)
			}
			if err != nil {
				return err
			}
			inst, err := a.b.Instances.Create(cmd.Context(), a.b.Principal, img.ID, draupnir.CreateOptions{})
			if err != nil {
				return err
			}
			return a.printInstance(inst)
		},
	}
}

// newestOfSource returns the newest ready image of source's series.
func newestOfSource(cmd *cobra.Command, b Backend, source string) (*draupnir.Image, error) {
	if !draupnir.ValidSourceName(source) {
		return nil, usagef(cmd, "%q is not a source name (lower-case letters, digits, '-' and '_')", source)
	}
	imgs, err := b.Images.List(cmd.Context(), b.Principal)
	if err != nil {
		return nil, err
	}
	return draupnir.NewestReady(imgs, source)
}

// newestReady returns the ready image made from an upload with the latest
// backup time (the highest id among equals).
func newestReady(ctx context.Context, b Backend) (*draupnir.Image, error) {
	imgs, err := b.Images.List(ctx, b.Principal)
	if err != nil {
		return nil, err
	}
	var best *draupnir.Image
	for _, img := range imgs {
		// A saved image is someone's branch of the data, not the newest.
		if !img.Ready() || img.Saved() {
			continue
		}
		if best == nil || img.BackedUpAt.After(best.BackedUpAt) ||
			(img.BackedUpAt.Equal(best.BackedUpAt) && img.ID > best.ID) {
			best = img
		}
	}
	if best == nil {
		return nil, &draupnir.Error{Kind: draupnir.KindNotFound, Msg: "no image is ready yet", Err: errors.New("no ready image")}
	}
	return best, nil
}

func (a *app) instancesListCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your instances",
		Long: `List your instances with when each expires, until when it is protected and
how long it has been idle. With --all, also those that expiry, idle clean-up
or an image's destroy took away recently, and why.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			insts, err := a.b.Instances.List(cmd.Context(), a.b.Principal)
			if err != nil {
				return err
			}
			if !all {
				return a.printInstances(insts)
			}
			gone, err := a.b.Instances.Tombstones(cmd.Context(), a.b.Principal)
			if err != nil {
				return err
			}
			return a.printInstancesAll(insts, gone)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "also list the instances rules destroyed, with the reason")
	return cmd
}

func (a *app) instancesCreateCmd() *cobra.Command {
	var ttl string
	cmd := &cobra.Command{
		Use:   "create IMAGE_ID",
		Short: "Start an instance of image IMAGE_ID",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(cmd, "image id", args[0])
			if err != nil {
				return err
			}
			var opts draupnir.CreateOptions
			if cmd.Flags().Changed("ttl") {
				if opts.TTL, err = parseDuration(cmd, "--ttl", ttl); err != nil {
					return err
				}
			}
			inst, err := a.b.Instances.Create(cmd.Context(), a.b.Principal, id, opts)
			if err != nil {
				return err
			}
			a.notices(inst)
			return a.printInstance(inst)
		},
	}
	cmd.Flags().StringVar(&ttl, "ttl", "", "destroy it this long after now (e.g. 90m, 8h, 7d; default: the server's)")
	return cmd
}

// lifetimeCmd is a command that changes instance N's lifetime: use is
// "verb N" or "verb N DURATION", and patch turns the duration into the change.
func (a *app) lifetimeCmd(use, short string, patch func(time.Duration) draupnir.InstancePatch) *cobra.Command {
	withDuration := strings.HasSuffix(use, " DURATION")
	n := 1
	if withDuration {
		n = 2
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(n),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(cmd, "instance id", args[0])
			if err != nil {
				return err
			}
			var d time.Duration
			if withDuration {
				if d, err = parseDuration(cmd, "duration", args[1]); err != nil {
					return err
				}
			}
			inst, err := a.b.Instances.Update(cmd.Context(), a.b.Principal, id, patch(d))
			if err != nil {
				return err
			}
			a.notices(inst)
			if a.json {
				return a.printInstance(inst)
			}
			return a.done("Instance %d: %s; %s.", id, expiresStr(inst.ExpiresAt), protectionStr(inst.ProtectedUntil))
		},
	}
}

// parseDuration reads a duration argument: "90m", "8h", "7d" or "0".
func parseDuration(cmd *cobra.Command, what, s string) (time.Duration, error) {
	d, err := draupnir.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, usagef(cmd, "%s must be a duration such as 90m, 8h or 7d, not %q", what, s)
	}
	return d, nil
}

// notices tells the user on stderr what the server did otherwise than
// asked (a ttl capped, say).
func (a *app) notices(inst *draupnir.Instance) {
	if inst.Notice != "" {
		fmt.Fprintf(a.stderr, "note: %s\n", inst.Notice)
	}
}
