package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/client"
	"github.com/draupnir-db/draupnir/images/extract"
	"github.com/draupnir-db/draupnir/supervisor"
)

const (
	benchDB       = "bench"
	largeDB       = "bench_large"
	trivialScript = "SELECT 1;"
)

// makeImage fills the source with pgbench data, backs it up, uploads the
// backup into a new image and finalises it, timing the finalise.
func (e *env) makeImage(ctx context.Context) error {
	t0 := time.Now()
	if err := e.src.pgbench(ctx, benchDB, e.cfg.Scale); err != nil {
		return err
	}
	e.rep.Values["pgbench_init_ms"] = ms(time.Since(t0))
	t0 = time.Now()
	backup, err := e.src.baseBackup(ctx, "main", "stream")
	if err != nil {
		return err
	}
	e.backup = backup
	e.rep.Values["basebackup_ms"] = ms(time.Since(t0))
	size, err := dirSize(backup)
	if err != nil {
		return err
	}
	e.rep.Values["backup_bytes"] = float64(size)
	id, finalise, err := e.imageOf(ctx, backup, trivialScript)
	if err != nil {
		return err
	}
	e.image = id
	e.rep.sample("finalise_ms", finalise)
	e.log.Info("image ready", "id", id, "backup", fmtBytes(float64(size)), "finalise", finalise)
	return nil
}

// imageOf makes a ready image of a pg_basebackup directory and returns its id
// and how long POST /images/:id/done took.
func (e *env) imageOf(ctx context.Context, backup, script string) (int64, time.Duration, error) {
	return e.imageOn(ctx, e.srv, e.upload, e.layout().Uploads(), backup, script)
}

// imageOn is imageOf on server srv, reached as up, whose uploads are in
// uploads.
func (e *env) imageOn(ctx context.Context, srv *server, up *client.Client, uploads, backup, script string) (int64, time.Duration, error) {
	im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), script)
	if err != nil {
		return 0, 0, err
	}
	// The SSH door is what uploads in production; here the bytes are
	// reflinked straight into the upload subvolume, which is what a finished
	// upload leaves there.
	dst := filepath.Join(uploads, strconv.FormatInt(im.ID, 10))
	ents, err := os.ReadDir(backup)
	if err != nil {
		return 0, 0, err
	}
	for _, ent := range ents {
		if err := cloneFile(filepath.Join(backup, ent.Name()), filepath.Join(dst, ent.Name())); err != nil {
			return 0, 0, err
		}
	}
	// Start from a quiet disk: no writeback of earlier work (the pgbench
	// load, the backup) competing with the finalise.
	if err := syncfs(e.mnt); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	done, err := up.Images().Finalise(ctx, draupnir.Principal{}, im.ID)
	d := time.Since(t0)
	if err != nil {
		return 0, 0, fmt.Errorf("finalising image %d: %w\nserver log: %s", im.ID, err, srv.logTail())
	}
	if !done.Ready() {
		return 0, 0, fmt.Errorf("image %d is %s after done: %s", im.ID, done.State, done.Error)
	}
	return im.ID, d, nil
}

// cloneFile copies src to dst by reflink, falling back to a plain copy.
func cloneFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return fmt.Errorf("copying %s: %w", src, err)
		}
	}
	return out.Close()
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

// connect opens one connection to instance in as its user (connConfig).
func connect(ctx context.Context, in *draupnir.Instance) (*pgx.Conn, error) {
	cfg, err := connConfig(in)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to instance %d: %w", in.ID, err)
	}
	return conn, nil
}

// connConfig is how a user connects to an instance with what the API
// returned: TCP, TLS verified against the instance CA, SCRAM password.
func connConfig(in *draupnir.Instance) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig("connect_timeout=10")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port = "127.0.0.1", uint16(in.Port)
	cfg.User, cfg.Password, cfg.Database = in.Username, in.Password, in.Database
	if in.CACertificate == "" {
		return nil, fmt.Errorf("instance %d came without a CA certificate", in.ID)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(in.CACertificate)) {
		return nil, fmt.Errorf("instance %d: the CA certificate does not parse", in.ID)
	}
	cfg.TLSConfig = &tls.Config{RootCAs: pool, ServerName: in.Hostname, MinVersion: tls.VersionTLS12}
	cfg.Fallbacks = nil
	return cfg, nil
}

