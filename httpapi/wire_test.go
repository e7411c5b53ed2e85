package httpapi

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/auth"
	"github.com/draupnir-db/draupnir/client"
)

// TestWireWithClient drives the handler with the project's HTTP client and
// the real token authenticator over a real listener, so that the two ends of
// the wire format are checked against each other.
func TestWireWithClient(t *testing.T) {
	const secret = "shared-secret-for-the-wire-test"
	e := newEnv(t, func(o *Options) { o.Auth = auth.NewTokens(secret, "test") })
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	ctx := context.Background()
	up := client.New(srv.URL, secret, client.WithHTTPClient(srv.Client()))
	user := client.New(srv.URL, auth.IntegrationTestToken, client.WithHTTPClient(srv.Client()))

	backedUp := time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)
	im, err := up.Images().Create(ctx, draupnir.Principal{}, backedUp, `\c my_db`)
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	if im.ID != 3 || im.State != draupnir.ImageCreated || !im.BackedUpAt.Equal(backedUp) || im.AnonymisationScript != `\c my_db` {
		t.Fatalf("created %+v", im)
	}
	script := "SELECT 1;"
	if im, err = up.Images().Update(ctx, draupnir.Principal{}, 3, draupnir.ImagePatch{AnonymisationScript: &script}); err != nil || im.AnonymisationScript != script {
		t.Fatalf("update image: %+v, %v", im, err)
	}
	if im, err = up.Images().Finalise(ctx, draupnir.Principal{}, 3); err != nil || !im.Ready() {
		t.Fatalf("finalise: %+v, %v", im, err)
	}
	if _, err = up.Images().Finalise(ctx, draupnir.Principal{}, 3); !errors.Is(err, draupnir.ErrConflict) {
		t.Fatalf("second finalise: %v, want a conflict", err)
	}
	if _, err = user.Images().Create(ctx, draupnir.Principal{}, backedUp, ""); !errors.Is(err, draupnir.ErrForbidden) {
		t.Fatalf("user creates an image: %v, want forbidden", err)
	}
	list, err := user.Images().List(ctx, draupnir.Principal{})
	if err != nil || len(list) != 3 {
		t.Fatalf("list images: %d, %v", len(list), err)
	}

	in, err := user.Instances().Create(ctx, draupnir.Principal{}, 3, draupnir.CreateOptions{})
	if err != nil {
		t.Fatalf("create instance: %v", err)
	}
	if in.ImageID != 3 || in.Port != 6000 || in.Password != "pw" || in.Owner != auth.IntegrationTestUser {
		t.Fatalf("created %+v", in)
	}
	if _, err = user.Instances().Get(ctx, draupnir.Principal{}, 1); !errors.Is(err, draupnir.ErrNotFound) {
		t.Fatalf("someone else's instance: %v, want not found", err)
	}
	if _, err = user.Instances().Create(ctx, draupnir.Principal{}, 2, draupnir.CreateOptions{}); !errors.Is(err, draupnir.ErrConflict) {
		t.Fatalf("instance of an unready image: %v, want a conflict", err)
	}
	if err = user.Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
		t.Fatalf("destroy instance: %v", err)
	}
	if err = up.Images().Destroy(ctx, draupnir.Principal{}, 3); err != nil {
		t.Fatalf("destroy image: %v", err)
	}
	if _, err = user.Images().Get(ctx, draupnir.Principal{}, 3); !errors.Is(err, draupnir.ErrNotFound) {
		t.Fatalf("destroyed image: %v, want not found", err)
	}

	if _, err = client.New(srv.URL, "wrong", client.WithHTTPClient(srv.Client())).Images().List(ctx, draupnir.Principal{}); !errors.Is(err, draupnir.ErrUnauthorized) {
		t.Fatalf("wrong token: %v, want unauthorized", err)
	}
	newer := client.New(srv.URL, secret, client.WithHTTPClient(srv.Client()), client.WithVersion("2.99.0"))
	if _, err = newer.Images().List(ctx, draupnir.Principal{}); err == nil || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("newer client: %v, want advice to upgrade", err)
	}
	if v, err := newer.ServerVersion(ctx); err != nil || v != draupnir.Version {
		t.Fatalf("server version: %q, %v", v, err)
	}
}
