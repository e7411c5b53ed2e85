package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
)

// maxScriptBytes bounds an anonymisation script read from a file or stdin.
const maxScriptBytes = 16 << 20

func (a *app) imagesCmd() *cobra.Command {
	cmd := a.group("images", "Manage images (anonymised base backups)")
	cmd.Long = `Images are anonymised PostgreSQL base backups that instances are made from.
Creating, uploading, finalising and destroying images needs the upload
principal; everybody may list and show them.

An image goes created → uploading → finalising → ready, or failed with the
reason. 'images done' refuses an upload that holds no backup (nothing, only
pg_wal.tar.gz, a directory without PG_VERSION) and leaves the image as it was.
A failed image is fixed and finalised again with 'images done N':
  a failing script: 'images update N --anonymisation-script FILE';
  a wrong or incomplete upload: upload again ('images upload N FILE…', scp or
  sftp add files or replace those of the same name; sftp rm removes one),
  which takes the image back to uploading.`
	cmd.AddCommand(
		&cobra.Command{
			Use:     "list",
			Aliases: []string{"ls"},
			Short:   "List images",
			Args:    exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				imgs, err := a.b.Images.List(cmd.Context(), a.b.Principal)
				if err != nil {
					return err
				}
				return a.printImages(imgs)
			},
		},
		&cobra.Command{
			Use:   "show N",
			Short: "Show image N",
			Args:  exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "image id", args[0])
				if err != nil {
					return err
				}
				img, err := a.b.Images.Get(cmd.Context(), a.b.Principal, id)
				if err != nil {
					return err
				}
				return a.printImage(img)
			},
		},
		a.imagesCreateCmd(),
		a.imagesUpdateCmd(),
		&cobra.Command{
			Use:     "done N",
			Aliases: []string{"finalise", "finalize"},
			Short:   "Finalise image N: extract, anonymise, snapshot",
			Long: `Finalise image N: extract the upload, start it privately, run the
anonymisation script, prepare it for instances and take a read-only snapshot.
This takes a while for a large backup; the server finishes the job even if the
command is interrupted. An upload that holds no backup is refused at once and
the image is left as it was. A failure (the script's error, an unsafe or
broken archive…) leaves the image failed with the reason; fix the script with
'images update' or upload again, then run 'done' again.`,
			Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "image id", args[0])
				if err != nil {
					return err
				}
				stop := a.spinner(fmt.Sprintf("finalising image %d", id))
				img, err := a.b.Images.Finalise(cmd.Context(), a.b.Principal, id)
				stop()
				if err != nil {
					return err
				}
				return a.printImage(img)
			},
		},
		a.imagesDestroyCmd(),
		a.imagesUploadCmd(),
	)
	return cmd
}

func (a *app) imagesDestroyCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:     "destroy N",
		Aliases: []string{"rm"},
		Short:   "Destroy image N and all its instances",
		Long: `Destroy image N and every instance made from it, whoever owns them.

If the image has instances, the command says how many and, on a terminal,
asks before it goes on; elsewhere (scripts, ssh) it refuses unless --yes is
given.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(cmd, "image id", args[0])
			if err != nil {
				return err
			}
			if !yes {
				if err := a.confirmDestroyImage(cmd, id); err != nil {
					return err
				}
			}
			if err := a.b.Images.Destroy(cmd.Context(), a.b.Principal, id); err != nil {
				return err
			}
			return a.done("Destroyed image %d.", id)
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "destroy the image's instances without asking")
	return cmd
}

// confirmDestroyImage lets the destruction of image id go ahead: at once if
// no instance of it is in sight, after a yes on a terminal, and otherwise
// not at all. The instances in sight are all of them for the upload
// principal, who alone may destroy images.
func (a *app) confirmDestroyImage(cmd *cobra.Command, id int64) error {
	insts, err := a.b.Instances.List(cmd.Context(), a.b.Principal)
	if err != nil {
		return err
	}
	var doomed []string
	for _, inst := range insts {
		if inst.ImageID != id {
			continue
		}
		s := strconv.FormatInt(inst.ID, 10)
		if inst.Owner != "" {
			s += " (" + inst.Owner + ")"
		}
		doomed = append(doomed, s)
	}
	if len(doomed) == 0 {
		return nil
	}
	const shown = 5
	list := strings.Join(doomed[:min(len(doomed), shown)], ", ")
	if len(doomed) > shown {
		list += fmt.Sprintf(" and %d more", len(doomed)-shown)
	}
	what := fmt.Sprintf("destroying image %d also destroys its %d instance%s: %s", id, len(doomed), plural(len(doomed)), list)
	if !a.env.Interactive {
		return usagef(cmd, "%s; to go ahead, run it again with --yes", what)
	}
	fmt.Fprintf(a.stderr, "%s%s.\nDestroy them? [y/N] ", strings.ToUpper(what[:1]), what[1:])
	line, _ := bufio.NewReader(a.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return fmt.Errorf("nothing was destroyed")
}

// printNextUpload tells the upload principal how to go on with the image
// just created.
func (a *app) printNextUpload(id int64) error {
	n := strconv.FormatInt(id, 10)
	t := a.uploadTarget()
	_, err := fmt.Fprintf(a.stdout, `
