package images

import (
	"context"
	"testing"

	"github.com/draupnir-db/draupnir"
)

// While an image is being destroyed, nothing may start writing into it: the
// destroy is deleting its subvolumes. The refusal comes before the state
// database is asked, so a Service without one shows it.
func TestDestroyingImageRefusesWork(t *testing.T) {
	const id = 7
	upload := draupnir.Principal{Name: "uploader", Upload: true}
	tests := []struct {
		name string
		call func(s *Service) error
	}{
		{"finalise", func(s *Service) error { _, err := s.Finalise(context.Background(), upload, id); return err }},
		{"open upload", func(s *Service) error { _, err := s.OpenUpload(context.Background(), upload, id); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Options{})
			defer s.Close()
			s.destroys[id] = true
			err := tt.call(s)
			if draupnir.KindOf(err) != draupnir.KindConflict {
				t.Fatalf("got %v, want a conflict", err)
			}
		})
	}
}