// firstQuery connects with cfg and runs SELECT 1.
func firstQuery(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		return fmt.Errorf("SELECT 1 answered %d", one)
	}
	return nil
}

// createAndQuery creates an instance of image and returns it once a query
// has been answered with its credentials, with the time the API call took
// and the total.
func (e *env) createAndQuery(ctx context.Context, image int64) (in *draupnir.Instance, api, total time.Duration, err error) {
	t0 := time.Now()
	in, err = e.user.Instances().Create(ctx, draupnir.Principal{}, image, draupnir.CreateOptions{})
	api = time.Since(t0)
	if err != nil {
		return nil, api, 0, fmt.Errorf("creating an instance of image %d: %w", image, err)
	}
	cfg, err := connConfig(in)
	if err == nil {
		err = firstQuery(ctx, cfg)
	}
	total = time.Since(t0)
	if err != nil {
		return in, api, total, fmt.Errorf("first query on instance %d (port %d): %w", in.ID, in.Port, err)
	}
	return in, api, total, nil
}

// createOnce times one create → first query → destroy cycle of image,
// recorded under keys prefixed with prefix, or as a warm-up.
func (e *env) createOnce(ctx context.Context, image int64, prefix string, record bool) error {
	in, api, total, err := e.createAndQuery(ctx, image)
	if err != nil {
		if in != nil {
			e.user.Instances().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID)
		}
		return err
	}
	// A second connection to the now running instance: what the client
	// side of a first query costs (TLS + SCRAM + SELECT 1).
	cfg, err := connConfig(in)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := firstQuery(ctx, cfg); err != nil {
		return err
	}
	connect := time.Since(t0)
	t0 = time.Now()
	if err := e.user.Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
		return fmt.Errorf("destroying instance %d: %w", in.ID, err)
	}
	destroy := time.Since(t0)
	if !record {
		e.rep.sample(prefix+"warmup_create_first_query_ms", total)
		return nil
	}
	e.rep.sample(prefix+"create_first_query_ms", total)
	e.rep.sample(prefix+"create_api_ms", api)
	e.rep.sample(prefix+"connect_query_running_ms", connect)
	e.rep.sample(prefix+"destroy_ms", destroy)
	return nil
}

// createVsFloor measures figures (1), (2) and (4).
func (e *env) createVsFloor(ctx context.Context) error {
	if err := e.createAndFloor(ctx, e.image, benchDB, ""); err != nil {
		return err
	}
	create := Summarize(e.rep.Samples["create_first_query_ms"])
	floor := Summarize(e.rep.Samples["floor_ms"])
	api := Summarize(e.rep.Samples["create_api_ms"])
	conn := Summarize(e.rep.Samples["connect_query_running_ms"])
	destroy := Summarize(e.rep.Samples["destroy_ms"])
	server := e.srv.requestDurations("POST", "/instances")
	for _, d := range server {
		e.rep.Samples["server_post_instances_ms"] = append(e.rep.Samples["server_post_instances_ms"], d)
	}
	srv := Summarize(server)
	ratio := create.P50 / floor.P50
	e.rep.Values["create_over_floor_p50"] = ratio
	e.rep.add(Figure{
		Name:     fmt.Sprintf("POST /instances → first query (TCP, TLS, SCRAM), scale %d image, n=%d", e.cfg.Scale, create.N),
		Goal:     "p50 ≤ 100 ms, p95 ≤ 200 ms",
		Measured: fmt.Sprintf("p50 %s, p95 %s (API call p50 %s, server-side p50 %s; connect+query on a running instance p50 %s)", fmtMS(create.P50), fmtMS(create.P95), fmtMS(api.P50), fmtMS(srv.P50), fmtMS(conn.P50)),
		Status:   verdict(create.P50 <= 100 && create.P95 <= 200),
	})
	e.rep.add(Figure{
		Name:     "same, against the floor (btrfs snapshot + postgres exec + first SELECT 1 on the unix socket)",
		Goal:     "≤ 1.2× the floor",
		Measured: fmt.Sprintf("floor p50 %s, p95 %s (snapshot p50 %s)", fmtMS(floor.P50), fmtMS(floor.P95), fmtMS(Summarize(e.rep.Samples["floor_snapshot_ms"]).P50)),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   verdict(ratio <= 1.2),
	})
	e.rep.add(Figure{
		Name:     "DELETE /instances/:id",
		Goal:     "p50 ≤ 100 ms",
		Measured: fmt.Sprintf("p50 %s, p95 %s", fmtMS(destroy.P50), fmtMS(destroy.P95)),
		Status:   verdict(destroy.P50 <= 100),
	})
	return nil
}

