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
