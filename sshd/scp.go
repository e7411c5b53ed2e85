package sshd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/draupnir-db/draupnir"
)

// This file implements the sink ("scp -t") side of the legacy scp protocol
// that `scp -O` speaks: the client sends control records, each a line, and
// waits for a one-byte answer (0 = ok, 1 = error + message line, 2 = fatal):
//
//	C<mode> <size> <name>   a file of size bytes follows, then a 0 byte
//	D<mode> 0 <name>        enter a new directory (scp -r)
//	E                       leave it
//	T<mtime> 0 <atime> 0    times of the next C or D (scp -p)
//
// Names come from the client and are checked strictly: a record can only name
// an entry of the directory being received.

// maxSCPLine bounds a control record; OpenSSH uses 2048-byte buffers.
const maxSCPLine = 8192

// maxSCPDepth bounds the nesting of D records.
const maxSCPDepth = 128

// scpRecord is one parsed control record.
type scpRecord struct {
	kind  byte // 'C', 'D', 'E' or 'T'
	mode  fs.FileMode
	size  int64
	name  string
	mtime time.Time
	atime time.Time
}

// parseSCPRecord parses a control line without its trailing newline.
func parseSCPRecord(line string) (scpRecord, error) {
	if line == "" {
		return scpRecord{}, errors.New("empty record")
	}
	switch line[0] {
	case 'E':
		if line != "E" {
			return scpRecord{}, errors.New("malformed E record")
		}
		return scpRecord{kind: 'E'}, nil
	case 'T':
		f := strings.Split(line[1:], " ")
		if len(f) != 4 {
			return scpRecord{}, errors.New("malformed T record")
		}
		var n [4]int64
		for i, s := range f {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 || !isDigits(s) {
				return scpRecord{}, errors.New("malformed T record")
			}
			n[i] = v
		}
		if n[1] > 999999 || n[3] > 999999 || n[0] > 1<<40 || n[2] > 1<<40 {
			return scpRecord{}, errors.New("T record out of range")
		}
		return scpRecord{kind: 'T', mtime: time.Unix(n[0], n[1]*1000), atime: time.Unix(n[2], n[3]*1000)}, nil
	case 'C', 'D':
		// C0644 1234 name: exactly four octal digits, as OpenSSH sends and expects.
		if len(line) < 8 || line[5] != ' ' {
			return scpRecord{}, fmt.Errorf("malformed %c record", line[0])
		}
		var mode fs.FileMode
		for _, c := range line[1:5] {
			if c < '0' || c > '7' {
				return scpRecord{}, errors.New("bad file mode")
			}
			mode = mode<<3 | fs.FileMode(c-'0')
		}
		sizeStr, name, ok := strings.Cut(line[6:], " ")
		if !ok || !isDigits(sizeStr) {
			return scpRecord{}, errors.New("bad size")
		}
		size, err := strconv.ParseInt(sizeStr, 10, 64)
		if err != nil {
			return scpRecord{}, errors.New("size out of range")
		}
		if err := validSCPName(name); err != nil {
			return scpRecord{}, err
		}
		return scpRecord{kind: line[0], mode: mode & 0o777, size: size, name: name}, nil
	}
	return scpRecord{}, fmt.Errorf("unknown record type %q", line[0])
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// validSCPName accepts only a plain name of an entry in the current directory.
func validSCPName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("invalid file name %q", name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("invalid file name %q: must not contain '/'", name)
	case len(name) > 255:
		return errors.New("file name too long")
	}
	return nil
}

// sinkFS is what the sink writes into: the namespace, or a fake in tests.
type sinkFS interface {
	// IsDir reports whether p is an existing directory (false, nil if p
	// does not exist).
	IsDir(p string) (bool, error)
	// Mkdir creates directory p; an existing directory is fine.
	Mkdir(p string, mode fs.FileMode) error
	// Create creates or truncates the regular file p.
	Create(p string, mode fs.FileMode) (io.WriteCloser, error)
	// Setstat sets the mode and times of p (scp -p).
	Setstat(p string, a draupnir.FileAttrs) error
}

// scpOptions are the flags of "scp -t".
type scpOptions struct {
	recursive bool // -r
	preserve  bool // -p
	targetDir bool // -d: the target must be a directory
}