// createAndFloor times Samples creates and as many floor starts of image.
func (e *env) createAndFloor(ctx context.Context, image int64, db, prefix string) error {
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	// One unrecorded warm-up each, then alternate, so that drift and the
	// load of anything else on the machine hit both series alike.
	if err := e.createOnce(ctx, image, prefix, false); err != nil {
		return err
	}
	if err := e.floorSeries(ctx, image, db, 1, prefix, false); err != nil {
		return err
	}
	for i := 0; i < e.cfg.Samples; i++ {
		if err := e.createOnce(ctx, image, prefix, true); err != nil {
			return err
		}
		if err := e.floorSeries(ctx, image, db, 1, prefix, true); err != nil {
			return err
		}
	}
	return nil
}

// quiesce waits until earlier work no longer loads the filesystem: dirty
// data written back, deleted subvolumes (finalise's work copy, a removed
// backup) cleaned up. Otherwise btrfs transaction commits, which every
// snapshot waits for, would be measured instead of creates.
func (e *env) quiesce(ctx context.Context) error {
	if err := syncfs(e.mnt); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "btrfs", "subvolume", "sync", e.mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("btrfs subvolume sync: %w: %s", err, tail(out))
	}
	return syncfs(e.mnt)
}

// floorSeries times n bare starts: a writable btrfs snapshot of the image,
// postgres exec'd as the postgres user, connect attempts every 250 µs until
// SELECT 1 is answered. Nothing of draupnir is in the path.
func (e *env) floorSeries(ctx context.Context, image int64, db string, n int, prefix string, record bool) error {
	snap := filepath.Join(e.layout().Snapshots(), strconv.FormatInt(image, 10))
	parent := filepath.Join(e.mnt, "floor")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	postgres := filepath.Join(e.bin, "postgres")
	for i := 0; i < n; i++ {
		dir := filepath.Join(parent, strconv.Itoa(i))
		sock := filepath.Join(e.work, "floor-"+strconv.Itoa(i))
		port, err := freePort()
		if err != nil {
			return err
		}
		logf, err := os.CreateTemp(e.work, "floor-*.log")
		if err != nil {
			return err
		}
		cfg, err := pgx.ParseConfig("connect_timeout=5")
		if err != nil {
			return err
		}
		cfg.Host, cfg.Port, cfg.User, cfg.Database = sock, uint16(port), "postgres", db

		t0 := time.Now()
		if err := btrfs.Snapshot(snap, dir, false); err != nil {
			logf.Close()
			return fmt.Errorf("floor snapshot: %w", err)
		}
		tSnap := time.Since(t0)
		err = e.mkdirPostgres(sock, 0o700)
		var cmd *exec.Cmd
		if err == nil {
			cmd = exec.Command(postgres, "-D", dir, "-p", strconv.Itoa(port),
				"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+sock)
			cmd.Dir = dir
			cmd.Stdout, cmd.Stderr = logf, logf
			cmd.SysProcAttr = e.credential()
			cmd.SysProcAttr.Setpgid = true
			err = cmd.Start()
		}
		var exited chan struct{}
		if err == nil {
			exited = make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			err = waitQuery(ctx, cfg, exited)
		}
		total := time.Since(t0)
		if cmd != nil && cmd.Process != nil && exited != nil {
			cmd.Process.Signal(syscall.SIGQUIT) // immediate: the copy is thrown away
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
		}
		logf.Close()
		os.RemoveAll(sock)
		if derr := btrfs.Delete(dir); derr != nil && err == nil {
			err = derr
		}
		if err != nil {
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("floor start %d: %w: %s", i, err, tail(b))
		}
		os.Remove(logf.Name())
		if !record {
			continue
		}
		e.rep.sample(prefix+"floor_ms", total)
		e.rep.sample(prefix+"floor_snapshot_ms", tSnap)
	}
	return nil
}

// waitQuery retries connecting until SELECT 1 is answered.
func waitQuery(ctx context.Context, cfg *pgx.ConnConfig, exited <-chan struct{}) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := firstQuery(ctx, cfg)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("postgres exited: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within a minute: %w", err)
		}
		time.Sleep(250 * time.Microsecond)
	}
}

