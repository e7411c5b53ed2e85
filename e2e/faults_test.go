package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestFaults is the crash and fault suite: kill -9 of the server in the
// middle of the long operations, postgres processes dying, a full disk, a
// port taken by someone else, missing binaries and the state database going
// away. Each case runs its own server; they share one source base backup.
func TestFaults(t *testing.T) {
	build(t)
	src := newSource(t)
	fetch := src.BaseBackup(t, "-X", "fetch") // one base.tar, WAL included
	baseTar := filepath.Join(fetch, "base.tar")

	t.Run("kill -9 during finalise and during a streaming upload", func(t *testing.T) {
		t.Parallel()
		keys := &sshKeys{}
		s := startServerSSH(t, "", keys)
		ctx := context.Background()
		up := s.upload()

		// Finalise: the script sleeps, so the kill lands while the
		// private postgres runs it.
		im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), "SELECT pg_sleep(600);")
		if err != nil {
			t.Fatal(err)
		}
		s.copyInto(t, im.ID, baseTar)
		go up.Images().Finalise(ctx, draupnir.Principal{}, im.ID) // fails when the server dies
		work := filepath.Join(s.layout().Snapshots(), strconv.FormatInt(im.ID, 10)+".work")
		waitFor(t, 60*time.Second, "the finalise script to run", func() bool {
			return scriptRunning(work)
		})
		s.stop(syscall.SIGKILL)
		s.start()
		got, err := up.Images().Get(ctx, draupnir.Principal{}, im.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != draupnir.ImageFailed || !strings.Contains(got.Error, "interrupted") {
			t.Errorf("image after a crash mid-finalise: %s %q, want failed saying it was interrupted", got.State, got.Error)
		}
		if _, err := os.Lstat(work); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the finalise work directory survived the restart: %v", err)
		}
		if pids := postgresUnder(work); len(pids) > 0 {
			t.Errorf("the private postgres of the interrupted finalise still runs: %v", pids)
		}
		script := anonymise
		if _, err := up.Images().Update(ctx, draupnir.Principal{}, im.ID, draupnir.ImagePatch{AnonymisationScript: &script}); err != nil {
			t.Fatal(err)
		}
		if got, err := up.Images().Finalise(ctx, draupnir.Principal{}, im.ID); err != nil || !got.Ready() {
			t.Fatalf("done again after the crash: %v %+v\n%s", err, got, s.logs())
		}

		// Streaming upload: half the stream is in when the server dies.
		im2, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), anonymise)
		if err != nil {
			t.Fatal(err)
		}
		stream := func() *exec.Cmd {
			return s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "upload", strconv.FormatInt(im2.ID, 10))
		}
		cmd := stream()
		pw := pipeInto(t, cmd)
		f, err := os.Open(baseTar)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		if _, err := io.CopyN(pw, f, st.Size()/2); err != nil {
			t.Fatalf("writing half the stream: %v", err)
		}
		waitFor(t, 30*time.Second, "upload bytes to land", func() bool {
			ents, _ := os.ReadDir(s.uploadDir(im2.ID))
			return len(ents) > 3
		})
		s.stop(syscall.SIGKILL)
		pw.Close()
		if err := cmd.Wait(); err == nil {
			t.Error("the streaming upload succeeded although the server died under it")
		}
		s.start()
		if got, err := up.Images().Get(ctx, draupnir.Principal{}, im2.ID); err != nil || !got.State.AcceptsUploads() {
			t.Fatalf("image after a crash mid-upload: %v %+v; want it open for uploads", err, got)
		}
		cmd = stream()
		f.Seek(0, io.SeekStart)
		cmd.Stdin = f
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("streaming upload again after the crash: %v\n%s", err, out)
		}
		if got, err := up.Images().Finalise(ctx, draupnir.Principal{}, im2.ID); err != nil || !got.Ready() {
			t.Fatalf("done after the redone upload: %v %+v\n%s", err, got, s.logs())
		}
		in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im2.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := mustPSQL(t, in, "SELECT count(*) FROM secret_tokens"); got != "0" {
			t.Errorf("secret_tokens has %s rows", got)
		}
	})

	t.Run("kill -9 during creates, a reboot, a dying instance, taken ports", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "")
		ctx := context.Background()
		im := s.readyImage(t, anonymise, baseTar)
		// Another program holds the first two ports of the range.
		var held []int
		for _, p := range []int{s.minPort, s.minPort + 1} {
			l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				t.Fatalf("taking port %d: %v", p, err)
			}
			t.Cleanup(func() { l.Close() })
			held = append(held, p)
		}

		// Many creates at once; the server dies after the first succeeds.
		const creates = 8
		first := make(chan struct{}, creates)
		var wg sync.WaitGroup
		for i := 0; i < creates; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{}); err == nil {
					first <- struct{}{}
				}
			}()
		}
		select {
		case <-first:
		case <-time.After(60 * time.Second):
			t.Fatalf("no create succeeded:\n%s", s.logs())
		}
		s.stop(syscall.SIGKILL)
		wg.Wait()
		s.start()
		ins := checkConsistent(t, s)
		t.Logf("%d of %d concurrent creates survived the kill", len(ins), creates)
		if len(ins) == 0 || len(ins) > creates {
			t.Fatalf("%d instances after the crash, want 1..%d", len(ins), creates)
		}
		for _, in := range ins {
			for _, p := range held {
				if in.Port == p {
					t.Errorf("instance %d got port %d, which another program holds", in.ID, p)
				}
			}
			mustPSQL(t, in, "CREATE TABLE kept AS SELECT "+strconv.FormatInt(in.ID, 10)+" AS id")
		}
		if in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{}); err != nil {
			t.Fatalf("create after the crash: %v", err)
		} else {
			mustPSQL(t, in, "CREATE TABLE kept AS SELECT "+strconv.FormatInt(in.ID, 10)+" AS id")
		}

		// A reboot: the server and every postgres (the state cluster's too)
		// die at once.
		s.stop(syscall.SIGKILL)
		killAll(t, s.dataPath)
		s.start()
		ins = checkConsistent(t, s)
		for _, in := range ins {
			if got := mustPSQL(t, in, "SELECT id FROM kept"); got != strconv.FormatInt(in.ID, 10) {
				t.Errorf("instance %d after the reboot: kept = %q", in.ID, got)
			}
		}

		// One instance's postgres dies while the server runs: it is
		// restarted and the API says so.
		victim := ins[0]
		victimDir := filepath.Join(s.layout().Instances(), strconv.FormatInt(victim.ID, 10))
		oldPID := pidOfPostmaster(t, victimDir)
		killPostmaster(t, victimDir)
		waitFor(t, 30*time.Second, "the killed instance to run again", func() bool {
			in, err := s.user().Instances().Get(ctx, draupnir.Principal{}, victim.ID)
			if err != nil || in.State != draupnir.InstanceRunning {
				return false
			}
			_, err = psql(t, victim, "SELECT 1")
			return err == nil
		})
		if pid := pidOfPostmaster(t, victimDir); pid == oldPID {
			t.Errorf("instance %d answers, but still from postmaster %d that was killed", victim.ID, pid)
		}
		if got := mustPSQL(t, victim, "SELECT id FROM kept"); got != strconv.FormatInt(victim.ID, 10) {
			t.Errorf("restarted instance lost its data: kept = %q", got)
		}
		for _, in := range ins {
			if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
				t.Errorf("destroy %d: %v", in.ID, err)
			}
		}
		if left := checkConsistent(t, s); len(left) != 0 {
			t.Errorf("%d instances left after destroying all", len(left))
		}
	})

	t.Run("a full disk during upload, finalise and create", func(t *testing.T) {
		t.Parallel()
		keys := &sshKeys{}
		s := startServerSize(t, 400<<20, "", keys)
		ctx := context.Background()
		up := s.upload()

		// Upload: a stream of many files, together far larger than the disk.
		im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), anonymise)
		if err != nil {
			t.Fatal(err)
		}
		freeBefore := freeBytes(t, s.dataPath)

		// scp of a file larger than the disk stops at the reserve: the
		// state database keeps room and the API stays up.
		big := filepath.Join(testenv.TempDir(t), "big")
		writeFile(t, big, io.LimitReader(rand.NewChaCha8([32]byte{2}), 600<<20))
		out, err := s.ssh(t, keys, keys.upload, "scp", big, "upload@127.0.0.1:/draupnir/image_uploads/"+strconv.FormatInt(im.ID, 10)+"/").CombinedOutput()
		if err == nil {
			t.Fatalf("scp of 600 MiB into a 400 MiB disk succeeded:\n%s", out)
		}
		os.Remove(big)
		if status, code := rawRequest(t, s, "GET", "/health_check"); status != 200 {
			t.Errorf("health check after an scp filled the disk: %d %s\n%s", status, code, s.logs())
		}
		os.Remove(filepath.Join(s.uploadDir(im.ID), "big"))
		syscall.Sync()

		cmd := s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "upload", strconv.FormatInt(im.ID, 10))
		cmd.Stdin = bigTar(64, 16<<20, false)
		out, err = cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "full") {
			t.Fatalf("streaming 1 GiB into a 400 MiB disk: %v\n%s; want a failure saying the disk is full", err, out)
		}
		if ents, _ := os.ReadDir(s.uploadDir(im.ID)); len(ents) != 0 {
			t.Errorf("a failed streaming upload left %d entries in the upload", len(ents))
		}
		// btrfs frees a deleted subvolume's space in the background.
		waitFor(t, 60*time.Second, "the failed upload's space to be freed", func() bool {
			syscall.Sync() // a commit wakes the cleaner
			return freeBytes(t, s.dataPath) > freeBefore-(20<<20)
		})

		// Finalise: the upload expands to more than the disk holds.
		s.copyInto(t, im.ID, baseTar)
		syscall.Sync()
		freeWithBase := freeBytes(t, s.dataPath)
		zeros := filepath.Join(s.uploadDir(im.ID), "zz.tar.gz")
		writeFile(t, zeros, bigTar(8, 64<<20, true))
		_, err = up.Images().Finalise(ctx, draupnir.Principal{}, im.ID)
		if !errors.Is(err, draupnir.ErrInsufficientStorage) || !strings.Contains(err.Error(), "full") {
			t.Fatalf("done on an upload larger than the disk: %v; want insufficient storage saying the disk is full\n%s", err, s.logs())
		}
		got, err := up.Images().Get(ctx, draupnir.Principal{}, im.ID)
		if err != nil || got.State != draupnir.ImageFailed || !strings.Contains(got.Error, "full") {
			t.Fatalf("image after a finalise on a full disk: %v %+v\n%s", err, got, s.logs())
		}
		for _, dir := range []string{"image_snapshots/" + strconv.FormatInt(im.ID, 10), "image_snapshots/" + strconv.FormatInt(im.ID, 10) + ".work"} {
			if _, err := os.Lstat(filepath.Join(s.dataPath, dir)); err == nil {
				t.Errorf("%s was left behind by a failed finalise", dir)
			}
		}
		os.Remove(zeros)
		// The failed finalise's work copy is a deleted subvolume whose space
		// btrfs returns in the background.
		waitFor(t, 60*time.Second, "the failed finalise's space to be freed", func() bool {
			syscall.Sync()
			return freeBytes(t, s.dataPath) > freeWithBase-(20<<20)
		})
		if got, err := up.Images().Finalise(ctx, draupnir.Principal{}, im.ID); err != nil || !got.Ready() {
			t.Fatalf("done after fixing the upload: %v %+v\n%s", err, got, s.logs())
		}

		// Create: something else has filled the disk.
		filler := fill(t, s.dataPath, 16<<20)
		if _, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{}); !errors.Is(err, draupnir.ErrInsufficientStorage) {
			t.Errorf("create on a full disk: %v; want insufficient storage\n%s", err, s.logs())
		}
		os.Remove(filler)
		// btrfs returns freed extents at a transaction commit, which a busy
		// machine can delay past one sync: retry while the answer is 507.
		var in *draupnir.Instance
		waitFor(t, 60*time.Second, "a create to succeed after freeing space", func() bool {
			syscall.Sync()
			in, err = s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
			if err != nil && !errors.Is(err, draupnir.ErrInsufficientStorage) {
				t.Fatalf("create after freeing space: %v\n%s", err, s.logs())
			}
			return err == nil
		})
		mustPSQL(t, in, "SELECT count(*) FROM customers")
		checkConsistent(t, s)
	})

	t.Run("the state database stops and comes back; missing binaries", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "")
		ctx := context.Background()
		up := s.upload()

		// An upload of a major version that is not installed.
		im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), "")
		if err != nil {
			t.Fatal(err)
		}
		writeTar(t, filepath.Join(s.uploadDir(im.ID), "base.tar"), []tarEntry{{name: "PG_VERSION", body: "99\n"}, {name: "global/pg_control", body: "x"}})
		_, err = up.Images().Finalise(ctx, draupnir.Principal{}, im.ID)
		if !errors.Is(err, draupnir.ErrUnprocessable) || !strings.Contains(err.Error(), "PostgreSQL 99") {
			t.Fatalf("done on a PostgreSQL 99 backup: %v; want 422 naming the missing version", err)
		}
		if got, _ := up.Images().Get(ctx, draupnir.Principal{}, im.ID); got == nil || got.State != draupnir.ImageFailed || !strings.Contains(got.Error, "99") {
			t.Errorf("image of a missing version: %+v", got)
		}

		// A finalise whose script is running when the state database goes.
		im2, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), "SELECT pg_sleep(1);\n"+anonymise)
		if err != nil {
			t.Fatal(err)
		}
		s.copyInto(t, im2.ID, baseTar)
		finalised := make(chan error, 1)
		go func() {
			_, err := up.Images().Finalise(ctx, draupnir.Principal{}, im2.ID)
			finalised <- err
		}()
		work := filepath.Join(s.layout().Snapshots(), strconv.FormatInt(im2.ID, 10)+".work")
		waitFor(t, 60*time.Second, "the finalise script to run", func() bool { return scriptRunning(work) })

		// The state cluster stops and cannot start again for a while (its
		// data directory has permissions postgres refuses).
		state := s.layout().State()
		if err := os.Chmod(state, 0o777); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(state, 0o700) })
		stopPostmaster(t, state, syscall.SIGINT)
		for _, path := range []string{"/images", "/instances", "/health_check"} {
			var status int
			var code string
			waitFor(t, 20*time.Second, path+" to answer 503", func() bool {
				status, code = rawRequest(t, s, "GET", path)
				return status == 503 || status >= 500
			})
			if status != 503 || code != "service_unavailable" {
				t.Errorf("GET %s with the state database down: %d %s, want 503 service_unavailable", path, status, code)
			}
		}
		if _, err := s.user().Instances().Create(ctx, draupnir.Principal{}, 1, draupnir.CreateOptions{}); !errors.Is(err, draupnir.ErrUnavailable) {
			t.Errorf("create with the state database down: %v, want unavailable", err)
		}
		// The finalise ends meanwhile and cannot record its outcome.
		waitFor(t, 60*time.Second, "the finalise to end for want of the state database", func() bool {
			_, err := os.Lstat(work)
			return errors.Is(err, os.ErrNotExist)
		})
		os.Chmod(state, 0o700)
		waitFor(t, 60*time.Second, "the API to recover", func() bool {
			status, _ := rawRequest(t, s, "GET", "/images")
			return status == 200
		})
		if err := <-finalised; err == nil {
			t.Error("a finalise that could not record its result succeeded")
		}
		got, err := up.Images().Get(ctx, draupnir.Principal{}, im2.ID)
		if err != nil || got.State != draupnir.ImageFailed {
			t.Fatalf("image whose finalise lost the state database: %v %+v; want failed, not stuck", err, got)
		}
		if got, err := up.Images().Finalise(ctx, draupnir.Principal{}, im2.ID); err != nil || !got.Ready() {
			t.Fatalf("done again after the state database came back: %v %+v\n%s", err, got, s.logs())
		}
		in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im2.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatalf("create after the state database came back: %v\n%s", err, s.logs())
		}
		mustPSQL(t, in, "SELECT 1")
	})
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proc is a process seen in /proc.
type proc struct {
	comm, cwd string
}

