package draupnir

import (
	"context"
	"io"
	"io/fs"
	"time"
)

// Uploads opens the uploads of images; *images.Service satisfies it. The
// SSH door speaks SFTP and scp to what it opens, and the command tree
// streams into it: neither touches the upload's directory itself.
type Uploads interface {
	// OpenUpload checks that p may upload into image id now, marks the
	// image uploading and returns its upload, to be closed when the
	// session or file set it serves ends. ctx bounds the checks the
	// upload makes again later (see Upload).
	OpenUpload(ctx context.Context, p Principal, id int64) (Upload, error)
}

// Upload is the open upload of one image: a small file system confined to
// the image's upload directory. Names are slash-separated and relative to
// it ("" and "." are the directory itself); no name can leave it or go
// through a symbolic link, and what is created there is private (0600
// files, 0700 directories). Every call checks again, cheaply, that the
// image still accepts uploads: once it is being finalised or destroyed the
// calls are refused, and an open file holds finalising off until it is
// closed. Errors about a file are *fs.PathError (wrapping an errno or a
// *Error); others are *Error. An Upload is safe for concurrent use.
type Upload interface {
	// Stat describes name without following a symbolic link.
	Stat(name string) (fs.FileInfo, error)
	// ReadDir describes the entries of directory name, unsorted.
	ReadDir(name string) ([]fs.FileInfo, error)
	// Mkdir creates directory name; an existing directory is an error
	// only when exclusive is set.
	Mkdir(name string, perm fs.FileMode, exclusive bool) error
	// Remove removes the file name; RemoveDir the empty directory name.
	Remove(name string) error
	RemoveDir(name string) error
	// Rename renames oldname to newname, replacing an existing newname
	// only if replace is set.
	Rename(oldname, newname string, replace bool) error
	// SetAttrs changes the size, mode or times of name.
	SetAttrs(name string, a FileAttrs) error
	// OpenFile opens the regular file name with os.OpenFile flags
	// (O_APPEND is ignored: writes carry their offsets).
	OpenFile(name string, flag int, perm fs.FileMode) (UploadFile, error)
	// Extract unpacks a tar stream (plain or compressed, detected from its
	// bytes) into the upload, replacing everything it held.
	Extract(ctx context.Context, r io.Reader) (UploadSummary, error)
	// Store writes r as the file name at the top of the upload: a tar
	// archive, plain or compressed, named as pg_basebackup names them
	// (base.tar.gz, pg_wal.tar.gz…), which finalise extracts. A file of
	// that name is replaced only once r has been read whole; other files
	// stay, unless replace is set, which empties the upload first.
	Store(ctx context.Context, name string, r io.Reader, replace bool) (UploadSummary, error)
	// Written returns how many bytes have been written into files of the
	// upload through this handle (not counting Extract and Store).
	Written() int64
	// Close ends the upload; files still open keep it until closed.
	Close() error
}

// UploadFile is a file open in an upload.
type UploadFile interface {
	io.ReaderAt
	io.WriterAt
	io.Writer
	io.Closer
}

// FileAttrs are the attributes of an uploaded file that a client may set;
// nil fields stay unchanged.
type FileAttrs struct {
	Size  *int64
	Mode  *fs.FileMode // only the owner's permission bits are kept
	Atime *time.Time
	Mtime *time.Time
}
