package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// writeJSON prints v indented, as the API documents are.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

func (a *app) printImages(imgs []*draupnir.Image) error {
	if a.json {
		doc := wire.Document[[]wire.ImageResource]{Data: make([]wire.ImageResource, len(imgs))}
		for i, img := range imgs {
			doc.Data[i] = wire.NewImageResource(img)
		}
		return writeJSON(a.stdout, doc)
	}
	if len(imgs) == 0 {
		_, err := fmt.Fprintln(a.stdout, "No images.")
		return err
	}
	tw := table(a.stdout)
	// SOURCE comes last, so that scripts reading the earlier columns
	// keep working.
	fmt.Fprintln(tw, "ID\tSTATE\tBACKED UP AT\tCREATED AT\tSIZE\tPOSTGRES\tSOURCE")
	for _, img := range imgs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", img.ID, img.State, timeStr(img.BackedUpAt),
			timeStr(img.CreatedAt), sizeStr(img.SizeBytes), dash(img.PostgresVersion), dash(img.Source))
	}
	return tw.Flush()
}

func (a *app) printImage(img *draupnir.Image) error {
	if a.json {
		return writeJSON(a.stdout, wire.Document[wire.ImageResource]{Data: wire.NewImageResource(img)})
	}
	tw := table(a.stdout)
	fmt.Fprintf(tw, "ID:\t%d\n", img.ID)
	fmt.Fprintf(tw, "State:\t%s\n", img.State)
	if img.Source != "" {
		fmt.Fprintf(tw, "Source:\t%s\n", img.Source)
	}
	if img.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", oneLine(img.Error))
	}
	fmt.Fprintf(tw, "Backed up at:\t%s\n", timeStr(img.BackedUpAt))
	fmt.Fprintf(tw, "Created at:\t%s\n", timeStr(img.CreatedAt))
	fmt.Fprintf(tw, "Updated at:\t%s\n", timeStr(img.UpdatedAt))
	fmt.Fprintf(tw, "Size:\t%s\n", sizeStr(img.SizeBytes))
	fmt.Fprintf(tw, "Postgres:\t%s\n", dash(img.PostgresVersion))
	if img.Database != "" {
		fmt.Fprintf(tw, "Database:\t%s\n", img.Database)
	}
	if img.Saved() {
		parent := "(destroyed)"
		if img.ParentImageID != 0 {
			parent = fmt.Sprint(img.ParentImageID)
		}
		fmt.Fprintf(tw, "Saved from:\tinstance %d of image %s\n", img.FromInstanceID, parent)
		fmt.Fprintf(tw, "Owner:\t%s\n", img.Owner)
	}
	if len(img.Nodes) > 0 {
		fmt.Fprintf(tw, "Nodes:\t%s\n", nodesStr(img.Nodes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// The script goes last and verbatim: it is SQL, often several lines.
	script := strings.TrimRight(img.AnonymisationScript, "\n")
	if script == "" {
		_, err := fmt.Fprintln(a.stdout, "Anonymisation script: (none)")
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "Anonymisation script:\n%s\n", indent(script, "    "))
	return err
}

func (a *app) printInstances(insts []*draupnir.Instance) error {
	if a.json {
		doc := wire.Document[[]wire.InstanceResource]{Data: make([]wire.InstanceResource, len(insts))}
		for i, inst := range insts {
			doc.Data[i] = wire.NewInstanceResource(inst)
		}
		return writeJSON(a.stdout, doc)
	}
	if len(insts) == 0 {
		_, err := fmt.Fprintln(a.stdout, "No instances.")
		return err
	}
	// The upload principal sees everybody's instances: say whose each is.
	// (Everybody else sees only their own, with their own name.)
	owners := false
	for _, inst := range insts {
		owners = owners || inst.Owner != ""
	}
	tw := table(a.stdout)
	// Idle time as a duration, which is what people scan a list for;
	// show and --json give the time.
	fmt.Fprint(tw, "ID\tIMAGE\tSTATE\tHOST\tPORT\tDATABASE\tCREATED AT\tEXPIRES AT\tPROTECTED UNTIL\tIDLE")
	if owners {
		fmt.Fprint(tw, "\tOWNER")
	}
	fmt.Fprintln(tw)
	now := time.Now()
	for _, inst := range insts {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", inst.ID, inst.ImageID, inst.State,
			dash(inst.Hostname), portStr(inst.Port), dash(inst.Database), timeStr(inst.CreatedAt),
			timeStr(inst.ExpiresAt), protectedStr(inst, now), idleStr(inst.LastActiveAt, now))
		if owners {
			fmt.Fprintf(tw, "\t%s", dash(inst.Owner))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// printInstancesAll prints the instances, then those rules destroyed.
func (a *app) printInstancesAll(insts []*draupnir.Instance, gone []*draupnir.Tombstone) error {
	if a.json {
		type all struct {
			Data []wire.InstanceResource  `json:"data"`
			Gone []wire.TombstoneResource `json:"gone"`
		}
		doc := all{Data: make([]wire.InstanceResource, len(insts)), Gone: make([]wire.TombstoneResource, len(gone))}
		for i, inst := range insts {
			doc.Data[i] = wire.NewInstanceResource(inst)
		}
		for i, t := range gone {
			doc.Gone[i] = wire.NewTombstoneResource(t)
		}
		return writeJSON(a.stdout, doc)
	}
	if err := a.printInstances(insts); err != nil {
		return err
	}
	if len(gone) == 0 {
		return nil
	}
	fmt.Fprintln(a.stdout, "\nDestroyed by a rule:")
	tw := table(a.stdout)
	fmt.Fprintln(tw, "ID\tIMAGE\tREASON\tDESTROYED AT\tOWNER\tWHY")
	for _, t := range gone {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", t.ID, t.ImageID, t.Reason, timeStr(t.DestroyedAt), dash(t.Owner), oneLine(t.Detail))
	}
	return tw.Flush()
}

// protectedStr is until when inst is protected, "-" if it is not.
func protectedStr(inst *draupnir.Instance, now time.Time) string {
	if !inst.Protected(now) {
		return "-"
	}
	return timeStr(inst.ProtectedUntil)
}

// idleStr is how long before now an instance was last seen in use, to the
// minute ("<1m", "4m", "2h5m", "3d4h"), or "-" if that is not known.
func idleStr(last, now time.Time) string {
	if last.IsZero() {
		return "-"
	}
	d := now.Sub(last)
	switch {
	case d < time.Minute:
		return "<1m"
	case d < time.Hour:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
}

func expiresStr(t time.Time) string {
	if t.IsZero() {
		return "never expires"
	}
	return "expires at " + timeStr(t)
}

func protectionStr(t time.Time) string {
	if t.IsZero() {
		return "not protected"
	}
	return "protected until " + timeStr(t)
}

func (a *app) printInstance(inst *draupnir.Instance) error {
	if a.json {
		return writeJSON(a.stdout, wire.Document[wire.InstanceResource]{Data: wire.NewInstanceResource(inst),
			Meta: wire.NewMeta(inst.Notice)})
	}
	tw := table(a.stdout)
	fmt.Fprintf(tw, "ID:\t%d\n", inst.ID)
	fmt.Fprintf(tw, "Image:\t%d\n", inst.ImageID)
	fmt.Fprintf(tw, "State:\t%s\n", inst.State)
	if inst.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", oneLine(inst.Error))
	}
	if inst.Owner != "" {
		fmt.Fprintf(tw, "Owner:\t%s\n", inst.Owner)
	}
	if inst.Node != "" {
		fmt.Fprintf(tw, "Node:\t%s\n", inst.Node)
	}
	fmt.Fprintf(tw, "Host:\t%s\n", dash(inst.Hostname))
	fmt.Fprintf(tw, "Port:\t%s\n", portStr(inst.Port))
	fmt.Fprintf(tw, "Database:\t%s\n", dash(inst.Database))
	fmt.Fprintf(tw, "Username:\t%s\n", dash(inst.Username))
	fmt.Fprintf(tw, "Password:\t%s\n", dash(inst.Password))
	tls := "no"
	if inst.CACertificate != "" {
		tls = "yes (CA certificate in `env`)"
	}
	fmt.Fprintf(tw, "TLS:\t%s\n", tls)
	fmt.Fprintf(tw, "Created at:\t%s\n", timeStr(inst.CreatedAt))
	fmt.Fprintf(tw, "Expires at:\t%s\n", timeStr(inst.ExpiresAt))
	fmt.Fprintf(tw, "Protected until:\t%s\n", protectedStr(inst, time.Now()))
	fmt.Fprintf(tw, "Last active at:\t%s (idle %s)\n", timeStr(inst.LastActiveAt), idleStr(inst.LastActiveAt, time.Now()))
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "Connect with: %s\n", a.evalExample("env "+strconv.FormatInt(inst.ID, 10)))
	return err
}

func timeStr(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func portStr(p int) string {
	if p == 0 {
		return "-"
	}
	return strconv.Itoa(p)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sizeStr renders a byte count in binary units, e.g. "1.5 GiB".
func sizeStr(n int64) string {
	if n <= 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// nodesStr says where an image of a cluster is ready and where it is being
// copied: "a ready, b copying (attempt 2 failed: …)".
func nodesStr(cs []draupnir.ImageCopy) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = c.Node + " " + c.State
		if c.Error != "" {
			parts[i] += fmt.Sprintf(" (attempt %d failed: %s)", c.Attempts, oneLine(c.Error))
		}
	}
	return strings.Join(parts, ", ")
}
