package sshd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{"", nil, ""},
		{"   \t ", nil, ""},
		{"instances list", []string{"instances", "list"}, ""},
		{"  a   b\tc\n", []string{"a", "b", "c"}, ""},
		{`a 'b c' "d e"`, []string{"a", "b c", "d e"}, ""},
		{`'' ""`, []string{"", ""}, ""},
		{`a'b'"c"d`, []string{"abcd"}, ""},
		{`'it'\''s'`, []string{"it's"}, ""},
		{`"a \"q\" \\ \$x \` + "`" + `y\n"`, []string{`a "q" \ $x ` + "`" + `y\n`}, ""},
		{`a\ b \'c`, []string{"a b", "'c"}, ""},
		{"a\\\nb", []string{"ab"}, ""},
		{`'$(rm -rf /) ; |'`, []string{"$(rm -rf /) ; |"}, ""},
		{`"x`, nil, "unbalanced double quote"},
		{`'x`, nil, "unbalanced single quote"},
		{`x\`, nil, "lone backslash"},
		{"a | b", nil, "shell syntax |"},
		{"a; b", nil, "shell syntax ;"},
		{"echo $HOME", nil, "shell syntax $"},
		{"a > f", nil, "shell syntax >"},
		{"`id`", nil, "shell syntax `"},
	}
	for _, tt := range tests {
		got, err := splitCommand(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("splitCommand(%q): error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) || (got == nil) != (tt.want == nil) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzSplitCommand(f *testing.F) {
	for _, s := range []string{"", "a b", `a 'b c' "d\"e"`, `x\ y`, `'it'\''s'`, "a\\\nb", `"unterminated`, "a|b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		words, err := splitCommand(line)
		if err != nil {
			return
		}
		// Quoting the words and splitting again must give them back.
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = quoteWord(w)
		}
		again, err := splitCommand(strings.Join(quoted, " "))
		if err != nil || !slices.Equal(again, words) {
			t.Fatalf("round trip of %q: %q → %q, %v", line, words, again, err)
		}
	})
}

func TestParsePath(t *testing.T) {
	tests := []struct {
		in    string
		depth int
		id    int64
		rel   string
		ok    bool
	}{
		{"/", 0, 0, "", true},
		{"", 0, 0, "", true},
		{".", 0, 0, "", true},
		{"..", 0, 0, "", true},
		{"draupnir", 1, 0, "", true},
		{"//draupnir/image_uploads/", 2, 0, "", true},
		{"/draupnir/image_uploads/1", 3, 1, "", true},
		{"//draupnir/image_uploads/1/../2/x", 3, 2, "x", true},
		{"draupnir/image_uploads/7/a/./b/../c", 3, 7, "a/c", true},
		{"/draupnir/image_uploads/1/../../../etc/passwd", 0, 0, "", false},
		{"/draupnir/image_uploads/01/x", 0, 0, "", false},
		{"/draupnir/image_uploads/-1", 0, 0, "", false},
		{"/draupnir/image_uploads/0", 0, 0, "", false},
		{"/draupnir/image_uploads/99999999999999999999", 0, 0, "", false},
		{"/draupnir/image_uploads/1/a\x00b", 0, 0, "", false},
		{"/etc", 0, 0, "", false},
		{"/draupnir/other", 0, 0, "", false},
	}
	for _, tt := range tests {
		loc, err := parsePath(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("parsePath(%q): error %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && (loc.depth != tt.depth || loc.id != tt.id || loc.rel != tt.rel) {
			t.Errorf("parsePath(%q) = %+v, want depth %d id %d rel %q", tt.in, loc, tt.depth, tt.id, tt.rel)
		}
	}
}

func TestParseSCPRecord(t *testing.T) {
	tests := []struct {
		in   string
		want scpRecord
		err  bool
	}{
		{"C0644 12 base.tar", scpRecord{kind: 'C', mode: 0o644, size: 12, name: "base.tar"}, false},
		{"C0755 0 with space", scpRecord{kind: 'C', mode: 0o755, name: "with space"}, false},
		{"C4755 1 x", scpRecord{kind: 'C', mode: 0o755, size: 1, name: "x"}, false},
		{"D0700 0 pgdata", scpRecord{kind: 'D', mode: 0o700, name: "pgdata"}, false},
		{"E", scpRecord{kind: 'E'}, false},
		{"T1700000000 0 1700000001 5", scpRecord{kind: 'T', mtime: time.Unix(1700000000, 0), atime: time.Unix(1700000001, 5000)}, false},
		{"C0644 12 ../x", scpRecord{}, true},
		{"C0644 12 ..", scpRecord{}, true},
		{"C0644 12 .", scpRecord{}, true},
		{"C0644 12 a/b", scpRecord{}, true},
		{"C0644 12 /abs", scpRecord{}, true},
		{"C0644 12 ", scpRecord{}, true},
		{"C0644 12", scpRecord{}, true},
		{"C0648 12 x", scpRecord{}, true},
		{"C644 12 x", scpRecord{}, true},
		{"C0644 -1 x", scpRecord{}, true},
		{"C0644 +1 x", scpRecord{}, true},
		{"C0644 99999999999999999999 x", scpRecord{}, true},
		{"C0644 1 a\x00b", scpRecord{}, true},
		{"C0644 1 " + strings.Repeat("n", 256), scpRecord{}, true},
		{"E ", scpRecord{}, true},
		{"T1 0 1", scpRecord{}, true},
		{"T1 1000000 1 0", scpRecord{}, true},
		{"X", scpRecord{}, true},
		{"", scpRecord{}, true},
	}
	for _, tt := range tests {
		got, err := parseSCPRecord(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("parseSCPRecord(%q): error %v, want error %v", tt.in, err, tt.err)
			continue
		}
		if !tt.err && (got.kind != tt.want.kind || got.mode != tt.want.mode || got.size != tt.want.size ||
			got.name != tt.want.name || !got.mtime.Equal(tt.want.mtime) || !got.atime.Equal(tt.want.atime)) {
			t.Errorf("parseSCPRecord(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseSCPArgs(t *testing.T) {
	tests := []struct {
		args   string
		opts   scpOptions
		target string
		err    string
	}{
		{"-t /draupnir/image_uploads/1", scpOptions{}, "/draupnir/image_uploads/1", ""},
		{"-v -r -p -d -t -- -x", scpOptions{recursive: true, preserve: true, targetDir: true}, "-x", ""},
		{"-prt x", scpOptions{recursive: true, preserve: true}, "x", ""},
		{"-f /x", scpOptions{}, "", "downloads are not supported"},
		{"-t", scpOptions{}, "", "exactly one target"},
		{"-t a b", scpOptions{}, "", "exactly one target"},
		{"-3 -t a", scpOptions{}, "", "unsupported option -3"},
		{"x", scpOptions{}, "", "only uploads"},
	}
	for _, tt := range tests {
		opts, target, err := parseSCPArgs(strings.Fields(tt.args))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseSCPArgs(%q): error %v, want %q", tt.args, err, tt.err)
			}
			continue
		}
		if err != nil || opts != tt.opts || target != tt.target {
			t.Errorf("parseSCPArgs(%q) = %+v %q %v", tt.args, opts, target, err)
		}
	}
}

// memSinkFS is an in-memory sinkFS confined to root; it fails the test if
// the sink ever asks for a path outside root.
type memSinkFS struct {
	t     testing.TB
	root  string
	dirs  map[string]bool
	files map[string]*bytes.Buffer
	modes map[string]fs.FileMode
}

func newMemSinkFS(t testing.TB, root string) *memSinkFS {
	return &memSinkFS{t: t, root: root, dirs: map[string]bool{root: true}, files: map[string]*bytes.Buffer{}, modes: map[string]fs.FileMode{}}
}

func (m *memSinkFS) check(p string) {
	if p != path.Clean(p) || (p != m.root && !strings.HasPrefix(p, m.root+"/")) {
		m.t.Fatalf("sink escaped %s: %q", m.root, p)
	}
}

func (m *memSinkFS) IsDir(p string) (bool, error) {
	m.check(p)
	return m.dirs[p], nil
}

func (m *memSinkFS) Mkdir(p string, mode fs.FileMode) error {
	m.check(p)
	if m.files[p] != nil {
		return draupnir.Errorf(draupnir.KindConflict, "%s: file exists", p)
	}
	m.dirs[p] = true
	return nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (m *memSinkFS) Create(p string, mode fs.FileMode) (io.WriteCloser, error) {
	m.check(p)
	if m.dirs[p] {
		return nil, draupnir.Errorf(draupnir.KindInvalid, "%s: is a directory", p)
	}
	if path.Base(p) == "refused" {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied", p)
	}
	b := &bytes.Buffer{}
	m.files[p] = b
	m.modes[p] = mode
	return nopCloser{b}, nil
}

func (m *memSinkFS) Setstat(p string, a draupnir.FileAttrs) error {
	m.check(p)
	if a.Mode != nil {
		m.modes[p] = *a.Mode
	}
	return nil
}

func TestSCPSink(t *testing.T) {
	const root = "/draupnir/image_uploads/1"
	tests := []struct {
		name   string
		opts   scpOptions
		target string
		in     string
		status int
		out    string // acks and messages sent to the client
		files  map[string]string
		dirs   []string
	}{
		{"one file into dir", scpOptions{}, root, "C0644 3 a\nabc\x00", 0, "\x00\x00\x00", map[string]string{root + "/a": "abc"}, nil},
		{"file to new name", scpOptions{}, root + "/new", "C0644 3 a\nabc\x00", 0, "\x00\x00\x00", map[string]string{root + "/new": "abc"}, nil},
		{"times and empty file", scpOptions{preserve: true}, root, "T1 0 2 0\nC0600 0 e\n\x00", 0, "\x00\x00\x00\x00", map[string]string{root + "/e": ""}, nil},
		{"recursive", scpOptions{recursive: true, targetDir: true}, root, "D0755 0 d\nD0700 0 e\nC0644 1 f\nx\x00E\nE\nC0644 1 g\ny\x00", 0,
			"\x00\x00\x00\x00\x00\x00\x00\x00\x00", map[string]string{root + "/d/e/f": "x", root + "/g": "y"}, []string{root + "/d", root + "/d/e"}},
		{"refused file is skipped", scpOptions{}, root, "C0644 1 refused\nC0644 1 ok\nz\x00", 1, "\x00\x01draupnir: " + root + "/refused: permission denied\n\x00\x00", map[string]string{root + "/ok": "z"}, nil},
		{"dotdot name", scpOptions{}, root, "C0644 3 ..\nabc\x00", 1, "\x00\x01draupnir: protocol error: invalid file name \"..\"\n", nil, nil},
		{"slash in name", scpOptions{}, root, "C0644 3 ../../x\nabc\x00", 1, "\x00\x01draupnir: protocol error: invalid file name \"../../x\": must not contain '/'\n", nil, nil},
		{"directory without -r", scpOptions{}, root, "D0755 0 d\nE\n", 1, "\x00\x01draupnir: protocol error: received a directory without -r\n", nil, nil},
		{"E at top", scpOptions{recursive: true}, root, "E\n", 1, "\x00\x01draupnir: protocol error: E record outside a directory\n", nil, nil},
		{"-d needs a directory", scpOptions{targetDir: true}, root + "/nope", "C0644 1 a\nx\x00", 1, "\x01draupnir: " + root + "/nope: not a directory\n", nil, nil},
		{"truncated data", scpOptions{}, root, "C0644 10 a\nabc", 1, "\x00\x00", map[string]string{root + "/a": "abc"}, nil},
		{"client error line", scpOptions{}, root, "\x01scp: a: Permission denied\nC0644 1 b\nq\x00", 1, "\x00\x00\x00", map[string]string{root + "/b": "q"}, nil},
		{"client fails after data", scpOptions{}, root, "C0644 1 a\nq\x01read error\n", 1, "\x00\x00\x00", map[string]string{root + "/a": "q"}, nil},
		{"unterminated dir", scpOptions{recursive: true}, root, "D0755 0 d\n", 1, "\x00\x00", nil, []string{root + "/d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMemSinkFS(t, root)
			var out bytes.Buffer
			status, _ := runSCPSink(m, strings.NewReader(tt.in), &out, tt.opts, tt.target)
			if status != tt.status {
				t.Errorf("status %d, want %d", status, tt.status)
			}
			if out.String() != tt.out {
				t.Errorf("sent %q, want %q", out.String(), tt.out)
			}
			got := map[string]string{}
			for p, b := range m.files {
				got[p] = b.String()
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.files) && !(len(got) == 0 && len(tt.files) == 0) {
				t.Errorf("files %v, want %v", got, tt.files)
			}
			for _, d := range tt.dirs {
				if !m.dirs[d] {
					t.Errorf("directory %s not created", d)
				}
			}
		})
	}
}

func FuzzSCPSink(f *testing.F) {
	for _, s := range []string{
		"C0644 3 a\nabc\x00",
		"T1 0 2 0\nD0755 0 d\nC0644 1 f\nx\x00E\n",
		"D0755 0 ..\nE\n",
		"C0644 3 a/b\nabc\x00",
		"\x01oops\nC0644 0 x\n\x00",
	} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, recursive bool) {
		const root = "/draupnir/image_uploads/1"
		m := newMemSinkFS(t, root)
		status, _ := runSCPSink(m, strings.NewReader(in), io.Discard, scpOptions{recursive: recursive}, root)
		if status != 0 && status != 1 {
			t.Fatalf("status %d", status)
		}
		for p := range m.files {
			m.check(p)
			if err := validSCPName(path.Base(p)); err != nil {
				t.Fatalf("file %q: %v", p, err)
			}
		}
	})
}

type keyWant struct {
	key gossh.PublicKey
	p   draupnir.Principal
}

func TestFileKeys(t *testing.T) {
	dir := t.TempDir()
	newKey := func() (gossh.PublicKey, string) {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k, err := gossh.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return k, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(k)))
	}
	up, upLine := newKey()
	alice, aliceLine := newKey()
	bob, bobLine := newKey()
	other, otherLine := newKey()
	upath, apath := filepath.Join(dir, "upload"), filepath.Join(dir, "users")

	tests := []struct {
		name, upload, users string
		err                 string
		want                []keyWant
	}{
		{"ok", "# upload keys\n" + upLine + " ci@build\n\n", aliceLine + " alice@example.com\nrestrict,draupnir-user=\"bob@example.com\" " + bobLine + " bob's laptop\n", "",
			[]keyWant{
				{up, draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}},
				{alice, draupnir.Principal{Name: "alice@example.com"}},
				{bob, draupnir.Principal{Name: "bob@example.com"}},
			}},
		{"no user name", upLine + "\n", aliceLine + " alice@example.com\n" + bobLine + "\n", "users:2: key names no user", nil},
		{"comment with spaces", upLine + "\n", bobLine + " bob laptop\n", "users:1: comment \"bob laptop\" is not a user name", nil},
		{"reserved name", upLine + "\n", bobLine + " upload\n", "reserved for the upload principal", nil},
		{"unsupported option", `from="10.0.0.1" ` + upLine + "\n", "", "upload:1: option \"from=\\\"10.0.0.1\\\"\" is not supported", nil},
		{"garbage", "not a key\n", "", "upload:1: not an authorized_keys line", nil},
		{"key for two principals", upLine + "\n", upLine + " mallory@example.com\n", "users:1: key SHA256:", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustWrite(t, upath, []byte(tt.upload))
			mustWrite(t, apath, []byte(tt.users))
			k, err := LoadFileKeys(upath, apath)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				p, err := k.PrincipalForKey(context.Background(), w.key)
				if err != nil || p != w.p {
					t.Errorf("PrincipalForKey = %+v, %v; want %+v", p, err, w.p)
				}
			}
			if _, err := k.PrincipalForKey(context.Background(), other); draupnir.KindOf(err) != draupnir.KindUnauthorized {
				t.Errorf("unknown key: %v", err)
			}
		})
	}

	t.Run("reload", func(t *testing.T) {
		mustWrite(t, upath, []byte(upLine+"\n"))
		mustWrite(t, apath, []byte(aliceLine+" alice@example.com\n"))
		k, err := LoadFileKeys(upath, apath)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		// Revoke alice, add another key; the size changes, so the reload
		// does not depend on the mtime's granularity.
		mustWrite(t, apath, []byte(otherLine+" carol@example.com\n# alice was here\n"))
		if _, err := k.PrincipalForKey(ctx, alice); err == nil {
			t.Error("revoked key still accepted")
		}
		if p, err := k.PrincipalForKey(ctx, other); err != nil || p.Name != "carol@example.com" {
			t.Errorf("added key: %+v %v", p, err)
		}
		// A broken file refuses every key until fixed.
		mustWrite(t, apath, []byte(otherLine+"\n"))
		if _, err := k.PrincipalForKey(ctx, up); err == nil {
			t.Error("key accepted while the keys file is broken")
		}
		os.Remove(apath)
		if _, err := k.PrincipalForKey(ctx, up); err == nil {
			t.Error("key accepted while the keys file is missing")
		}
	})
}
