// Package draupnir holds the domain of the Draupnir service: images, instances,
// principals and the typed errors that every layer returns. It has no
// dependencies on storage or transport, so that the doors (HTTP, SSH, CLI) can
// render results and map errors to statuses or exit codes without string
// matching, and so that the core packages (images, instances) can share one
// vocabulary.
package draupnir

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Version is the version shared by the server and the CLI. It continues the
// original Draupnir's line (whose clients 1.x and 2.0.x the server still
// serves as the original did), so it must stay 2.1.0 or later within major
// 2; docs/api.md has the rule. The build sets it with
// -ldflags "-X github.com/draupnir-db/draupnir.Version=…".
var Version = "2.1.0"

// ImageState is a step of an image's lifecycle:
// created → uploading → finalising → ready | failed. A failed image is
// finalised again as it is (done), or after a new upload, whose first write
// takes it back to uploading.
type ImageState string

const (
	ImageCreated    ImageState = "created"
	ImageUploading  ImageState = "uploading"
	ImageFinalising ImageState = "finalising"
	ImageReady      ImageState = "ready"
	ImageFailed     ImageState = "failed"
)

// AcceptsUploads reports whether bytes may still be written into the image's
// upload: until it is finalised, and again after a failed finalise, so that
// a wrong or incomplete upload can be fixed.
func (s ImageState) AcceptsUploads() bool {
	return s == ImageCreated || s == ImageUploading || s == ImageFailed
}

// Image is a finalised (or finalising) PostgreSQL base backup.
type Image struct {
	ID                  int64
	State               ImageState
	BackedUpAt          time.Time
	AnonymisationScript string
	Error               string // why finalising failed; empty otherwise
	SizeBytes           int64
	PostgresVersion     string // major version from PG_VERSION, e.g. "15"
	Database            string // largest non-system database, where instances land users
	// Owner is who saved the image from an instance, and may destroy it;
	// empty for images made from uploads, which the upload principal manages.
	Owner string
	// ParentImageID and FromInstanceID are the lineage of an image saved
	// from an instance: the image the instance was made of (0 once that is
	// destroyed) and the instance. Both 0 for images made from uploads.
	ParentImageID  int64
	FromInstanceID int64
	// Source names the series the image belongs to: the source it was
	// refreshed from, or the series an upload named; empty for none.
	Source    string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Nodes are the image's copies on the nodes of a cluster: where it is
	// ready, where it is being copied. Empty for a single node.
	Nodes []ImageCopy
}

// ImageCopy is an image's copy on one node of a cluster.
type ImageCopy struct {
	Node string
	// State is copying, ready, failed (an attempt failed; it is retried)
	// or destroying.
	State    string
	Attempts int    // attempts at copying it there so far
	Error    string // why the last attempt failed
}

// Saved reports whether the image was saved from an instance.
func (i *Image) Saved() bool { return i.FromInstanceID != 0 }

// CanDestroy reports whether p may destroy image im: the upload principal
// any image, a user those they saved.
func (p Principal) CanDestroy(im *Image) bool {
	return p.Upload || (im.Owner != "" && im.Owner == p.Name)
}

// ImagePatch changes the attributes of an image that is not ready yet; nil
// fields stay as they are.
type ImagePatch struct {
	BackedUpAt          *time.Time
	AnonymisationScript *string
}

// UploadSummary describes a finished streaming upload.
type UploadSummary struct {
	Bytes    int64 // bytes read from the client (compressed, if it was)
	Files    int   // regular files written
	Duration time.Duration
	// Name is the file stored, for an upload by name; "" for a tar
	// stream extracted into the upload.
	Name string
	// Replaced names what the upload held before and no longer holds:
	// the earlier file of the same name, or everything, for a stream or
	// a replacing upload. Empty when the upload only added.
	Replaced []string
	// Holds names the entries at the top of the upload after it: what
	// done will finalise.
	Holds []string
}

// Ready reports whether instances can be made of the image.
func (i *Image) Ready() bool { return i.State == ImageReady }

// ReadyImage is what it takes to make an instance of a ready image.
type ReadyImage struct {
	ID        int64
	Database  string // where instances land users
	Snapshot  string // the read-only snapshot directory that instances snapshot
	Superuser string // the backup's bootstrap superuser, for an instance's private socket
}

// ImageSave asks the image service for a new ready image made of an
// instance's data.
type ImageSave struct {
	Owner          string // who saves it, and will own it
	ParentImageID  int64  // the image the instance was made of
	FromInstanceID int64
	// Copy writes a crash-consistent copy of the instance's data directory
	// as the new subvolume dst, without stopping the instance.
	Copy func(ctx context.Context, dst string) error
}

// ImageSaver makes images of instances' data. The instance service reaches
// the image service through it, and the image service the instance's data
// through ImageSave.Copy: neither depends on the other.
type ImageSaver interface {
	SaveImage(ctx context.Context, req ImageSave) (*Image, error)
}

// InstanceDestroyer destroys the instances of an image. Destroying an image
// destroys its instances first; the image service reaches them through this
// interface, so that it does not depend on the instance service, which
// depends on it.
type InstanceDestroyer interface {
	DestroyAllOfImage(ctx context.Context, imageID int64) error
	// OwnersOfImage returns who owns instances of an image, each once.
	OwnersOfImage(ctx context.Context, imageID int64) ([]string, error)
}

// InstanceRole is the login role that instances hand to their owners:
// finalise makes it the owner of the image's data, and an instance gives it
// a fresh password.
const InstanceRole = "draupnir"

// InstanceState is a step of an instance's lifecycle.
type InstanceState string