// parseSCPArgs parses the arguments after "scp" of the command a client runs
// for `scp -O`: "-t [-d] [-r] [-p] [-v] [--] TARGET".
func parseSCPArgs(args []string) (opts scpOptions, target string, err error) {
	sink := false
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		for _, c := range a[1:] {
			switch c {
			case 't':
				sink = true
			case 'f':
				return opts, "", draupnir.Errorf(draupnir.KindForbidden, "downloads are not supported: scp can only upload into %s/<image id>", uploadsRoot)
			case 'd':
				opts.targetDir = true
			case 'r':
				opts.recursive = true
			case 'p':
				opts.preserve = true
			case 'v':
			default:
				return opts, "", draupnir.Errorf(draupnir.KindInvalid, "scp: unsupported option -%c", c)
			}
		}
	}
	if !sink {
		return opts, "", draupnir.Errorf(draupnir.KindInvalid, "scp: only uploads (scp -t) are supported")
	}
	if len(args)-i != 1 {
		return opts, "", draupnir.Errorf(draupnir.KindInvalid, "scp: expected exactly one target, got %d", len(args)-i)
	}
	return opts, args[i], nil
}

// scpSink receives files from an scp source.
type scpSink struct {
	fs     sinkFS
	in     *bufio.Reader
	out    io.Writer
	opts   scpOptions
	failed bool // some file or directory was refused: exit status 1
	buf    []byte
}

// errSCPFatal ends the session after the error was reported to the client.
var errSCPFatal = errors.New("scp session aborted")

// runSCPSink runs the sink protocol for target on in/out and returns the exit
// status for the session. Errors are reported to the client in the protocol
// (it prints them); the returned error, if any, is for the log.
func runSCPSink(fsys sinkFS, in io.Reader, out io.Writer, opts scpOptions, target string) (int, error) {
	s := &scpSink{fs: fsys, in: bufio.NewReaderSize(in, 64<<10), out: out, opts: opts}
	target = path.Clean("/" + target)
	isDir, err := fsys.IsDir(target)
	if err != nil {
		s.sendError(err)
		return 1, err
	}
	if opts.targetDir && !isDir {
		err := draupnir.Errorf(draupnir.KindInvalid, "%s: not a directory", target)
		s.sendError(err)
		return 1, err
	}
	if err := s.ack(); err != nil {
		return 1, err
	}
	if err := s.sink(target, isDir, 0); err != nil {
		return 1, err
	}
	if s.failed {
		return 1, nil
	}
	return 0, nil
}

func (s *scpSink) ack() error {
	_, err := s.out.Write([]byte{0})
	return err
}

// sendError reports err to the client as a warning line: the client prints
// it and skips the current file.
func (s *scpSink) sendError(err error) {
	msg := strings.NewReplacer("\n", " ", "\r", " ").Replace(draupnir.ClientMessage(err))
	fmt.Fprintf(s.out, "\x01draupnir: %s\n", msg)
}

// protocolError reports a malformed stream and ends the session.
func (s *scpSink) protocolError(err error) error {
	s.sendError(draupnir.Errorf(draupnir.KindInvalid, "protocol error: %v", err))
	return fmt.Errorf("%w: protocol error: %v", errSCPFatal, err)
}

func (s *scpSink) readLine() (string, error) {
	var b []byte
	for {
		c, err := s.in.ReadByte()
		if err != nil {
			if err == io.EOF && len(b) > 0 {
				return "", io.ErrUnexpectedEOF
			}
			return "", err
		}
		if c == '\n' {
			return string(b), nil
		}
		if len(b) >= maxSCPLine {
			return "", errors.New("record too long")
		}
		b = append(b, c)
	}
}

