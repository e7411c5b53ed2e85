package wire

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/draupnir-db/draupnir"
)

// Document is a top-level document: {"data": …}, with meta when the
// server has something to say about the data.
type Document[T any] struct {
	Data T     `json:"data"`
	Meta *Meta `json:"meta,omitempty"`
}

// Meta is a document's meta object.
type Meta struct {
	// Notices say what the server did otherwise than asked (a ttl capped
	// at instances.max_ttl, say).
	Notices []string `json:"notices,omitempty"`
}

// NewMeta returns the meta object for a notice, nil for none.
func NewMeta(notice string) *Meta {
	if notice == "" {
		return nil
	}
	return &Meta{Notices: []string{notice}}
}

// ImageAttributes are the attributes of an image. The first five are the
// original API's; the others are ours, and the original clients ignore them.
type ImageAttributes struct {
	BackedUpAt          Time   `json:"backed_up_at"`
	CreatedAt           Time   `json:"created_at"`
	UpdatedAt           Time   `json:"updated_at"`
	Ready               bool   `json:"ready"`
	AnonymisationScript string `json:"anonymisation_script"`
	State               string `json:"state"`
	Error               string `json:"error"`
	SizeBytes           int64  `json:"size_bytes"`
	PostgresVersion     string `json:"postgres_version"`
	Database            string `json:"database,omitempty"` // known once finalised
	// Saved from an instance: who saved it (and may destroy it) and its
	// lineage.
	Owner          string `json:"owner,omitempty"`
	ParentImageID  int64  `json:"parent_image_id,omitempty"`
	FromInstanceID int64  `json:"from_instance_id,omitempty"`
	// Source names the image's series; empty for none.
	Source string `json:"source,omitempty"`
	// Nodes are the image's copies on the nodes of a cluster (none on a
	// single node): where it is ready, where it is being copied.
	Nodes []ImageCopy `json:"nodes,omitempty"`
}

// ImageCopy is an image's copy on one node of a cluster. Error, why the
// last attempt at copying it failed, is shown to the upload principal only.
type ImageCopy struct {
	Node     string `json:"node"`
	State    string `json:"state"` // copying, ready, failed (retried) or destroying
	Attempts int    `json:"attempts,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ImageResource is an image as the API renders it.
type ImageResource struct {
	Type       string          `json:"type"`
	ID         ID              `json:"id"`
	Attributes ImageAttributes `json:"attributes"`
}

// NewImageResource renders im.
func NewImageResource(im *draupnir.Image) ImageResource {
	return ImageResource{Type: TypeImages, ID: ID(im.ID), Attributes: ImageAttributes{
		BackedUpAt:          NewTime(im.BackedUpAt),
		CreatedAt:           NewTime(im.CreatedAt),
		UpdatedAt:           NewTime(im.UpdatedAt),
		Ready:               im.Ready(),
		AnonymisationScript: im.AnonymisationScript,
		State:               string(im.State),
		Error:               im.Error,
		SizeBytes:           im.SizeBytes,
		PostgresVersion:     im.PostgresVersion,
		Database:            im.Database,
		Owner:               im.Owner,
		ParentImageID:       im.ParentImageID,
		FromInstanceID:      im.FromInstanceID,
		Source:              im.Source,
		Nodes:               newImageCopies(im.Nodes),
	}}
}

func newImageCopies(cs []draupnir.ImageCopy) []ImageCopy {
	if len(cs) == 0 {
		return nil
	}
	out := make([]ImageCopy, len(cs))
	for i, c := range cs {
		out[i] = ImageCopy{Node: c.Node, State: c.State, Attempts: c.Attempts, Error: c.Error}
	}
	return out
}

// Image converts the resource to the domain type. A document with only the
// original attributes (no state) gets a state derived from ready.
func (r *ImageResource) Image() *draupnir.Image {
	a := &r.Attributes
	state := draupnir.ImageState(a.State)
	if state == "" {
		state = draupnir.ImageCreated
		if a.Ready {
			state = draupnir.ImageReady
		}
	}
	return &draupnir.Image{
		ID:                  int64(r.ID),
		State:               state,
		BackedUpAt:          a.BackedUpAt.Time,
		AnonymisationScript: a.AnonymisationScript,
		Error:               a.Error,
		SizeBytes:           a.SizeBytes,
		PostgresVersion:     a.PostgresVersion,
		Database:            a.Database,
		Owner:               a.Owner,
		ParentImageID:       a.ParentImageID,
		FromInstanceID:      a.FromInstanceID,
		Source:              a.Source,
		Nodes:               imageCopies(a.Nodes),
		CreatedAt:           a.CreatedAt.Time,
		UpdatedAt:           a.UpdatedAt.Time,
	}
}

func imageCopies(cs []ImageCopy) []draupnir.ImageCopy {
	if len(cs) == 0 {
		return nil
	}
	out := make([]draupnir.ImageCopy, len(cs))
	for i, c := range cs {
		out[i] = draupnir.ImageCopy{Node: c.Node, State: c.State, Attempts: c.Attempts, Error: c.Error}
	}
	return out
}

// InstanceAttributes are the attributes of an instance. The original API
// had the first four; the original clients ignore the others.
type InstanceAttributes struct {
	CreatedAt     Time   `json:"created_at"`
	UpdatedAt     Time   `json:"updated_at"`
	ImageID       Int    `json:"image_id"`
	Port          Int    `json:"port"`
	Hostname      string `json:"hostname"`
	State         string `json:"state"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	Database      string `json:"database"`
	Owner         string `json:"owner,omitempty"` // tells the upload principal whose it is
	Node          string `json:"node,omitempty"`  // the node of a cluster it runs on
	CACertificate string `json:"ca_certificate,omitempty"`
	Error         string `json:"error,omitempty"`
	// ExpiresAt, ProtectedUntil and LastActiveAt are null for none.
	ExpiresAt      Time `json:"expires_at"`
	ProtectedUntil Time `json:"protected_until"`
	LastActiveAt   Time `json:"last_active_at"`
}