// procsUnder returns the live processes whose working directory lies in
// dir (postgres chdirs into its data directory).
func procsUnder(dir string) map[int]proc {
	out := map[int]proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || (cwd != dir && !strings.HasPrefix(cwd, dir+"/")) {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			// A zombie is dead already; PID 1 reaps it in its own time.
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
				continue
			}
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		out[pid] = proc{comm: strings.TrimSpace(string(comm)), cwd: cwd}
	}
	return out
}

func postgresUnder(dir string) []int {
	var pids []int
	for pid := range procsUnder(dir) {
		pids = append(pids, pid)
	}
	return pids
}

// scriptRunning reports whether a backend of the postgres in dir is busy
// with pg_sleep, i.e. the anonymisation script has started.
func scriptRunning(dir string) bool {
	for pid := range procsUnder(dir) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if strings.Contains(string(cmdline), "SELECT") {
			return true
		}
	}
	return false
}

// pidOfPostmaster reads the postmaster's pid from dataDir/postmaster.pid.
func pidOfPostmaster(t testing.TB, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	return pid
}

// killAll SIGKILLs every process running under dir, as a reboot would.
func killAll(t testing.TB, dir string) {
	t.Helper()
	// Again on every check: a postmaster may have forked a child just
	// before it died, which the first pass did not see; a reboot spares
	// none of them either.
	waitFor(t, 30*time.Second, "every process under "+dir+" to die", func() bool {
		procs := procsUnder(dir)
		for pid := range procs {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(procs) == 0
	})
}

// stopPostmaster sends sig to the postmaster of dataDir and waits for it to go.
func stopPostmaster(t testing.TB, dataDir string, sig syscall.Signal) {
	t.Helper()
	pid := pidOfPostmaster(t, dataDir)
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the postmaster of "+dataDir+" to stop", func() bool {
		_, ok := procsUnder(dataDir)[pid]
		return !ok
	})
}