// alternatives measures figure (3): what users do without draupnir, on the
// same data, on the same filesystem.
func (e *env) alternatives(ctx context.Context) error {
	// As users run them: with Postgres' default fsync = on.
	if err := e.src.setFsync(ctx, true); err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = e.src.sock, uint16(e.src.port), "postgres", "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting to the source cluster: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var fsync string
	if err := conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil || fsync != "on" {
		return fmt.Errorf("the source's fsync is %q after turning it on (%v)", fsync, err)
	}
	run := func(sql string) error {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		return nil
	}
	for i := 0; i < e.cfg.CompareSamples; i++ {
		for _, strategy := range []string{"wal_log", "file_copy"} {
			t0 := time.Now()
			if err := run(fmt.Sprintf("CREATE DATABASE bench_copy TEMPLATE %s STRATEGY %s", benchDB, strategy)); err != nil {
				return err
			}
			e.rep.sample("template_"+strategy+"_ms", time.Since(t0))
			if err := run("DROP DATABASE bench_copy"); err != nil {
				return err
			}
		}
		t0 := time.Now()
		if err := run("CREATE DATABASE bench_restore"); err != nil {
			return err
		}
		if err := e.dumpRestore(ctx, benchDB, "bench_restore"); err != nil {
			return err
		}
		e.rep.sample("dump_restore_ms", time.Since(t0))
		if err := run("DROP DATABASE bench_restore"); err != nil {
			return err
		}
	}
	create := Summarize(e.rep.Samples["create_first_query_ms"]).P50
	for _, alt := range []struct{ key, name string }{
		{"template_wal_log_ms", "CREATE DATABASE … TEMPLATE (STRATEGY wal_log)"},
		{"template_file_copy_ms", "CREATE DATABASE … TEMPLATE (STRATEGY file_copy)"},
		{"dump_restore_ms", "pg_dump -Fc | pg_restore"},
	} {
		s := Summarize(e.rep.Samples[alt.key])
		speedup := s.P50 / create
		e.rep.Values[alt.key[:len(alt.key)-3]+"_speedup"] = speedup
		e.rep.add(Figure{
			Name:     fmt.Sprintf("%s of the same data (fsync on), n=%d", alt.name, s.N),
			Goal:     "our create → first query ≥ 50× faster",
			Measured: fmt.Sprintf("p50 %s", fmtMS(s.P50)),
			Ratio:    fmt.Sprintf("%.0f× slower than ours", speedup),
			Status:   verdict(speedup >= 50),
		})
	}
	return nil
}

// dumpRestore pipes pg_dump -Fc of from into pg_restore into to.
func (e *env) dumpRestore(ctx context.Context, from, to string) error {
	conn := []string{"-h", e.src.sock, "-p", strconv.Itoa(e.src.port), "-U", "postgres"}
	dump := exec.CommandContext(ctx, filepath.Join(e.bin, "pg_dump"), append(conn, "-Fc", "-d", from)...)
	restore := exec.CommandContext(ctx, filepath.Join(e.bin, "pg_restore"), append(conn, "--exit-on-error", "-d", to)...)
	for _, c := range []*exec.Cmd{dump, restore} {
		c.Dir = "/"
		c.SysProcAttr = e.credential()
	}
	pipe, err := dump.StdoutPipe()
	if err != nil {
		return err
	}
	restore.Stdin = pipe
	var dumpErr, restoreErr limitedBuffer
	dump.Stderr, restore.Stderr = &dumpErr, &restoreErr
	if err := dump.Start(); err != nil {
		return err
	}
	if err := restore.Run(); err != nil {
		dump.Process.Kill()
		dump.Wait()
		return fmt.Errorf("pg_restore: %w: %s", err, restoreErr.String())
	}
	if err := dump.Wait(); err != nil {
		return fmt.Errorf("pg_dump: %w: %s", err, dumpErr.String())
	}
	return nil
}

// limitedBuffer keeps the first 8 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 8<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