// InstanceResource is an instance as the API renders it.
type InstanceResource struct {
	Type       string             `json:"type"`
	ID         ID                 `json:"id"`
	Attributes InstanceAttributes `json:"attributes"`
}

// NewInstanceResource renders in.
func NewInstanceResource(in *draupnir.Instance) InstanceResource {
	return InstanceResource{Type: TypeInstances, ID: ID(in.ID), Attributes: InstanceAttributes{
		CreatedAt:     NewTime(in.CreatedAt),
		UpdatedAt:     NewTime(in.UpdatedAt),
		ImageID:       Int(in.ImageID),
		Port:          Int(in.Port),
		Hostname:      in.Hostname,
		State:         string(in.State),
		Username:      in.Username,
		Password:      in.Password,
		Database:      in.Database,
		Owner:         in.Owner,
		Node:          in.Node,
		CACertificate: in.CACertificate,
		Error:         in.Error,

		ExpiresAt:      NewTime(in.ExpiresAt),
		ProtectedUntil: NewTime(in.ProtectedUntil),
		LastActiveAt:   NewTime(in.LastActiveAt),
	}}
}

// Instance converts the resource to the domain type.
func (r *InstanceResource) Instance() *draupnir.Instance {
	a := &r.Attributes
	return &draupnir.Instance{
		ID:            int64(r.ID),
		ImageID:       int64(a.ImageID),
		Owner:         a.Owner,
		State:         draupnir.InstanceState(a.State),
		Port:          int(a.Port),
		Hostname:      a.Hostname,
		Username:      a.Username,
		Password:      a.Password,
		Database:      a.Database,
		Node:          a.Node,
		CACertificate: a.CACertificate,
		Error:         a.Error,
		CreatedAt:     a.CreatedAt.Time,
		UpdatedAt:     a.UpdatedAt.Time,

		ExpiresAt:      a.ExpiresAt.Time,
		ProtectedUntil: a.ProtectedUntil.Time,
		LastActiveAt:   a.LastActiveAt.Time,
	}
}

// TombstoneAttributes are the attributes of a tombstone: an instance that
// a rule destroyed.
type TombstoneAttributes struct {
	ImageID     Int    `json:"image_id"`
	Owner       string `json:"owner"`
	Reason      string `json:"reason"`
	Detail      string `json:"detail"`
	DestroyedAt Time   `json:"destroyed_at"`
}

// TombstoneResource is a tombstone as the API renders it; its id is the
// destroyed instance's.
type TombstoneResource struct {
	Type       string              `json:"type"`
	ID         ID                  `json:"id"`
	Attributes TombstoneAttributes `json:"attributes"`
}

// NewTombstoneResource renders t.
func NewTombstoneResource(t *draupnir.Tombstone) TombstoneResource {
	return TombstoneResource{Type: TypeTombstones, ID: ID(t.ID), Attributes: TombstoneAttributes{
		ImageID: Int(t.ImageID), Owner: t.Owner, Reason: string(t.Reason), Detail: t.Detail,
		DestroyedAt: NewTime(t.DestroyedAt),
	}}
}

// Tombstone converts the resource to the domain type.
func (r *TombstoneResource) Tombstone() *draupnir.Tombstone {
	a := &r.Attributes
	return &draupnir.Tombstone{ID: int64(r.ID), ImageID: int64(a.ImageID), Owner: a.Owner,
		Reason: draupnir.DestroyReason(a.Reason), Detail: a.Detail, DestroyedAt: a.DestroyedAt.Time}
}

// TokenAttributes are the attributes of an access token. Token, the secret,
// is only in the answer that issues it.
type TokenAttributes struct {
	Token       string `json:"token,omitempty"`
	Principal   string `json:"principal"`
	Description string `json:"description"`
	CreatedAt   Time   `json:"created_at"`
	ExpiresAt   Time   `json:"expires_at"`
	LastUsedAt  Time   `json:"last_used_at"` // null if never used
	Current     bool   `json:"current"`      // the token of this request
}