// checkConsistent checks that rows, subvolumes, processes and socket
// directories agree, that every instance runs and answers, and returns the
// instances.
func checkConsistent(t testing.TB, s *server) []*draupnir.Instance {
	t.Helper()
	ins, err := s.upload().Instances().List(context.Background(), draupnir.Principal{})
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	ports := map[int]int64{}
	for _, in := range ins {
		id := strconv.FormatInt(in.ID, 10)
		rows[id] = true
		if other, dup := ports[in.Port]; dup {
			t.Errorf("instances %d and %d share port %d", other, in.ID, in.Port)
		}
		ports[in.Port] = in.ID
		if in.State != draupnir.InstanceRunning {
			t.Errorf("instance %d is %s (%s), want running", in.ID, in.State, in.Error)
			continue
		}
		if out, err := psql(t, in, "SELECT 1"); err != nil {
			t.Errorf("instance %d does not answer: %v %s", in.ID, err, out)
		}
	}
	instDir := s.layout().Instances()
	ents, _ := os.ReadDir(instDir)
	for _, e := range ents {
		if !rows[e.Name()] {
			t.Errorf("subvolume instances/%s has no row", e.Name())
		}
	}
	postmasters := map[string]int{}
	procs := procsUnder(instDir)
	for pid, p := range procs {
		id := strings.SplitN(strings.TrimPrefix(p.cwd, instDir+"/"), "/", 2)[0]
		if !rows[id] {
			t.Errorf("process %d (%s) runs in %s, which has no row", pid, p.comm, p.cwd)
		}
		ppid := parentOf(pid)
		if ppid == 0 {
			continue // exited since it was listed, e.g. the backend of the last query
		}
		if _, child := procs[ppid]; !child {
			postmasters[id]++
		}
	}
	for id := range rows {
		if postmasters[id] != 1 {
			t.Errorf("instance %s has %d postmasters", id, postmasters[id])
		}
	}
	runEnts, _ := os.ReadDir(s.runPath)
	for _, e := range runEnts {
		if _, err := strconv.Atoi(e.Name()); err == nil && !rows[e.Name()] {
			t.Errorf("socket directory %s/%s has no row", s.runPath, e.Name())
		}
	}
	return ins
}