// concurrent measures figure (6): Concurrent creates at once, each followed
// by its first query.
func (e *env) concurrent(ctx context.Context) error {
	n := e.cfg.Concurrent
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		made  []*draupnir.Instance
		times []time.Duration
	)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, _, total, err := e.createAndQuery(ctx, e.image)
			mu.Lock()
			defer mu.Unlock()
			if in != nil {
				made = append(made, in)
			}
			if err != nil {
				errs = append(errs, err)
				return
			}
			times = append(times, total)
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	for _, in := range made {
		if err := e.user.Instances().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID); err != nil {
			errs = append(errs, fmt.Errorf("destroying instance %d: %w", in.ID, err))
		}
	}
	for _, d := range times {
		e.rep.sample("concurrent_create_first_query_ms", d)
	}
	e.rep.Values["concurrent_wall_ms"] = ms(wall)
	s := Summarize(e.rep.Samples["concurrent_create_first_query_ms"])
	seq := Summarize(e.rep.Samples["create_first_query_ms"]).P50 * float64(n)
	e.rep.add(Figure{
		Name:     fmt.Sprintf("%d concurrent creates → first query", n),
		Goal:     "all succeed, p95 ≤ 1 s",
		Measured: fmt.Sprintf("%d/%d succeeded; p50 %s, p95 %s; all done in %s vs %s one after another (%d × sequential p50)", len(times), n, fmtMS(s.P50), fmtMS(s.P95), fmtMS(ms(wall)), fmtMS(seq), n),
		Ratio:    fmt.Sprintf("%.2f× the sequential time", ms(wall)/seq),
		Status:   verdict(len(errs) == 0 && len(times) == n && s.P95 <= 1000),
	})
	for _, err := range errs {
		e.rep.note("concurrent create: %v", err)
	}
	return nil
}

// idle measures figures (5) and (8): Idle instances at once, their exclusive
// disk and memory, GET /instances with them all, then that destroying them
// leaves nothing behind.
func (e *env) idle(ctx context.Context) error {
	var made []*draupnir.Instance
	destroyAll := func(ctx context.Context) error {
		var errs []error
		for _, in := range made {
			t0 := time.Now()
			if err := e.user.Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
				errs = append(errs, fmt.Errorf("destroying instance %d: %w", in.ID, err))
				continue
			}
			e.rep.sample("idle_destroy_ms", time.Since(t0))
		}
		made = nil
		return errors.Join(errs...)
	}
	defer func() {
		if len(made) > 0 {
			destroyAll(context.WithoutCancel(ctx))
		}
	}()
	for i := 0; i < e.cfg.Idle; i++ {
		in, _, total, err := e.createAndQuery(ctx, e.image)
		if in != nil {
			made = append(made, in)
		}
		if err != nil {
			return err
		}
		e.rep.sample("idle_create_first_query_ms", total)
	}

	// (8) listing, with every idle instance as a row.
	for i := 0; i < e.cfg.ListSamples; i++ {
		t0 := time.Now()
		list, err := e.user.Instances().List(ctx, draupnir.Principal{})
		if err != nil {
			return err
		}
		e.rep.sample("list_instances_ms", time.Since(t0))
		if len(list) != len(made) {
			return fmt.Errorf("GET /instances listed %d instances, %d exist", len(list), len(made))
		}
	}
	list := Summarize(e.rep.Samples["list_instances_ms"])
	e.rep.add(Figure{
		Name:     fmt.Sprintf("GET /instances with %d rows (not 1,000), n=%d", len(made), list.N),
		Goal:     "p50 ≤ 10 ms with 1,000 rows",
		Measured: fmt.Sprintf("p50 %s, p95 %s", fmtMS(list.P50), fmtMS(list.P95)),
		Status:   Info,
	})
	e.rep.note("GET /instances was timed with the %d real idle instances: the state database belongs to the server and rows without a postgres behind them would be \"restarted\" by its reconcile, so there is no clean way to insert 1,000 fake rows. With -idle 100 the listing has 100 rows.", len(made))

	// (5) cost of each idle instance. Let background workers settle, then
	// flush dirty pages so btrfs accounts what each instance wrote.
	time.Sleep(2 * time.Second)
	unix.Sync()
	var maxExcl, maxPSS float64
	for _, in := range made {
		dir := filepath.Join(e.layout().Instances(), strconv.FormatInt(in.ID, 10))
		_, excl, err := btrfs.Usage(ctx, dir)
		if err != nil {
			return err
		}
		pss, procs, err := instancePSS(dir)
		if err != nil {
			return err
		}
		e.rep.Samples["idle_exclusive_bytes"] = append(e.rep.Samples["idle_exclusive_bytes"], float64(excl))
		e.rep.Samples["idle_pss_bytes"] = append(e.rep.Samples["idle_pss_bytes"], float64(pss))
		e.rep.Samples["idle_processes"] = append(e.rep.Samples["idle_processes"], float64(procs))
		maxExcl, maxPSS = max(maxExcl, float64(excl)), max(maxPSS, float64(pss))
	}
	excl := Summarize(e.rep.Samples["idle_exclusive_bytes"])
	pss := Summarize(e.rep.Samples["idle_pss_bytes"])
	imageBytes, _ := dirSize(filepath.Join(e.layout().Snapshots(), strconv.FormatInt(e.image, 10)))
	e.rep.Values["image_bytes"] = float64(imageBytes)
	e.rep.add(Figure{
		Name:     fmt.Sprintf("%d idle instances at once: exclusive disk each (btrfs, after sync)", len(made)),
		Goal:     "≤ 1 MiB each",
		Measured: fmt.Sprintf("p50 %s, max %s (image %s)", fmtBytes(excl.P50), fmtBytes(maxExcl), fmtBytes(float64(imageBytes))),
		Ratio:    fmt.Sprintf("%.5f× the image", maxExcl/float64(max(imageBytes, 1))),
		Status:   verdict(maxExcl <= 1<<20),
	})
	e.rep.add(Figure{
		Name:     fmt.Sprintf("%d idle instances at once: memory each (PSS of its postmaster and children)", len(made)),
		Goal:     "≤ 15 MiB each",
		Measured: fmt.Sprintf("p50 %s, max %s (%.0f processes each)", fmtBytes(pss.P50), fmtBytes(maxPSS), Summarize(e.rep.Samples["idle_processes"]).P50),
		Status:   verdict(maxPSS <= 15<<20),
	})

	if err := destroyAll(ctx); err != nil {
		return err
	}
	left, err := e.leftovers(ctx)
	if err != nil {
		return err
	}
	st := Pass
	measured := "nothing left: no rows, no subvolumes, no processes, no sockets"
	if len(left) > 0 {
		st, measured = Fail, fmt.Sprint(left)
	}
	d := Summarize(e.rep.Samples["idle_destroy_ms"])
	e.rep.add(Figure{
		Name:     fmt.Sprintf("destroy all %d, then look for leftovers", e.cfg.Idle),
		Goal:     "nothing left behind",
		Measured: fmt.Sprintf("%s; destroy p50 %s", measured, fmtMS(d.P50)),
		Status:   st,
	})
	return nil
}

