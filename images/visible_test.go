package images

import (
	"testing"

	"github.com/draupnir-db/draupnir"
)

func TestVisibleTo(t *testing.T) {
	const leak = `invalid input syntax for type integer: "TOPSECRET-1"`
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	alice := draupnir.Principal{Name: "alice@example.com"}
	tests := []struct {
		name string
		p    draupnir.Principal
		err  string
		want string
	}{
		{"upload reads the error", upload, leak, leak},
		{"a user reads that it failed", alice, leak, FailedForOthers},
		{"the zero principal too", draupnir.Principal{}, leak, FailedForOthers},
		{"a user named upload is not the upload principal", draupnir.Principal{Name: draupnir.UploadPrincipal}, leak, FailedForOthers},
		{"no error, nothing to hide", alice, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im := &draupnir.Image{ID: 43, State: draupnir.ImageFailed, Error: tt.err, AnonymisationScript: "SELECT 1"}
			got := visibleTo(tt.p, im)
			if got.Error != tt.want || got.ID != 43 || got.State != draupnir.ImageFailed || got.AnonymisationScript != "SELECT 1" {
				t.Errorf("got %+v, want error %q", got, tt.want)
			}
			if im.Error != tt.err {
				t.Errorf("the stored image was changed: %q", im.Error)
			}
		})
	}
}

// TestVisibleToCopyErrors: why a copy to another node failed can quote the
// data path; only the upload principal reads it.
func TestVisibleToCopyErrors(t *testing.T) {
	const leak = "btrfs receive into /srv/draupnir/image_receive/43: No space left"
	im := &draupnir.Image{ID: 43, State: draupnir.ImageReady,
		Nodes: []draupnir.ImageCopy{{Node: "a", State: "ready"}, {Node: "b", State: "failed", Attempts: 3, Error: leak}}}
	for _, tt := range []struct {
		p    draupnir.Principal
		want string
	}{
		{draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, leak},
		{draupnir.Principal{Name: "alice@example.com"}, ""},
		{draupnir.Principal{Name: "b", Node: true}, ""},
	} {
		got := visibleTo(tt.p, im)
		if got.Nodes[1].Error != tt.want || got.Nodes[1].State != "failed" || got.Nodes[1].Attempts != 3 || got.Error != "" {
			t.Errorf("%+v sees %+v, want copy error %q and no image error", tt.p, got, tt.want)
		}
	}
	if im.Nodes[1].Error != leak {
		t.Errorf("the stored image was changed: %+v", im.Nodes)
	}
}