func parentOf(pid int) int {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// rawRequest sends an API request as the upload principal and returns the
// status and the first error code.
func rawRequest(t testing.TB, s *server, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, s.url+path, nil)
	req.Header.Set("Draupnir-Version", draupnir.Version)
	req.Header.Set("Authorization", "Bearer "+sharedSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	code := ""
	if i := strings.Index(string(b), `"code":"`); i >= 0 {
		code = strings.SplitN(string(b[i+8:]), `"`, 2)[0]
	}
	return resp.StatusCode, code
}

// pipeInto starts cmd with a pipe on its stdin and returns the pipe.
func pipeInto(t testing.TB, cmd *exec.Cmd) io.WriteCloser {
	t.Helper()
	pw, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pw.Close()
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return pw
}

func freeBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill allocates a file in dir that leaves about leave bytes free, and
// returns its path; the test removes it to free the space again.
func fill(t testing.TB, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t.Cleanup(func() { os.Remove(path) })
	// btrfs reports free space loosely: allocate in steps until it is full.
	var off int64
	for {
		free := freeBytes(t, dir) - leave
		if free < 1<<20 {
			break
		}
		step := free
		if err := unix.Fallocate(int(f.Fd()), 0, off, step); err != nil {
			if errors.Is(err, syscall.ENOSPC) && step > 1<<20 {
				// Try smaller pieces until nothing fits.
				if err := unix.Fallocate(int(f.Fd()), 0, off, 1<<20); err != nil {
					break
				}
				off += 1 << 20
				continue
			}
			break
		}
		off += step
		syscall.Sync()
	}
	return path
}

// bigTar is a tar stream of n files of size bytes each: zeros, or
// incompressible bytes.
func bigTar(n int, size int64, zeros bool) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		var w io.Writer = pw
		var gz *gzip.Writer
		if zeros {
			gz, _ = gzip.NewWriterLevel(pw, gzip.BestSpeed)
			w = gz
		}
		tw := tar.NewWriter(w)
		var src io.Reader = rand.NewChaCha8([32]byte{1})
		if zeros {
			src = zeroReader{}
		}
		for i := 0; i < n; i++ {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("big%d", i), Mode: 0o600, Size: size, Typeflag: tar.TypeReg}); err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := io.CopyN(tw, src, size); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		err := tw.Close()
		if gz != nil && err == nil {
			err = gz.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func writeFile(t testing.TB, path string, r io.Reader) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestKillDuringLifetimeOps kills -9 the server in the middle of a reset, of
// a save and of creates with a lifetime, at points held open by stopping a
// postgres (SIGSTOP) the operation waits for, and checks that the next
// server's reconcile leaves nothing half-done: the instance runs on its
// port with its password and either its old data or the image's, never a
// mix; a half-saved image is gone; no subvolume, row or process is left
// over.
func TestKillDuringLifetimeOps(t *testing.T) {
	s := startServer(t, "")
	logOnFailure(t, s)
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	user := s.user().Instances()
	in, err := user.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{TTL: 8 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10))
	// written changes the instance's data; resetData tells it apart from
	// the image's.
	written := func(t *testing.T) {
		t.Helper()
		mustPSQL(t, in, "DELETE FROM customers WHERE id <= 10; CREATE TABLE IF NOT EXISTS notes AS SELECT 'mine' AS n")
	}
	resetData := func(t *testing.T) bool {
		t.Helper()
		switch got := mustPSQL(t, in, "SELECT count(*), to_regclass('notes') IS NULL FROM customers"); got {
		case "1000|t":
			return true
		case "990|f":
			return false
		default:
			t.Fatalf("instance %d holds neither its own data nor the image's: %q", in.ID, got)
			return false
		}
	}
	// same checks that the instance kept everything but its data.
	same := func(t *testing.T) {
		t.Helper()
		got, err := user.Get(ctx, draupnir.Principal{}, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != draupnir.InstanceRunning || got.Port != in.Port || got.Password != in.Password ||
			got.ImageID != im.ID || !got.ExpiresAt.Equal(in.ExpiresAt) {
			t.Errorf("after the restart instance %d is %+v; it was %+v", in.ID, got, in)
		}
	}
	// crash kills the server, lets the processes it held go on, and starts
	// a new server.
	crash := func(t *testing.T, held []int, done <-chan error) {
		t.Helper()
		s.stop(syscall.SIGKILL)
		<-done // the request fails with the server
		for _, pid := range held {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		s.start()
		checkConsistent(t, s)
	}
	// hold stops (SIGSTOP) every process under dir once one shows up that
	// is not in old (nor a backend of the instance in), and returns them;
	// none if finished is closed first. It looks every millisecond or so:
	// a save's private postgres lives for a few tens of them.
	hold := func(t *testing.T, under string, old map[int]proc, finished <-chan struct{}) []int {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			var held []int
			for pid, p := range procsUnder(under) {
				if _, ok := old[pid]; !ok && (under == dir || !strings.HasPrefix(p.cwd+"/", dir+"/")) {
					syscall.Kill(pid, syscall.SIGSTOP)
					held = append(held, pid)
				}
			}
			if len(held) > 0 {
				return held
			}
			select {
			case <-finished:
				t.Logf("the operation finished before a new postgres under %s was seen", under)
				return nil
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new postgres under %s", under)
			}
			time.Sleep(time.Millisecond)
		}
	}

	t.Run("reset, before the old postgres stops", func(t *testing.T) {
		written(t)
		pm := pidOfPostmaster(t, dir)
		syscall.Kill(pm, syscall.SIGSTOP)
		done := make(chan error, 1)
		go func() { _, err := user.Reset(ctx, draupnir.Principal{}, in.ID, 0); done <- err }()
		waitFor(t, 30*time.Second, "the reset to begin", func() bool {
			got, err := user.Get(ctx, draupnir.Principal{}, in.ID)
			return err == nil && got.State == draupnir.InstanceResetting
		})
		crash(t, []int{pm}, done)
		same(t)
		if !resetData(t) {
			t.Error("the interrupted reset was not finished: the instance holds its old data")
		}
	})

	t.Run("reset, while the new postgres starts", func(t *testing.T) {
		written(t)
		old := procsUnder(dir)
		done := make(chan error, 1)
		go func() { _, err := user.Reset(ctx, draupnir.Principal{}, in.ID, 0); done <- err }()
		held := hold(t, dir, old, nil)
		crash(t, held, done)
		same(t)
		if !resetData(t) {
			t.Error("the interrupted reset was not finished: the instance holds its old data")
		}
	})

	// images lists the images by id; settled, it also checks that nothing
	// else is among the image snapshots (no work directory either).
	images := func(t *testing.T, settled bool) map[int64]*draupnir.Image {
		t.Helper()
		list, err := s.upload().Images().List(ctx, draupnir.Principal{})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[int64]*draupnir.Image{}
		for _, m := range list {
			ids[m.ID] = m
		}
		ents, _ := os.ReadDir(s.layout().Snapshots())
		for _, e := range ents {
			if !settled {
				break
			}
			id, err := strconv.ParseInt(e.Name(), 10, 64)
			if err != nil || ids[id] == nil {
				t.Errorf("image_snapshots/%s belongs to no image", e.Name())
			}
		}
		return ids
	}
	// saved returns the image saved from the instance, if any.
	saved := func(list map[int64]*draupnir.Image) *draupnir.Image {
		for _, m := range list {
			if m.FromInstanceID == in.ID {
				return m
			}
		}
		return nil
	}
	for _, tt := range []struct {
		name string
		// pause holds the save at its point and returns what it stopped.
		pause func(t *testing.T, finished <-chan struct{}) []int
	}{
		{"save, at the instance's checkpoint", func(t *testing.T, finished <-chan struct{}) []int {
			// started by the caller with the instance's postmaster stopped
			waitFor(t, 30*time.Second, "the save to register its image", func() bool {
				return saved(images(t, false)) != nil
			})
			return nil
		}},
		{"save, while the copy boots to shut down cleanly", func(t *testing.T, finished <-chan struct{}) []int {
			// Nothing else runs under the image snapshots.
			return hold(t, s.layout().Snapshots(), nil, finished)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			written(t)
			var held []int
			if strings.Contains(tt.name, "checkpoint") {
				pm := pidOfPostmaster(t, dir)
				syscall.Kill(pm, syscall.SIGSTOP)
				held = append(held, pm)
			}
			done, finished := make(chan error, 1), make(chan struct{})
			go func() {
				_, err := user.Save(ctx, draupnir.Principal{}, in.ID)
				done <- err
				close(finished)
			}()
			held = append(held, tt.pause(t, finished)...)
			crash(t, held, done)
			same(t)
			if resetData(t) {
				t.Error("an interrupted save changed the instance's data")
			}
			// Gone, or (had it finished before the kill) ready.
			if m := saved(images(t, true)); m != nil {
				if !m.Ready() {
					t.Errorf("the interrupted save left image %d %s", m.ID, m.State)
				}
				if err := s.user().Images().Destroy(ctx, draupnir.Principal{}, m.ID); err != nil {
					t.Fatal(err)
				}
			}
			if pids := postgresUnder(s.layout().Snapshots()); len(pids) > 0 {
				t.Errorf("postgres processes left under the image snapshots: %v", pids)
			}
			// And a save now works.
			m, err := user.Save(ctx, draupnir.Principal{}, in.ID)
			if err != nil || !m.Ready() {
				t.Fatalf("saving after the crash: %v %+v", err, m)
			}
			if err := s.user().Images().Destroy(ctx, draupnir.Principal{}, m.ID); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("creates with a lifetime", func(t *testing.T) {
		// Held at their start: every new postgres under instances/ stops.
		old := procsUnder(s.layout().Instances())
		const creates = 3
		done := make(chan error, creates)
		for range creates {
			go func() {
				_, err := user.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{TTL: time.Hour})
				done <- err
			}()
		}
		held := hold(t, s.layout().Instances(), old, nil)
		s.stop(syscall.SIGKILL)
		for range creates {
			<-done
		}
		for _, pid := range held {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		s.start()
		for _, got := range checkConsistent(t, s) {
			if got.ID != in.ID && (got.ExpiresAt.IsZero() || time.Until(got.ExpiresAt) > time.Hour) {
				t.Errorf("instance %d survived its interrupted create without its lifetime: expires at %v", got.ID, got.ExpiresAt)
			}
		}
		same(t)
	})
}