const (
	InstanceCreating   InstanceState = "creating"
	InstanceRunning    InstanceState = "running"
	InstanceStopped    InstanceState = "stopped" // its postgres died and has not been restarted yet
	InstanceFailed     InstanceState = "failed"  // could not be (re)started; Error says why
	InstanceDestroying InstanceState = "destroying"
	// InstanceResetting is an instance whose data is being replaced by a
	// fresh snapshot of an image; a restart finishes the reset.
	InstanceResetting InstanceState = "resetting"
	// InstanceWarm is a started instance in the warm pool: nobody's yet,
	// invisible to everyone, handed out whole by the next create.
	InstanceWarm InstanceState = "warm"
	// InstanceUnavailable is an instance on a node that is down: it is not
	// lost (its data is on that node) and answers again once the node is
	// back. Never stored; only reported.
	InstanceUnavailable InstanceState = "unavailable"
)

// Instance is a writable snapshot of a ready image with its own postgres.
type Instance struct {
	ID       int64
	ImageID  int64
	Owner    string // the principal's name
	State    InstanceState
	Port     int
	Hostname string
	Username string
	Password string
	Database string
	// Node is the node of a cluster the instance runs on; empty on a
	// single node.
	Node string
	// CACertificate is the PEM certificate of the CA that signed the
	// instance's server certificate, for sslmode=verify-full.
	CACertificate string
	Error         string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	// ExpiresAt is when the instance is destroyed; zero for never.
	ExpiresAt time.Time
	// ProtectedUntil is until when no rule (expiry, idle clean-up) may
	// destroy the instance; zero or past for unprotected.
	ProtectedUntil time.Time
	// LastActiveAt is when the instance was last seen with a client
	// connection or a finished transaction.
	LastActiveAt time.Time
	// Notice tells the caller of a create or change what the server did
	// otherwise than asked (a ttl capped at instances.max_ttl, say); it is
	// not stored.
	Notice string
}

// Protected reports whether no rule may destroy the instance at now.
func (in *Instance) Protected(now time.Time) bool { return now.Before(in.ProtectedUntil) }

// Principal is who is asking.
type Principal struct {
	// Name identifies the principal: UploadPrincipal or a user's email.
	Name string
	// Upload is true for the trusted principal that manages images.
	Upload bool
	// Node is true for another node of the cluster (Name is its name),
	// signed in with its registered key: it may speak the node protocol
	// and nothing else, and it is neither a user nor the upload principal.
	Node bool
}

// UploadPrincipal is the name of the trusted principal that manages images.
const UploadPrincipal = "upload"

// CanSee reports whether p may see an instance owned by owner.
func (p Principal) CanSee(owner string) bool { return !p.Node && (p.Upload || p.Name == owner) }

// Kind classifies errors so the doors can map them to HTTP statuses and exit
// codes.
type Kind int

const (
	KindInternal            Kind = iota
	KindNotFound                 // the thing does not exist, or is not the caller's
	KindConflict                 // the thing is in the wrong state for the request
	KindInvalid                  // the request is malformed or a value is out of range
	KindUnprocessable            // the request is well formed but the work failed (finalise)
	KindForbidden                // the principal may not do this
	KindUnauthorized             // no or unknown credentials
	KindUnavailable              // try again later (port pool exhausted, state DB down)
	KindInsufficientStorage      // the disk is full
	KindGone                     // the thing was destroyed by a rule (an instance's tombstone)
	KindQuotaExceeded            // the principal has as many as it may have
)

// Error is an error with a Kind and a message meant for the client. Field names
// the attribute at fault, if any, for validation errors.
type Error struct {
	Kind  Kind
	Msg   string
	Field string
	Err   error // the underlying cause, for logs; never shown to clients
}

func (e *Error) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrNotFound) match any Error of the same Kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Kind == e.Kind
}

// Sentinels for errors.Is; each matches every *Error of its Kind.
var (
	ErrNotFound            = &Error{Kind: KindNotFound}
	ErrConflict            = &Error{Kind: KindConflict}
	ErrInvalid             = &Error{Kind: KindInvalid}
	ErrUnprocessable       = &Error{Kind: KindUnprocessable}
	ErrForbidden           = &Error{Kind: KindForbidden}
	ErrUnauthorized        = &Error{Kind: KindUnauthorized}
	ErrUnavailable         = &Error{Kind: KindUnavailable}
	ErrInsufficientStorage = &Error{Kind: KindInsufficientStorage}
	ErrGone                = &Error{Kind: KindGone}
	ErrQuotaExceeded       = &Error{Kind: KindQuotaExceeded}
)

// Errorf returns an *Error of the given kind with a formatted client message.
// A %w verb in format also records the cause.
func Errorf(kind Kind, format string, args ...any) error {
	wrapped := fmt.Errorf(format, args...)
	return &Error{Kind: kind, Msg: wrapped.Error(), Err: errors.Unwrap(wrapped)}
}

// KindOf returns the Kind of err, KindInternal if it carries none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// ClientMessage returns the message to show a client for err: the *Error's
// message, or a generic one for internal errors, whose text may leak details.
func ClientMessage(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Kind != KindInternal {
		return e.Msg
	}
	return "internal error; the server log has the details"
}

// StorageError marks err as KindInsufficientStorage when it comes from a full
// disk (ENOSPC, EDQUOT), so that clients get 507 rather than 500.
func StorageError(err error) error {
	if KindOf(err) == KindInsufficientStorage {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &Error{Kind: KindInsufficientStorage, Msg: "the data path is full", Err: err}
	}
	return err
}