// sink receives the entries of directory target (or, when targetIsDir is
// false, the single entry to be stored as target itself) until E or the end
// of the input.
func (s *scpSink) sink(target string, targetIsDir bool, depth int) error {
	var times *scpRecord
	for {
		line, err := s.readLine()
		if err == io.EOF {
			if depth > 0 {
				return fmt.Errorf("%w: connection ended inside a directory", errSCPFatal)
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: %v", errSCPFatal, err)
			}
			return s.protocolError(err)
		}
		if line != "" && (line[0] == 1 || line[0] == 2) {
			// The source reports a problem of its own (no answer expected).
			s.failed = true
			if line[0] == 2 {
				return fmt.Errorf("%w: client reported %q", errSCPFatal, line[1:])
			}
			continue
		}
		rec, err := parseSCPRecord(line)
		if err != nil {
			return s.protocolError(err)
		}
		switch rec.kind {
		case 'T':
			times = &rec
			if err := s.ack(); err != nil {
				return err
			}
			continue
		case 'E':
			if depth == 0 {
				return s.protocolError(errors.New("E record outside a directory"))
			}
			return s.ack()
		}
		np := target
		if targetIsDir {
			np = path.Join(target, rec.name)
		}
		t := times
		times = nil
		switch rec.kind {
		case 'D':
			if !s.opts.recursive {
				return s.protocolError(errors.New("received a directory without -r"))
			}
			if depth+1 >= maxSCPDepth {
				return s.protocolError(errors.New("directories nested too deeply"))
			}
			if err := s.fs.Mkdir(np, 0o700); err != nil {
				s.failed = true
				s.sendError(err)
				continue
			}
			if err := s.ack(); err != nil {
				return err
			}
			if err := s.sink(np, true, depth+1); err != nil {
				return err
			}
			if s.opts.preserve {
				s.setstat(np, rec, t)
			}
		case 'C':
			if err := s.receiveFile(np, rec, t); err != nil {
				return err
			}
		}
	}
}

func (s *scpSink) setstat(p string, rec scpRecord, t *scpRecord) {
	mode := rec.mode
	a := draupnir.FileAttrs{Mode: &mode}
	if t != nil {
		a.Atime, a.Mtime = &t.atime, &t.mtime
	}
	if err := s.fs.Setstat(p, a); err != nil {
		s.failed = true
	}
}

// receiveFile stores one file; only a broken connection or protocol is
// returned as an error, a refused file is reported to the client.
func (s *scpSink) receiveFile(p string, rec scpRecord, t *scpRecord) error {
	f, err := s.fs.Create(p, 0o600)
	if err != nil {
		s.failed = true
		s.sendError(err)
		return nil // the client skips this file's data
	}
	if err := s.ack(); err != nil {
		f.Close()
		return err
	}
	if s.buf == nil {
		s.buf = make([]byte, 256<<10)
	}
	var werr error
	for left := rec.size; left > 0; {
		n := int64(len(s.buf))
		if left < n {
			n = left
		}
		m, err := io.ReadFull(s.in, s.buf[:n])
		if werr == nil && m > 0 {
			_, werr = f.Write(s.buf[:m])
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("%w: connection ended during %s: %v", errSCPFatal, p, err)
		}
		left -= int64(m)
	}
	if err := f.Close(); err != nil && werr == nil {
		werr = err
	}
	// The source ends each file with its own status byte.
	ok, err := s.response()
	if err != nil {
		return err
	}
	if ok && werr == nil && s.opts.preserve {
		s.setstat(p, rec, t)
	}
	if werr != nil {
		s.failed = true
		s.sendError(werr)
		return nil
	}
	if !ok {
		s.failed = true
	}
	return s.ack()
}

// response reads the source's status byte (and message, if any).
func (s *scpSink) response() (bool, error) {
	c, err := s.in.ReadByte()
	if err != nil {
		return false, fmt.Errorf("%w: %v", errSCPFatal, err)
	}
	switch c {
	case 0:
		return true, nil
	case 1, 2:
		msg, _ := s.readLine()
		if c == 2 {
			return false, fmt.Errorf("%w: client reported %q", errSCPFatal, msg)
		}
		return false, nil
	}
	return false, s.protocolError(fmt.Errorf("unexpected status byte %d", c))
}

// nsSinkFS adapts the namespace to the sink.
type nsSinkFS struct{ ns *namespace }

func (f nsSinkFS) IsDir(p string) (bool, error) {
	info, err := f.ns.Stat(p)
	if errors.Is(err, draupnir.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return info.IsDir(), nil
}

func (f nsSinkFS) Mkdir(p string, mode fs.FileMode) error { return f.ns.Mkdir(p, mode, false) }

func (f nsSinkFS) Create(p string, mode fs.FileMode) (io.WriteCloser, error) {
	file, err := f.ns.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return nil, err
	}
	return file, nil
}

func (f nsSinkFS) Setstat(p string, a draupnir.FileAttrs) error { return f.ns.Setstat(p, a) }