// TokenResource is an access token as the API renders it.
type TokenResource struct {
	Type       string          `json:"type"`
	ID         ID              `json:"id"`
	Attributes TokenAttributes `json:"attributes"`
}

// KeyAttributes are the attributes of a registered SSH key.
type KeyAttributes struct {
	Fingerprint string `json:"fingerprint"`
	PublicKey   string `json:"public_key"`
	Comment     string `json:"comment"`
	Principal   string `json:"principal"`
	CreatedAt   Time   `json:"created_at"`
}

// KeyResource is a registered SSH key as the API renders it.
type KeyResource struct {
	Type       string        `json:"type"`
	ID         ID            `json:"id"`
	Attributes KeyAttributes `json:"attributes"`
}

// Request is a request document as the client writes it.
type Request[A any] struct {
	Data RequestResource[A] `json:"data"`
}

// RequestResource is the resource of a Request; a zero ID is left out.
type RequestResource[A any] struct {
	Type       string `json:"type"`
	ID         ID     `json:"id,omitempty"`
	Attributes A      `json:"attributes"`
}

// NewRequest returns a request document for a resource of type typ (id 0
// for one the server is to create).
func NewRequest[A any](typ string, id int64, attrs A) Request[A] {
	return Request[A]{Data: RequestResource[A]{Type: typ, ID: ID(id), Attributes: attrs}}
}

// The request attributes below are read by the server as they are written
// by the client. Pointers tell a member left out from an empty one.

// ImageChange holds the attributes of POST /images and PATCH /images/:id;
// a nil member is left out (and, in a PATCH, left unchanged).
type ImageChange struct {
	BackedUpAt          *string `json:"backed_up_at,omitempty"` // RFC 3339; see RequestTime
	AnonymisationScript *string `json:"anonymisation_script,omitempty"`
	// Source puts a new image in a series (POST only: a series is set at
	// creation).
	Source *string `json:"source,omitempty"`
}

// InstanceCreate holds the attributes of POST /instances. ImageID is kept
// raw so that the server can accept a number or a numeric string and refuse
// anything else with a pointer to it. TTL is a duration such as "90m",
// "8h" or "7d" (see draupnir.ParseDuration).
type InstanceCreate struct {
	ImageID json.RawMessage `json:"image_id,omitempty"`
	// Source, instead of ImageID, takes the newest ready image of that
	// source's series.
	Source *string `json:"source,omitempty"`
	TTL    *string `json:"ttl,omitempty"`
}

// NewInstanceCreate returns the attributes that create an instance of image
// imageID (written as a number) with opts.
func NewInstanceCreate(imageID int64, opts draupnir.CreateOptions) InstanceCreate {
	c := InstanceCreate{ImageID: json.RawMessage(strconv.FormatInt(imageID, 10))}
	if opts.TTL != 0 {
		ttl := draupnir.FormatDuration(opts.TTL)
		c.TTL = &ttl
	}
	return c
}

// InstanceChange holds the attributes of PATCH /instances/:id, durations
// as in InstanceCreate; a nil member is left unchanged. "0" removes the
// expiry or the protection.
type InstanceChange struct {
	TTL        *string `json:"ttl,omitempty"`
	ProtectFor *string `json:"protect_for,omitempty"`
}

// NewInstanceChange returns the attributes of patch.
func NewInstanceChange(patch draupnir.InstancePatch) InstanceChange {
	var c InstanceChange
	format := func(d *time.Duration) *string {
		if d == nil {
			return nil
		}
		s := draupnir.FormatDuration(*d)
		return &s
	}
	c.TTL, c.ProtectFor = format(patch.TTL), format(patch.ProtectFor)
	return c
}

// InstanceReset holds the attributes of POST /instances/:id/reset, all
// optional: ImageID names the ready image to reset to, instead of the
// instance's own. Raw for the same reason as InstanceCreate's.
type InstanceReset struct {
	ImageID json.RawMessage `json:"image_id,omitempty"`
}

// NewInstanceReset returns the attributes that reset an instance to image
// imageID, or to its own image for 0.
func NewInstanceReset(imageID int64) InstanceReset {
	if imageID == 0 {
		return InstanceReset{}
	}
	return InstanceReset{ImageID: json.RawMessage(strconv.FormatInt(imageID, 10))}
}

// TokenRequest holds the attributes of POST /authenticate/token: the
// one-time code of a login and its PKCE verifier, for an access token.
type TokenRequest struct {
	Code         *string `json:"code"`
	CodeVerifier *string `json:"code_verifier"`
	RedirectURI  *string `json:"redirect_uri,omitempty"`
	Description  *string `json:"description,omitempty"`
}

// KeyCreate holds the attributes of POST /keys.
type KeyCreate struct {
	PublicKey *string `json:"public_key"`
}