Next, upload the backup into image %[1]s, e.g. the tarballs pg_basebackup -Ft makes:
  scp %[2]sbase.tar.gz pg_wal.tar.gz %[3]s
or stream it with no tarball on disk:
  pg_basebackup -D - -Ft -X fetch | ssh %[4]s images upload %[1]s
Then finalise it: %[5]s images done %[1]s
`, n, t.scpPort(), t.scpDest(uploadDir(id)), t.sshArgs(), a.env.nameOrSSH())
	return err
}

// uploadDir is image id's upload directory in the SSH door's namespace.
func uploadDir(id int64) string {
	return "/draupnir/image_uploads/" + strconv.FormatInt(id, 10) + "/"
}

// done prints a confirmation, except with --json, where a command that the
// API answers with 204 prints nothing.
func (a *app) done(format string, args ...any) error {
	if a.json {
		return nil
	}
	_, err := fmt.Fprintf(a.stdout, format+"\n", args...)
	return err
}

func (a *app) imagesCreateCmd() *cobra.Command {
	var backedUpAt, script, source string
	cmd := &cobra.Command{
		Use:   "create --backed-up-at TIME --anonymisation-script FILE [--source NAME]",
		Short: "Register a new image, ready for its upload",
		Long: `Register a new image of a base backup taken at TIME (RFC 3339, e.g.
2017-05-01T12:00:00Z, or a date), to be anonymised with the SQL in FILE
(run with psql -v ON_ERROR_STOP=1; it may use \c DATABASE). FILE "-" reads
the script from standard input` + a.sshStdinNote() + `.

Then upload the backup (pg_basebackup -Ft tarballs or a data directory) and
run 'images done N'. With --source the image joins that series: 'new NAME'
takes its newest ready image, and a configured source's keep applies to it.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if backedUpAt == "" {
				return usagef(cmd, "--backed-up-at is required")
			}
			if !cmd.Flags().Changed("anonymisation-script") {
				return usagef(cmd, "--anonymisation-script is required")
			}
			t, err := parseTime(cmd, backedUpAt)
			if err != nil {
				return err
			}
			sql, err := a.readScript(cmd, script)
			if err != nil {
				return err
			}
			if source != "" && !draupnir.ValidSourceName(source) {
				return usagef(cmd, "--source must be lower-case letters, digits, '-' and '_', not %q", source)
			}
			img, err := a.b.Images.CreateInSeries(cmd.Context(), a.b.Principal, source, t, sql)
			if err != nil {
				return err
			}
			if err := a.printImage(img); err != nil || a.json {
				return err
			}
			return a.printNextUpload(img.ID)
		},
	}
	cmd.Flags().StringVar(&backedUpAt, "backed-up-at", "", "when the backup was taken (RFC 3339 or YYYY-MM-DD)")
	cmd.Flags().StringVar(&script, "anonymisation-script", "", "file with the anonymisation SQL (- for stdin)")
	cmd.Flags().StringVar(&source, "source", "", "put the image in this source's series")
	return cmd
}

