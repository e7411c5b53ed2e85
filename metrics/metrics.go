// Package metrics keeps Draupnir's Prometheus metrics on a registry of its
// own: counters and histograms that the doors and the server wiring feed
// (HTTP requests, core operations, upload bytes, logged errors), and a
// collector that reads the live figures (images and instances by state, port
// pool use, disk free of the data path) when Prometheus scrapes, so that
// /metrics always agrees with the state database and the disk.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/draupnir-db/draupnir"
)

// Namespace prefixes every Draupnir metric.
const Namespace = "draupnir"

// Operations observed by ObserveOperation.
const (
	OpImageCreate     = "image_create"
	OpImageFinalise   = "image_finalise"
	OpImageDestroy    = "image_destroy"
	OpInstanceCreate  = "instance_create"
	OpInstanceDestroy = "instance_destroy"
	OpInstanceReset   = "instance_reset"
	OpInstanceSave    = "instance_save"
)

// Options configures New. Every field is optional: what is missing is not
// collected.
type Options struct {
	// DataPath is the filesystem whose free space is reported.
	DataPath string
	// MinPort and MaxPort are the instances' port range, for the pool gauges.
	MinPort, MaxPort int
	// ScrapeTimeout bounds the state database queries of one scrape; 0
	// means 5 s.
	ScrapeTimeout time.Duration
}

// Metrics is one server's set of metrics. Its methods are safe for
// concurrent use; a nil *Metrics ignores every observation, so callers need
// no checks when metrics are off.
type Metrics struct {
	opts         Options
	reg          *prometheus.Registry
	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec
	operations   *prometheus.HistogramVec
	opErrors     *prometheus.CounterVec
	uploadBytes  *prometheus.CounterVec
	uploads      *prometheus.CounterVec
	logRecords   *prometheus.CounterVec
	ruleDestroys *prometheus.CounterVec
	refreshes    *prometheus.CounterVec
}

// New registers Draupnir's metrics, the state collector and the Go runtime
// and process collectors on a new registry.
func New(opts Options) *Metrics {
	if opts.ScrapeTimeout <= 0 {
		opts.ScrapeTimeout = 5 * time.Second
	}
	m := &Metrics{
		opts: opts,
		reg:  prometheus.NewRegistry(),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered, by route template, method and status code.",
		}, []string{"route", "method", "status"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time to answer HTTP requests, by route template and method.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1 ms … ~1 min
		}, []string{"route", "method"}),
		operations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "operation_duration_seconds",
			Help: "Latency of core operations (image_create, image_finalise, image_destroy, " +
				"instance_create, instance_destroy, instance_reset, instance_save) through any door, by outcome (ok or the error kind).",
			// Instance creates take tens of milliseconds; finalising a large
			// image takes minutes.
			Buckets: []float64{.01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30, 60, 180, 600, 1800},
		}, []string{"operation", "outcome"}),
		opErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "errors_total",
			Help: "Core operations that failed, by operation and error kind (internal, conflict, " +
				"insufficient_storage, unavailable…).",
		}, []string{"operation", "kind"}),
		uploadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "upload_bytes_total",
			Help: "Bytes uploaded into images over SSH, by method: stream (tar on stdin, bytes as sent) " +
				"or files (SFTP and scp, bytes written, counted as the session ends).",
		}, []string{"method"}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "uploads_total",
			Help: "Uploads into images over SSH, by method and outcome (ok or the error kind).",
		}, []string{"method", "outcome"}),
		logRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "log_records_total",
			Help: "Log records at warning level or above, by level; errors in background work " +
				"(finalise jobs, instance restarts, reconcile) show here.",
		}, []string{"level"}),
		ruleDestroys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "instances_destroyed_by_rule_total",
			Help: "Instances destroyed by a rule rather than by a person, by reason: expired, idle, image_destroy.",
		}, []string{"reason"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "source_refreshes_total",
			Help: "Refreshes of live sources, by source and result: ok or failed.",
		}, []string{"source", "result"}),
	}
	m.reg.MustRegister(
		m.httpRequests, m.httpDuration, m.operations, m.opErrors, m.uploadBytes, m.uploads, m.logRecords, m.ruleDestroys,
		m.refreshes,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if opts.DataPath != "" {
		m.reg.MustRegister(newDiskCollector(opts.DataPath))
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; the version label says which Draupnir is running.",
		ConstLabels: prometheus.Labels{"version": draupnir.Version},
	})
	buildInfo.Set(1)
	m.reg.MustRegister(buildInfo)
	// Series that exist from the start, so that rate() and alerts work
	// before the first event.
	for _, level := range []string{"warn", "error"} {
		m.logRecords.WithLabelValues(level)
	}
	for _, method := range []string{"stream", "files"} {
		m.uploadBytes.WithLabelValues(method)
	}
	for _, r := range []draupnir.DestroyReason{draupnir.ReasonExpired, draupnir.ReasonIdle, draupnir.ReasonImageDestroy} {
		m.ruleDestroys.WithLabelValues(string(r))
	}
	return m
}

