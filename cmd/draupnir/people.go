package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/draupnir-db/draupnir/auth"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/httpapi"
	"github.com/draupnir-db/draupnir/sshd"
)

// openPeople returns what authenticates people and scripts: the store of
// access tokens and registered SSH keys (which also accepts the configured
// shared secret, the test token in environment = "test", and the SSH keys
// of the configured files), and the OIDC login if oauth.client_id is set
// (nil otherwise).
func openPeople(ctx context.Context, cfg *config.Config, c *core, log *slog.Logger) (*auth.Store, httpapi.Login, error) {
	var files auth.KeyLookup
	if cfg.SSH.Port != 0 {
		fk, err := sshd.LoadFileKeys(cfg.SSH.UploadAuthorizedKeys, cfg.SSH.AuthorizedKeys)
		if err != nil {
			return nil, nil, fmt.Errorf("ssh keys: %w", err)
		}
		files = fk
	}
	authLog := log.With("component", "auth")
	store := auth.NewStore(auth.StoreOptions{
		Pool:     c.db.Pool(),
		Static:   auth.NewTokens(cfg.SharedSecret, cfg.Environment),
		FileKeys: files,
		Log:      authLog,
	})
	if cfg.OAuth.ClientID == "" {
		log.Info("no oauth.client_id: people cannot log in with draupnir-client authenticate")
		return store, nil, nil
	}
	login, err := auth.NewLogin(auth.LoginOptions{
		IssuerURL:    cfg.OAuth.IssuerURL,
		ClientID:     cfg.OAuth.ClientID,
		ClientSecret: cfg.OAuth.ClientSecret,
		RedirectURL:  cfg.OAuth.RedirectURL,
		Domain:       cfg.TrustedUserEmailDomain,
		Tokens:       store,
		HTTPClient:   &http.Client{Timeout: 30 * time.Second},
		Log:          authLog,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("oauth: %w", err)
	}
	return store, login, nil
}
