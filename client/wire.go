package client

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/draupnir-db/draupnir"
)

// Document is a JSON:API top-level document: {"data": …}.
type Document[T any] struct {
	Data T `json:"data"`
}

// ErrorDocument is the body of every error response.
type ErrorDocument struct {
	Errors []ErrorObject `json:"errors"`
}

// ErrorObject is one entry of an ErrorDocument.
type ErrorObject struct {
	Status string       `json:"status"`
	Code   string       `json:"code"`
	Title  string       `json:"title"`
	Detail string       `json:"detail"`
	Source *ErrorSource `json:"source,omitempty"`
}

// ErrorSource names the attribute at fault in a validation error.
type ErrorSource struct {
	Pointer string `json:"pointer,omitempty"`
}

// ID is a resource id. It is rendered as a JSON number, as the original API
// does, and accepted as a number or a numeric string.
type ID int64

// UnmarshalJSON accepts 7 and "7".
func (id *ID) UnmarshalJSON(b []byte) error {
	n, err := unmarshalInt(b)
	*id = ID(n)
	return err
}

// Port is a TCP port. It is rendered as a JSON string ("port": "5678"), as
// the original API does, and accepted as a string or a number.
type Port int

// MarshalJSON renders the port as a string.
func (p Port) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 8)
	b = append(b, '"')
	b = strconv.AppendInt(b, int64(p), 10)
	return append(b, '"'), nil
}

// UnmarshalJSON accepts "5678", 5678 and "" (no port yet).
func (p *Port) UnmarshalJSON(b []byte) error {
	if string(b) == `""` || string(b) == "null" {
		*p = 0
		return nil
	}
	n, err := unmarshalInt(b)
	*p = Port(n)
	return err
}

func unmarshalInt(b []byte) (int64, error) {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		b = b[1 : len(b)-1]
	}
	if string(b) == "null" {
		return 0, nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not an integer: %s", b)
	}
	return n, nil
}

// ImageAttributes are the attributes of an image resource.
type ImageAttributes struct {
	BackedUpAt          time.Time `json:"backed_up_at"`
	CreatedAt           time.Time `json:"created_at"`
	UpdatedAt           time.Time `json:"updated_at"`
	Ready               bool      `json:"ready"`
	AnonymisationScript string    `json:"anonymisation_script"`
	State               string    `json:"state"`
	Error               string    `json:"error"`
	SizeBytes           int64     `json:"size_bytes"`
	PostgresVersion     string    `json:"postgres_version"`
	Database            string    `json:"database,omitempty"`
}

// apiTime is t as the API renders timestamps: UTC, whole seconds.
func apiTime(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

// ImageResource is an image as the API renders it.
type ImageResource struct {
	Type       string          `json:"type"`
	ID         ID              `json:"id"`
	Attributes ImageAttributes `json:"attributes"`
}

// NewImageResource renders img as the API does.
func NewImageResource(img *draupnir.Image) ImageResource {
	return ImageResource{
		Type: "images",
		ID:   ID(img.ID),
		Attributes: ImageAttributes{
			BackedUpAt:          apiTime(img.BackedUpAt),
			CreatedAt:           apiTime(img.CreatedAt),
			UpdatedAt:           apiTime(img.UpdatedAt),
			Ready:               img.Ready(),
			AnonymisationScript: img.AnonymisationScript,
			State:               string(img.State),
			Error:               img.Error,
			SizeBytes:           img.SizeBytes,
			PostgresVersion:     img.PostgresVersion,
			Database:            img.Database,
		},
	}
}

// Image converts the resource to the domain type. A server that sends only
// the original attributes (no state) gets a state derived from ready.
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
		BackedUpAt:          a.BackedUpAt,
		AnonymisationScript: a.AnonymisationScript,
		Error:               a.Error,
		SizeBytes:           a.SizeBytes,
		PostgresVersion:     a.PostgresVersion,
		Database:            a.Database,
		CreatedAt:           a.CreatedAt,
		UpdatedAt:           a.UpdatedAt,
	}
}

// InstanceAttributes are the attributes of an instance resource.
type InstanceAttributes struct {
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	ImageID       ID        `json:"image_id"`
	Port          Port      `json:"port"`
	Hostname      string    `json:"hostname"`
	State         string    `json:"state"`
	Username      string    `json:"username"`
	Password      string    `json:"password"`
	Database      string    `json:"database"`
	CACertificate string    `json:"ca_certificate,omitempty"`
	Owner         string    `json:"owner,omitempty"`
	Error         string    `json:"error,omitempty"`
}

// InstanceResource is an instance as the API renders it.
type InstanceResource struct {
	Type       string             `json:"type"`
	ID         ID                 `json:"id"`
	Attributes InstanceAttributes `json:"attributes"`
}

// NewInstanceResource renders inst as the API does.
func NewInstanceResource(inst *draupnir.Instance) InstanceResource {
	return InstanceResource{
		Type: "instances",
		ID:   ID(inst.ID),
		Attributes: InstanceAttributes{
			CreatedAt:     apiTime(inst.CreatedAt),
			UpdatedAt:     apiTime(inst.UpdatedAt),
			ImageID:       ID(inst.ImageID),
			Port:          Port(inst.Port),
			Hostname:      inst.Hostname,
			State:         string(inst.State),
			Username:      inst.Username,
			Password:      inst.Password,
			Database:      inst.Database,
			CACertificate: inst.CACertificate,
			Owner:         inst.Owner,
			Error:         inst.Error,
		},
	}
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
		CACertificate: a.CACertificate,
		Error:         a.Error,
		CreatedAt:     a.CreatedAt,
		UpdatedAt:     a.UpdatedAt,
	}
}

// Request bodies. Only the attributes a request sets are sent.
type (
	createImageBody struct {
		Data struct {
			Type       string `json:"type"`
			Attributes struct {
				BackedUpAt          time.Time `json:"backed_up_at"`
				AnonymisationScript string    `json:"anonymisation_script"`
			} `json:"attributes"`
		} `json:"data"`
	}
	updateImageBody struct {
		Data struct {
			Type       string `json:"type"`
			ID         ID     `json:"id"`
			Attributes struct {
				BackedUpAt          *time.Time `json:"backed_up_at,omitempty"`
				AnonymisationScript *string    `json:"anonymisation_script,omitempty"`
			} `json:"attributes"`
		} `json:"data"`
	}
	createInstanceBody struct {
		Data struct {
			Type       string `json:"type"`
			Attributes struct {
				ImageID ID `json:"image_id"`
			} `json:"attributes"`
		} `json:"data"`
	}
)

var _ json.Unmarshaler = (*ID)(nil)