// ObserveRuleDestroy counts an instance that rule reason destroyed.
func (m *Metrics) ObserveRuleDestroy(reason draupnir.DestroyReason) {
	m.ruleDestroys.WithLabelValues(string(reason)).Inc()
}

// ObserveRefresh counts a refresh of source that ended with err (nil: an
// image is ready). Source names come from the configuration, so the label
// stays small.
func (m *Metrics) ObserveRefresh(source string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "failed"
	}
	m.refreshes.WithLabelValues(source, result).Inc()
}

// CollectState adds the figures read from the state database at each scrape:
// images and instances by state and the port pool's use. A failed query is
// logged to log (nil discards) and reported as draupnir_state_database_up 0.
// Call it once, when the services exist.
func (m *Metrics) CollectState(images draupnir.ImageService, instances draupnir.InstanceService, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return m.reg.Register(newStateCollector(images, instances, m.opts, log))
}

// Registry is the registry the metrics live on, for tests and for
// registering more collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text (or OpenMetrics)
// format. A collector that fails does not hide the others.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            m.reg, // promhttp_metric_handler_errors_total
		MaxRequestsInFlight: 4,
	})
}

// ObserveHTTP records one answered HTTP request. route is the route
// template ("/images/:id"), never the raw path, to bound the label values.
func (m *Metrics) ObserveHTTP(route, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	m.httpRequests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.httpDuration.WithLabelValues(route, method).Observe(d.Seconds())
}

// ObserveOperation records how long a core operation took and how it ended.
func (m *Metrics) ObserveOperation(op string, err error, d time.Duration) {
	if m == nil {
		return
	}
	outcome := Outcome(err)
	m.operations.WithLabelValues(op, outcome).Observe(d.Seconds())
	if err != nil {
		m.opErrors.WithLabelValues(op, outcome).Inc()
	}
}

// ObserveUpload records an upload into an image: method is "stream" or
// "files", n the bytes received.
func (m *Metrics) ObserveUpload(method string, n int64, err error) {
	if m == nil {
		return
	}
	if n > 0 {
		m.uploadBytes.WithLabelValues(method).Add(float64(n))
	}
	m.uploads.WithLabelValues(method, Outcome(err)).Inc()
}

// Outcome is the label value for how an operation ended: "ok", or the
// error's kind ("not_found", "internal"…); "canceled" when the caller went
// away.
func Outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	switch draupnir.KindOf(err) {
	case draupnir.KindNotFound:
		return "not_found"
	case draupnir.KindConflict:
		return "conflict"
	case draupnir.KindInvalid:
		return "invalid"
	case draupnir.KindUnprocessable:
		return "unprocessable"
	case draupnir.KindForbidden:
		return "forbidden"
	case draupnir.KindUnauthorized:
		return "unauthorized"
	case draupnir.KindUnavailable:
		return "unavailable"
	case draupnir.KindInsufficientStorage:
		return "insufficient_storage"
	default:
		return "internal"
	}
}