// leftovers lists what remains of instances once all are destroyed.
func (e *env) leftovers(ctx context.Context) ([]string, error) {
	var left []string
	list, err := e.upload.Instances().List(ctx, draupnir.Principal{})
	if err != nil {
		return nil, err
	}
	if len(list) > 0 {
		left = append(left, fmt.Sprintf("%d instance rows", len(list)))
	}
	dir := e.layout().Instances()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, ent := range ents {
		left = append(left, "entry "+filepath.Join(dir, ent.Name()))
	}
	if pids := processesUnder(dir); len(pids) > 0 {
		left = append(left, fmt.Sprintf("processes %v", pids))
	}
	run, _ := os.ReadDir(e.runPath)
	for _, ent := range run {
		if _, err := strconv.Atoi(ent.Name()); err == nil {
			left = append(left, "socket directory "+filepath.Join(e.runPath, ent.Name()))
		}
	}
	return left, nil
}

// finaliseBaseline measures figure (7): the unavoidable part of a finalise —
// extracting the backup and one private start and clean stop of postgres —
// timed alone, against the finalise of the same backup.
func (e *env) finaliseBaseline(ctx context.Context) error {
	dir := filepath.Join(e.mnt, "extract-alone")
	sock := filepath.Join(e.work, "extract-sock")
	// Read from fresh reflinks, as finalise reads the upload's: a new inode
	// whose pages are not cached yet. And start, like finalise, from a quiet
	// disk.
	clones := filepath.Join(e.mnt, "extract-clones")
	if err := os.Mkdir(clones, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(clones)
	for _, f := range []string{"base.tar", "pg_wal.tar"} {
		if err := cloneFile(filepath.Join(e.backup, f), filepath.Join(clones, f)); err != nil {
			return err
		}
	}
	if err := syncfs(e.mnt); err != nil {
		return err
	}
	t0 := time.Now()
	if err := btrfs.CreateSubvolume(dir); err != nil {
		return err
	}
	defer btrfs.Delete(dir)
	defer os.RemoveAll(sock)
	opts := extract.Options{UID: e.sup.UID(), GID: e.sup.GID()}
	for _, part := range []struct{ file, into string }{{"base.tar", dir}, {"pg_wal.tar", filepath.Join(dir, "pg_wal")}} {
		f, err := os.Open(filepath.Join(clones, part.file))
		if err != nil {
			return err
		}
		_, err = extract.Tar(ctx, f, part.into, opts)
		f.Close()
		if err != nil {
			return fmt.Errorf("extracting %s: %w", part.file, err)
		}
	}
	if err := os.Chown(dir, e.sup.UID(), e.sup.GID()); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	tExtract := time.Since(t0)
	t1 := time.Now()
	// The settings finalise boots with that change how long a start takes.
	proc, err := e.sup.Start(ctx, supervisor.Spec{
		DataDir: dir, SocketDir: sock, Port: 5432, LogFile: filepath.Join(dir, "bench.log"),
		Settings: map[string]string{"fsync": "off", "full_page_writes": "off", "wal_level": "minimal",
			"max_wal_senders": "0", "archive_mode": "off", "shared_buffers": "16MB"},
	})
	if err != nil {
		return err
	}
	tStart := time.Since(t1)
	t2 := time.Now()
	if err := proc.Stop(ctx, supervisor.Fast, 5*time.Minute); err != nil {
		return err
	}
	tStop := time.Since(t2)
	total := time.Since(t0)
	// Not part of the goal's baseline, but finalise pays it: freezing the
	// image (a btrfs snapshot) makes btrfs write back the extracted data.
	t3 := time.Now()
	if err := syncfs(e.mnt); err != nil {
		return err
	}
	e.rep.sample("extract_writeback_ms", time.Since(t3))
	e.rep.sample("extract_ms", tExtract)
	e.rep.sample("private_start_ms", tStart)
	e.rep.sample("clean_stop_ms", tStop)
	e.rep.sample("extract_start_stop_ms", total)
	fin := e.rep.Samples["finalise_ms"][0]
	ratio := fin / ms(total)
	e.rep.add(Figure{
		Name: fmt.Sprintf("finalise of the %s backup, trivial script", fmtBytes(e.rep.Values["backup_bytes"])),
		Goal: "≤ 1.5× (extract + one postgres start and clean stop) timed alone",
		Measured: fmt.Sprintf("finalise %s; alone %s (extract %s, start %s, stop %s); writing the extracted data back to disk, which finalise's read-only snapshot waits for, adds %s (%.2f× with it)",
			fmtMS(fin), fmtMS(ms(total)), fmtMS(ms(tExtract)), fmtMS(ms(tStart)), fmtMS(ms(tStop)),
			fmtMS(e.rep.Samples["extract_writeback_ms"][0]), fin/(ms(total)+e.rep.Samples["extract_writeback_ms"][0])),
		Ratio:  fmt.Sprintf("%.2f×", ratio),
		Status: verdict(ratio <= 1.5),
	})
	return nil
}

// large measures size independence on an image LargeScale/Scale times
// bigger, if asked for.
func (e *env) large(ctx context.Context) error {
	if e.cfg.LargeScale == 0 {
		e.rep.add(Figure{
			Name:     "create → first query on a ~10× larger image",
			Goal:     "≤ 1.2× the main figure",
			Measured: "not measured (off by default; -large-scale N)",
			Status:   NotMeasured,
		})
		e.rep.add(Figure{
			Name:     "save → new image ready on a ~10× larger image",
			Goal:     "≤ 2 s, independent of size",
			Measured: "not measured (off by default; -large-scale N)",
			Status:   NotMeasured,
		})
		return nil
	}
	if err := e.src.setFsync(ctx, false); err != nil {
		return err
	}
	if err := e.src.pgbench(ctx, largeDB, e.cfg.LargeScale); err != nil {
		return err
	}
	backup, err := e.src.baseBackup(ctx, "large", "stream")
	if err != nil {
		return err
	}
	size, _ := dirSize(backup)
	id, fin, err := e.imageOf(ctx, backup, trivialScript)
	if err != nil {
		return err
	}
	e.rep.sample("large_finalise_ms", fin)
	// The backup is no longer needed; give the disk back.
	os.RemoveAll(backup)
	// Creates of both images and starts of the large one's floor, in turn,
	// so that the ratio compares like with like on a busy machine too.
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	for i := -1; i < e.cfg.Samples; i++ {
		if err := e.createOnce(ctx, e.image, "pair_", i >= 0); err != nil {
			return err
		}
		if err := e.createOnce(ctx, id, "large_", i >= 0); err != nil {
			return err
		}
		if err := e.floorSeries(ctx, id, largeDB, 1, "large_", i >= 0); err != nil {
			return err
		}
	}
	// Saves of an instance of each, in turn too.
	for i := 0; i < min(e.cfg.Samples, 3); i++ {
		if err := e.saveSeries(ctx, e.image, "pair_", 1); err != nil {
			return err
		}
		if err := e.saveSeries(ctx, id, "large_", 1); err != nil {
			return err
		}
	}
	bigSave := Summarize(e.rep.Samples["large_save_ready_ms"])
	smallSave := Summarize(e.rep.Samples["pair_save_ready_ms"])
	e.rep.add(Figure{
		Name: fmt.Sprintf("save → new image ready, scale %d image (%s backup), n=%d", e.cfg.LargeScale, fmtBytes(float64(size)), bigSave.N),
		Goal: "≤ 2 s, independent of size (≤ 1.2× the main image's)",
		Measured: fmt.Sprintf("p50 %s, max %s vs the main image's p50 %s in turn with it; longest query wait meanwhile %s, longest new connection %s",
			fmtMS(bigSave.P50), fmtMS(bigSave.Max), fmtMS(smallSave.P50),
			fmtMS(Summarize(e.rep.Samples["large_save_longest_query_wait_ms"]).Max), fmtMS(Summarize(e.rep.Samples["large_save_longest_connect_ms"]).Max)),
		Ratio:  fmt.Sprintf("%.2f×", bigSave.P50/smallSave.P50),
		Status: verdict(bigSave.Max <= 2000 && bigSave.P50 <= 1.2*smallSave.P50),
	})
	big := Summarize(e.rep.Samples["large_create_first_query_ms"])
	small := Summarize(e.rep.Samples["pair_create_first_query_ms"])
	bigFloor := Summarize(e.rep.Samples["large_floor_ms"])
	ratio := big.P50 / small.P50
	e.rep.add(Figure{
		Name: fmt.Sprintf("create → first query, scale %d image (%s backup), n=%d", e.cfg.LargeScale, fmtBytes(float64(size)), big.N),
		Goal: "≤ 1.2× the main figure",
		Measured: fmt.Sprintf("p50 %s, p95 %s vs the main image's p50 %s in turn with it; the large image's floor p50 %s; its finalise %s",
			fmtMS(big.P50), fmtMS(big.P95), fmtMS(small.P50), fmtMS(bigFloor.P50), fmtMS(ms(fin))),
		Ratio:  fmt.Sprintf("%.2f×", ratio),
		Status: verdict(ratio <= 1.2),
	})
	return nil
}

// syncfs writes back the dirty data of the filesystem holding dir.
func syncfs(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// anonymisingScript changes 1 % of pgbench_accounts and empties
// pgbench_history: finalise then rewrites both, re-analyses, and drops the
// WAL from before the script.
const anonymisingScript = "\\c " + benchDB + "\nUPDATE pgbench_accounts SET filler = 'anonymised' WHERE aid % 100 = 0;\nDELETE FROM pgbench_history;\n"

// anonymisingFinalise measures what the promise that no removed value is
// left in an image costs: a finalise of the main backup with a script that
// changes 1 % of the largest table, against the trivial-script finalise.
// It is paid once per image.
func (e *env) anonymisingFinalise(ctx context.Context) error {
	id, fin, err := e.imageOf(ctx, e.backup, anonymisingScript)
	if err != nil {
		return err
	}
	defer e.upload.Images().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, id)
	e.rep.sample("anonymising_finalise_ms", fin)
	trivial := e.rep.Samples["finalise_ms"][0]
	ratio := ms(fin) / trivial
	e.rep.add(Figure{
		Name:     fmt.Sprintf("finalise of the %s backup, script updating 1 %% of pgbench_accounts", fmtBytes(e.rep.Values["backup_bytes"])),
		Goal:     "info: rewriting what the script changed, re-analysing and dropping old WAL, paid once per image",
		Measured: fmt.Sprintf("finalise %s vs %s with a trivial script", fmtMS(ms(fin)), fmtMS(trivial)),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   "info",
	})
	return nil
}