func (a *app) imagesUpdateCmd() *cobra.Command {
	var backedUpAt, script string
	cmd := &cobra.Command{
		Use:   "update N [--backed-up-at TIME] [--anonymisation-script FILE]",
		Short: "Change image N before it is ready (e.g. fix a failing script)",
		Long: `Change the backup time or the anonymisation script of image N, which must not
be ready yet: fix a script that made 'images done' fail, then run it again.
FILE "-" reads the script from standard input` + a.sshStdinNote() + `.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(cmd, "image id", args[0])
			if err != nil {
				return err
			}
			var patch draupnir.ImagePatch
			if cmd.Flags().Changed("backed-up-at") {
				t, err := parseTime(cmd, backedUpAt)
				if err != nil {
					return err
				}
				patch.BackedUpAt = &t
			}
			if cmd.Flags().Changed("anonymisation-script") {
				sql, err := a.readScript(cmd, script)
				if err != nil {
					return err
				}
				patch.AnonymisationScript = &sql
			}
			if patch.BackedUpAt == nil && patch.AnonymisationScript == nil {
				return usagef(cmd, "nothing to change: give --backed-up-at and/or --anonymisation-script")
			}
			img, err := a.b.Images.Update(cmd.Context(), a.b.Principal, id, patch)
			if err != nil {
				return err
			}
			return a.printImage(img)
		},
	}
	cmd.Flags().StringVar(&backedUpAt, "backed-up-at", "", "when the backup was taken (RFC 3339 or YYYY-MM-DD)")
	cmd.Flags().StringVar(&script, "anonymisation-script", "", "file with the anonymisation SQL (- for stdin)")
	return cmd
}

func (a *app) sshStdinNote() string {
	if a.env.SSH {
		return " (over SSH the only choice: the server does not read your files)"
	}
	return ""
}

// readScript reads the anonymisation script from a local file or stdin. An
// SSH session must never read files on the server, so there only "-" works.
func (a *app) readScript(cmd *cobra.Command, name string) (string, error) {
	var r io.Reader
	switch {
	case name == "-":
		r = a.stdin
	case a.env.SSH:
		return "", usagef(cmd, "over SSH, pass the script on standard input: --anonymisation-script - < %s", name)
	case name == "":
		return "", usagef(cmd, "--anonymisation-script needs a file name (or - for standard input)")
	default:
		f, err := os.Open(name)
		if err != nil {
			return "", fmt.Errorf("reading the anonymisation script: %w", err)
		}
		defer f.Close()
		r = f
	}
	if r == nil {
		r = strings.NewReader("")
	}
	b, err := io.ReadAll(io.LimitReader(r, maxScriptBytes+1))
	if err != nil {
		return "", fmt.Errorf("reading the anonymisation script: %w", err)
	}
	if len(b) > maxScriptBytes {
		return "", fmt.Errorf("the anonymisation script is larger than %d MiB", maxScriptBytes>>20)
	}
	return string(b), nil
}

// parseTime accepts RFC 3339 and, for convenience, a date (midnight UTC).
func parseTime(cmd *cobra.Command, s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, usagef(cmd, "--backed-up-at: %q is not a time; give RFC 3339 (2017-05-01T12:00:00Z, 2017-05-01T14:00:00+02:00), "+
		"2017-05-01T12:00:00 or \"2017-05-01 12:00:00\" (UTC), or a date, 2017-05-01 (midnight UTC)", s)
}

func (a *app) imagesUploadCmd() *cobra.Command {
	var name string
	var replace bool
	if a.env.SSH {
		prog := a.env.nameOrSSH()
		cmd := &cobra.Command{
			Use:   "upload N [--name FILE [--replace]] < FILE",
			Short: "Upload a backup into image N from stdin: a tar of it, or one of its archives by name",
			Long: `Upload into image N from standard input, in one of two ways:

  pg_basebackup -D - -Ft -X fetch | ` + prog + ` images upload N
      the whole backup as one tar stream (plain, gzip, zstd or lz4),
      extracted as it arrives; it replaces whatever the upload held.

  ` + prog + ` images upload N --name base.tar.gz < base.tar.gz
  ` + prog + ` images upload N --name pg_wal.tar.gz < pg_wal.tar.gz
      one archive of the backup, stored under its name beside the upload's
      other files ('images done' extracts them); a file of the same name is
      replaced, and --replace empties the upload first.

Each upload says what it replaced and what the upload now holds.`,
			Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "image id", args[0])
				if err != nil {
					return err
				}
				if replace && name == "" {
					return usagef(cmd, "--replace goes with --name: a stream without a name always replaces the whole upload")
				}
				sum, err := a.streamUpload(cmd.Context(), id, name, replace)
				if err != nil {
					return err
				}
				return a.printUploadSummary(id, sum)
			},
		}
		cmd.Flags().StringVar(&name, "name", "", "store stdin as this archive (base.tar.gz, pg_wal.tar.gz…) instead of extracting it")
		cmd.Flags().BoolVar(&replace, "replace", false, "with --name: empty the upload first")
		return cmd
	}
	cmd := &cobra.Command{
		Use:   "upload N FILE...",
		Short: "Upload the files of a backup into image N (through the SSH door)",
		Long: `Upload FILE… into image N: the tar archives of a base backup, optionally
compressed (.tar, .tar.gz, .tar.zst, .tar.lz4), e.g. both files of
'pg_basebackup -Ft -X stream':

  draupnir-client images upload N base.tar.gz pg_wal.tar.gz

Each file is stored under its name beside the files already uploaded; a file
of the same name is replaced, and --replace empties the upload first. Every
file says which; 'images done N' extracts them. The bytes go through
Draupnir's SSH server: for each file this runs
'ssh -p PORT USER@HOST images upload N --name FILE < FILE', with a progress bar
on a terminal. DRAUPNIR_SSH names the SSH endpoint as [USER@]HOST[:PORT]
(default: upload@<host of DRAUPNIR_URL>:2222); your ssh configuration and
agent provide the upload key.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef(cmd, "images upload takes 2 arguments or more (N FILE…), got %d", len(args))
			}
			id, err := parseID(cmd, "image id", args[0])
			if err != nil {
				return err
			}
			return a.upload(cmd.Context(), id, args[1:], replace)
		},
	}
	cmd.Flags().BoolVar(&replace, "replace", false, "empty the upload before the first file")
	return cmd
}

