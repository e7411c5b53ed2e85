package metrics

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
)

// The states reported even when no image or instance is in them, so that a
// series does not vanish when its count drops to zero.
var (
	imageStates = []draupnir.ImageState{draupnir.ImageCreated, draupnir.ImageUploading,
		draupnir.ImageFinalising, draupnir.ImageReady, draupnir.ImageFailed}
	instanceStates = []draupnir.InstanceState{draupnir.InstanceCreating, draupnir.InstanceRunning,
		draupnir.InstanceStopped, draupnir.InstanceFailed, draupnir.InstanceResetting, draupnir.InstanceDestroying}
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

type gaugeFunc func(d *prometheus.Desc, v float64, labels ...string)

func gauges(ch chan<- prometheus.Metric) gaugeFunc {
	return func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
}

// stateCollector reads the state database at scrape time.
type stateCollector struct {
	imageList    draupnir.ImageService
	instanceList draupnir.InstanceService
	opts         Options
	log          *slog.Logger

	up, images, imageBytes, instances, portsInUse, portsTotal *prometheus.Desc
}

func newStateCollector(images draupnir.ImageService, instances draupnir.InstanceService, opts Options, log *slog.Logger) *stateCollector {
	return &stateCollector{
		imageList:    images,
		instanceList: instances,
		opts:         opts,
		log:          log,
		up:           desc("state_database_up", "1 if the state database answered this scrape's queries, else 0."),
		images:       desc("images", "Images by state.", "state"),
		imageBytes:   desc("images_size_bytes", "Total size of the ready images' data directories."),
		instances:    desc("instances", "Instances by state.", "state"),
		portsInUse:   desc("instance_ports_in_use", "Ports of the instance port range held by instances."),
		portsTotal:   desc("instance_ports_total", "Size of the instance port range (instances.min_port … max_port)."),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.images, c.imageBytes, c.instances, c.portsInUse, c.portsTotal} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := gauges(ch)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.ScrapeTimeout)
	defer cancel()
	up := 1.0
	if c.imageList != nil {
		if err := c.collectImages(ctx, gauge); err != nil {
			up = 0
			c.log.Warn("metrics: could not list images", "err", err)
		}
	}
	if c.instanceList != nil {
		if err := c.collectInstances(ctx, gauge); err != nil {
			up = 0
			c.log.Warn("metrics: could not list instances", "err", err)
		}
	}
	gauge(c.up, up)
}

func (c *stateCollector) collectImages(ctx context.Context, gauge gaugeFunc) error {
	list, err := c.imageList.List(ctx, draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true})
	if err != nil {
		return err
	}
	counts := map[draupnir.ImageState]int{}
	var size int64
	for _, im := range list {
		counts[im.State]++
		if im.State == draupnir.ImageReady {
			size += im.SizeBytes
		}
	}
	for _, s := range imageStates {
		gauge(c.images, float64(counts[s]), string(s))
		delete(counts, s)
	}
	for s, n := range counts { // a state this build does not know
		gauge(c.images, float64(n), string(s))
	}
	gauge(c.imageBytes, float64(size))
	return nil
}

func (c *stateCollector) collectInstances(ctx context.Context, gauge gaugeFunc) error {
	list, err := c.instanceList.List(ctx, draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true})
	if err != nil {
		return err
	}
	counts := map[draupnir.InstanceState]int{}
	inRange := 0
	for _, in := range list {
		counts[in.State]++
		if in.Port >= c.opts.MinPort && in.Port <= c.opts.MaxPort {
			inRange++
		}
	}
	for _, s := range instanceStates {
		gauge(c.instances, float64(counts[s]), string(s))
		delete(counts, s)
	}
	for s, n := range counts {
		gauge(c.instances, float64(n), string(s))
	}
	if c.opts.MaxPort > 0 && c.opts.MaxPort >= c.opts.MinPort {
		gauge(c.portsInUse, float64(inRange))
		gauge(c.portsTotal, float64(c.opts.MaxPort-c.opts.MinPort+1))
	}
	return nil
}

// diskCollector reports the data path's filesystem.
type diskCollector struct {
	path       string
	free, size *prometheus.Desc
}

func newDiskCollector(path string) *diskCollector {
	return &diskCollector{
		path: path,
		free: desc("data_path_free_bytes", "Bytes of the data path's filesystem available to the server "+
			"(statfs; on btrfs an estimate, see `btrfs filesystem usage`)."),
		size: desc("data_path_size_bytes", "Size of the data path's filesystem in bytes."),
	}
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.free; ch <- c.size }

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	var st unix.Statfs_t
	if err := unix.Statfs(c.path, &st); err != nil {
		// The series go missing, which an absent() alert catches.
		return
	}
	gauge := gauges(ch)
	gauge(c.free, float64(st.Bavail)*float64(st.Bsize))
	gauge(c.size, float64(st.Blocks)*float64(st.Bsize))
}
