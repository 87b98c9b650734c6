package sweeper

import "spawner.dev/common/metrics"

type sweeperMetrics struct {
	streamsOpen     *metrics.Gauge
	reconnects      *metrics.Counter
	sweeps          *metrics.Counter
	readies         *metrics.Counter
	confirmFailures *metrics.Counter
	apiErrors       *metrics.Counter
	activityWrites  *metrics.Counter
	readyLatency    *metrics.Histogram
}

func newMetrics(reg *metrics.Registry, backends func() float64) *sweeperMetrics {
	reg.NewGaugeFunc("spawner_sweeper_backends", "Backend pods followed on this node.", backends)
	return &sweeperMetrics{
		streamsOpen:     reg.NewGauge("spawner_sweeper_streams_open", "Open /_events streams to sidecars."),
		reconnects:      reg.NewCounter("spawner_sweeper_reconnects_total", "Status streams that ended or failed to open and were retried."),
		sweeps:          reg.NewCounter("spawner_sweeper_sweeps_total", "Backends swept for idleness."),
		readies:         reg.NewCounter("spawner_sweeper_ready_total", "Backends recorded Ready."),
		confirmFailures: reg.NewCounter("spawner_sweeper_confirm_failures_total", "Idle deadlines reached while the sidecar could not be read freshly (not swept)."),
		apiErrors:       reg.NewCounter("spawner_sweeper_api_errors_total", "Failed reads or writes of slabs."),
		activityWrites:  reg.NewCounter("spawner_sweeper_activity_writes_total", "Writes of a slab's status.activity (coalesced: see docs/sweeper.md)."),
		readyLatency: reg.NewHistogram("spawner_sweeper_ready_latency_seconds",
			"From receiving the sidecar's first ready event to the slab's Ready status written.", nil),
	}
}