// streamUpload takes stdin into image id's upload as the backend's
// principal: extracted in place of the upload without a name, stored as
// that archive with one.
func (a *app) streamUpload(ctx context.Context, id int64, name string, replace bool) (draupnir.UploadSummary, error) {
	if a.b.Uploads == nil {
		return draupnir.UploadSummary{}, errors.New("uploads are not available in this session")
	}
	u, err := a.b.Uploads.OpenUpload(ctx, a.b.Principal, id)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	defer u.Close()
	if name == "" {
		return u.Extract(ctx, a.stdin)
	}
	return u.Store(ctx, name, a.stdin, replace)
}

func (a *app) printUploadSummary(id int64, s draupnir.UploadSummary) error {
	if a.json {
		return writeJSON(a.stdout, map[string]any{
			"image_id": id, "name": s.Name, "bytes": s.Bytes, "files": s.Files, "duration_seconds": s.Duration.Seconds(),
			"replaced": nonNil(s.Replaced), "holds": nonNil(s.Holds),
		})
	}
	what := fmt.Sprintf("%s (%d files)", sizeStr(s.Bytes), s.Files)
	if s.Name != "" {
		what = fmt.Sprintf("%s (%s)", s.Name, sizeStr(s.Bytes))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Uploaded %s into image %d in %s", what, id, s.Duration.Round(time.Millisecond))
	others := slices.DeleteFunc(slices.Clone(s.Holds), func(n string) bool { return n == s.Name })
	switch {
	case s.Name != "" && len(s.Replaced) == 1 && s.Replaced[0] == s.Name:
		fmt.Fprintf(&b, ", replacing the earlier %s", s.Name)
	case len(s.Replaced) > 0:
		fmt.Fprintf(&b, ", replacing the earlier upload (%s)", names(s.Replaced))
	case s.Name != "" && len(others) > 0:
		b.WriteString(", added")
	}
	if s.Name != "" && len(others) > 0 {
		fmt.Fprintf(&b, "; beside it: %s", names(others))
	}
	fmt.Fprintf(&b, ". Next: images done %d\n", id)
	_, err := io.WriteString(a.stdout, b.String())
	return err
}

// names lists up to ten names.
func names(list []string) string {
	if len(list) > 10 {
		list = append(slices.Clone(list[:10]), "…")
	}
	return strings.Join(list, ", ")
}

func nonNil(list []string) []string {
	if list == nil {
		return []string{}
	}
	return list
}
