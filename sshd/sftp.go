package sshd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
)

// sftpHandler serves pkg/sftp's request server from the virtual namespace.
type sftpHandler struct {
	ns *namespace

	// stderr is the session's stderr, where refusals are explained: the
	// OpenSSH sftp and scp clients print only the status code's fixed
	// text ("Permission denied"), never the status message, but the ssh
	// process they run prints the session's stderr.
	stderr   io.Writer
	mu       sync.Mutex
	lastLine string // not repeated for the next request (scp stats, then opens)
}

// serveSFTP runs an SFTP session on ch until the client closes it, and
// explains refusals on stderr.
func serveSFTP(ns *namespace, ch io.ReadWriteCloser, stderr io.Writer) error {
	h := &sftpHandler{ns: ns, stderr: stderr}
	rs := sftp.NewRequestServer(ch, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}, sftp.WithRSAllocator())
	// Serve closes every handle the client left open (ending their uploads).
	// The channel itself is left to the caller, which must send the exit
	// status first.
	err := rs.Serve()
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// sftpStatus is an error for the client: the message travels with the
// SFTP status code its Kind maps to (pkg/sftp sends err.Error() as the
// status message and takes the code from the wrapped fxerr).
type sftpStatus struct {
	msg  string
	code error
}

func (e *sftpStatus) Error() string { return e.msg }
func (e *sftpStatus) Unwrap() error { return e.code }

func (h *sftpHandler) fail(op string, p string, err error) error {
	if err == nil {
		return nil
	}
	code := sftp.ErrSSHFxFailure
	switch draupnir.KindOf(err) {
	case draupnir.KindNotFound:
		code = sftp.ErrSSHFxNoSuchFile
	case draupnir.KindForbidden, draupnir.KindUnauthorized, draupnir.KindConflict:
		code = sftp.ErrSSHFxPermissionDenied
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			code = sftp.ErrSSHFxFailure
		}
	case draupnir.KindInternal:
		h.ns.log.Error("sftp request failed", "op", op, "path", p, "principal", h.ns.p.Name, "err", err)
	}
	msg := draupnir.ClientMessage(err)
	if k := draupnir.KindOf(err); k == draupnir.KindForbidden || k == draupnir.KindConflict {
		h.ns.log.Info("sftp request refused", "op", op, "path", p, "principal", h.ns.p.Name, "reason", msg)
	}
	// A stat that finds nothing is how clients probe for a target (scp
	// stats the file it is about to create): not worth a line.
	if !(code == sftp.ErrSSHFxNoSuchFile && (op == "stat" || op == "lstat")) {
		h.explain(msg)
	}
	return &sftpStatus{msg: msg, code: code}
}

// explain writes msg on the session's stderr, once in a row.
func (h *sftpHandler) explain(msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stderr == nil || msg == h.lastLine {
		return
	}
	h.lastLine = msg
	fmt.Fprintf(h.stderr, "draupnir: %s\n", msg)
}

// Fileread opens a file for download (upload principal only; useful to verify
// an upload).
func (h *sftpHandler) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	f, err := h.ns.OpenFile(r.Filepath, os.O_RDONLY, 0)
	if err != nil {
		return nil, h.fail("read", r.Filepath, err)
	}
	return f, nil
}

// Filewrite opens a file for upload. OpenSSH scp opens without O_TRUNC and
// sets the size afterwards; sftp put truncates.
func (h *sftpHandler) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	f, err := h.open(r)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// OpenFile serves opens for reading and writing at once.
func (h *sftpHandler) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	f, err := h.open(r)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (h *sftpHandler) open(r *sftp.Request) (*uploadFile, error) {
	pf := r.Pflags()
	flags := os.O_WRONLY
	if pf.Read {
		flags = os.O_RDWR
	}
	if pf.Creat {
		flags |= os.O_CREATE
	}
	if pf.Trunc {
		flags |= os.O_TRUNC
	}
	if pf.Excl {
		flags |= os.O_EXCL
	}
	mode := fs.FileMode(0o644)
	if r.AttrFlags().Permissions {
		mode = r.Attributes().FileMode().Perm()
	}
	f, err := h.ns.OpenFile(r.Filepath, flags, mode)
	if err != nil {
		return nil, h.fail("open", r.Filepath, err)
	}
	return f, nil
}

// Filecmd serves the requests that change the namespace.
func (h *sftpHandler) Filecmd(r *sftp.Request) error {
	var err error
	switch r.Method {
	case "Setstat":
		err = h.setstat(r)
	case "Mkdir":
		err = h.ns.Mkdir(r.Filepath, 0o755, true)
	case "Remove":
		err = h.ns.Remove(r.Filepath, false)
	case "Rmdir":
		err = h.ns.Remove(r.Filepath, true)
	case "Rename":
		err = h.ns.Rename(r.Filepath, r.Target, false)
	case "PosixRename":
		err = h.ns.Rename(r.Filepath, r.Target, true)
	case "Symlink", "Link":
		err = draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: links cannot be created", r.Target)
	default:
		err = draupnir.Errorf(draupnir.KindForbidden, "%s: operation not supported", r.Method)
	}
	return h.fail(r.Method, r.Filepath, err)
}

// PosixRename lets posix-rename@openssh.com replace an existing target.
func (h *sftpHandler) PosixRename(r *sftp.Request) error {
	return h.fail("PosixRename", r.Filepath, h.ns.Rename(r.Filepath, r.Target, true))
}

func (h *sftpHandler) setstat(r *sftp.Request) error {
	af := r.AttrFlags()
	st := r.Attributes()
	var a draupnir.FileAttrs
	if af.Size {
		size := int64(st.Size)
		a.Size = &size
	}
	if af.Permissions {
		mode := st.FileMode()
		a.Mode = &mode
	}
	if af.Acmodtime {
		at, mt := time.Unix(int64(st.Atime), 0), time.Unix(int64(st.Mtime), 0)
		a.Atime, a.Mtime = &at, &mt
	}
	if af.UidGid {
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: ownership cannot be changed", r.Filepath)
	}
	if a == (draupnir.FileAttrs{}) {
		return nil
	}
	return h.ns.Setstat(r.Filepath, a)
}

// Filelist serves List and Stat.
func (h *sftpHandler) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	switch r.Method {
	case "List":
		infos, err := h.ns.List(r.Filepath)
		if err != nil {
			return nil, h.fail("list", r.Filepath, err)
		}
		return listerAt(infos), nil
	case "Stat":
		info, err := h.ns.Stat(r.Filepath)
		if err != nil {
			return nil, h.fail("stat", r.Filepath, err)
		}
		return listerAt{info}, nil
	}
	return nil, h.fail(r.Method, r.Filepath, draupnir.Errorf(draupnir.KindForbidden, "%s: operation not supported", r.Method))
}

// Lstat is Stat: the namespace never follows symbolic links.
func (h *sftpHandler) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	info, err := h.ns.Stat(r.Filepath)
	if err != nil {
		return nil, h.fail("lstat", r.Filepath, err)
	}
	return listerAt{info}, nil
}

// Readlink is refused: links are never followed nor revealed.
func (h *sftpHandler) Readlink(p string) (string, error) {
	return "", h.fail("readlink", p, draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: links are not readable", p))
}

type listerAt []fs.FileInfo

func (l listerAt) ListAt(dst []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if off+int64(n) >= int64(len(l)) {
		return n, io.EOF
	}
	return n, nil
}
