// Package metrics is a small Prometheus text-format (version 0.0.4) registry.
//
// Updating a metric is a single atomic operation, so counters can sit on hot
// paths. Labelled vectors resolve a child once (WithLabelValues) and callers
// keep the child; only that lookup takes a lock, never the update.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Registry holds metrics in registration order and renders them.
type Registry struct {
	mu      sync.Mutex
	metrics []metric
	names   map[string]bool
}

type metric interface {
	header() (name, help, kind string)
	// write renders the samples (without HELP/TYPE lines).
	write(w *bufio.Writer)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{names: map[string]bool{}} }

func (r *Registry) register(m metric) {
	name, _, _ := m.header()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[name] {
		panic("metrics: duplicate metric " + name)
	}
	r.names[name] = true
	r.metrics = append(r.metrics, m)
}

// WriteTo renders every metric in the Prometheus text format.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	ms := append([]metric(nil), r.metrics...)
	r.mu.Unlock()
	cw := &countingWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, m := range ms {
		name, help, kind := m.header()
		bw.WriteString("# HELP " + name + " " + escapeHelp(help) + "\n")
		bw.WriteString("# TYPE " + name + " " + kind + "\n")
		m.write(bw)
	}
	err := bw.Flush()
	return cw.n, err
}

// ServeHTTP serves the registry as a Prometheus scrape target.
func (r *Registry) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	r.WriteTo(w)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Counter is a monotonically increasing integer.
type Counter struct{ v atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Gauge is a float64 that can go up and down.
type Gauge struct{ bits atomic.Uint64 }

// Set stores v.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds d (which may be negative).
func (g *Gauge) Add(d float64) {
	for {
		old := g.bits.Load()
		if g.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// Inc adds one.
func (g *Gauge) Inc() { g.Add(1) }

// Dec subtracts one.
func (g *Gauge) Dec() { g.Add(-1) }

// Value returns the current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

type scalar struct {
	name, help, kind string
	value            func() string
}

func (s *scalar) header() (string, string, string) { return s.name, s.help, s.kind }
func (s *scalar) write(w *bufio.Writer)            { w.WriteString(s.name + " " + s.value() + "\n") }

// NewCounter registers and returns a counter.
func (r *Registry) NewCounter(name, help string) *Counter {
	c := &Counter{}
	r.register(&scalar{name, help, "counter", func() string { return strconv.FormatUint(c.Value(), 10) }})
	return c
}

// NewGauge registers and returns a gauge.
func (r *Registry) NewGauge(name, help string) *Gauge {
	g := &Gauge{}
	r.register(&scalar{name, help, "gauge", func() string { return formatFloat(g.Value()) }})
	return g
}

// NewGaugeFunc registers a gauge whose value is computed at scrape time, for
// values that already live elsewhere (avoids keeping two copies in sync).
func (r *Registry) NewGaugeFunc(name, help string, fn func() float64) {
	r.register(&scalar{name, help, "gauge", func() string { return formatFloat(fn()) }})
}

// vec maps label values to children; lookups lock, updates of children do not.
type vec[T any] struct {
	name, help, kind string
	labels           []string
	mu               sync.RWMutex
	children         map[string]*T
	values           map[string][]string // key -> label values, kept to render them
	newChild         func() *T
	value            func(*T) string
}

func (v *vec[T]) header() (string, string, string) { return v.name, v.help, v.kind }

func (v *vec[T]) get(values []string) *T {
	if len(values) != len(v.labels) {
		panic(fmt.Sprintf("metrics: %s wants %d label values, got %d", v.name, len(v.labels), len(values)))
	}
	key := strings.Join(values, "\xff")
	v.mu.RLock()
	c := v.children[key]
	v.mu.RUnlock()
	if c != nil {
		return c
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if c = v.children[key]; c == nil {
		c = v.newChild()
		v.children[key] = c
		v.values[key] = append([]string(nil), values...)
	}
	return c
}

func (v *vec[T]) write(w *bufio.Writer) {
	v.mu.RLock()
	keys := make([]string, 0, len(v.children))
	for k := range v.children {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w.WriteString(v.name + labelString(v.labels, v.values[k]) + " " + v.value(v.children[k]) + "\n")
	}
	v.mu.RUnlock()
}

// CounterVec is a family of counters distinguished by label values.
type CounterVec struct{ v *vec[Counter] }

// WithLabelValues returns the child for the given label values (in the order
// the labels were declared). Keep the result when it is used on a hot path.
func (c *CounterVec) WithLabelValues(values ...string) *Counter { return c.v.get(values) }

// NewCounterVec registers a labelled counter family.
func (r *Registry) NewCounterVec(name, help string, labels ...string) *CounterVec {
	v := &vec[Counter]{name: name, help: help, kind: "counter", labels: labels, children: map[string]*Counter{}, values: map[string][]string{},
		newChild: func() *Counter { return &Counter{} },
		value:    func(c *Counter) string { return strconv.FormatUint(c.Value(), 10) }}
	r.register(v)
	return &CounterVec{v}
}

// GaugeVec is a family of gauges distinguished by label values.
type GaugeVec struct{ v *vec[Gauge] }

// WithLabelValues returns the child for the given label values.
func (g *GaugeVec) WithLabelValues(values ...string) *Gauge { return g.v.get(values) }

// Sample is one series of a family: its label values (in the order the
// labels were declared) and its value.
type Sample struct {
	Labels []string
	Value  float64
}

// Replace makes samples the family's only series, in one step for a
// concurrent scrape: a series not among them is dropped, as for an object
// that no longer exists (a deleted pool, say).
func (g *GaugeVec) Replace(samples []Sample) {
	v := g.v
	children := make(map[string]*Gauge, len(samples))
	values := make(map[string][]string, len(samples))
	for _, smp := range samples {
		if len(smp.Labels) != len(v.labels) {
			panic(fmt.Sprintf("metrics: %s wants %d label values, got %d", v.name, len(v.labels), len(smp.Labels)))
		}
		key := strings.Join(smp.Labels, "\xff")
		c := &Gauge{}
		c.Set(smp.Value)
		children[key], values[key] = c, append([]string(nil), smp.Labels...)
	}
	v.mu.Lock()
	v.children, v.values = children, values
	v.mu.Unlock()
}

// NewGaugeVec registers a labelled gauge family.
func (r *Registry) NewGaugeVec(name, help string, labels ...string) *GaugeVec {
	v := &vec[Gauge]{name: name, help: help, kind: "gauge", labels: labels, children: map[string]*Gauge{}, values: map[string][]string{},
		newChild: func() *Gauge { return &Gauge{} },
		value:    func(g *Gauge) string { return formatFloat(g.Value()) }}
	r.register(v)
	return &GaugeVec{v}
}

// Histogram counts observations into cumulative buckets.
type Histogram struct {
	name, help string
	upper      []float64 // sorted upper bounds, +Inf implied
	counts     []atomic.Uint64
	count      atomic.Uint64
	sumBits    atomic.Uint64
}

// DefaultBuckets suit latencies in seconds, from 100 µs to 10 s.
var DefaultBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// NewHistogram registers a histogram; nil buckets means DefaultBuckets.
func (r *Registry) NewHistogram(name, help string, buckets []float64) *Histogram {
	if buckets == nil {
		buckets = DefaultBuckets
	}
	upper := append([]float64(nil), buckets...)
	sort.Float64s(upper)
	h := &Histogram{name: name, help: help, upper: upper, counts: make([]atomic.Uint64, len(upper))}
	r.register(h)
	return h
}

// Observe records v.
func (h *Histogram) Observe(v float64) {
	if i := sort.SearchFloat64s(h.upper, v); i < len(h.upper) {
		h.counts[i].Add(1)
	}
	h.count.Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

func (h *Histogram) header() (string, string, string) { return h.name, h.help, "histogram" }

func (h *Histogram) write(w *bufio.Writer) {
	// Buckets are stored per interval and summed here so Observe touches one slot.
	var cumulative uint64
	for i, le := range h.upper {
		cumulative += h.counts[i].Load()
		w.WriteString(h.name + `_bucket{le="` + formatFloat(le) + `"} ` + strconv.FormatUint(cumulative, 10) + "\n")
	}
	count := h.count.Load()
	w.WriteString(h.name + `_bucket{le="+Inf"} ` + strconv.FormatUint(count, 10) + "\n")
	w.WriteString(h.name + "_sum " + formatFloat(math.Float64frombits(h.sumBits.Load())) + "\n")
	w.WriteString(h.name + "_count " + strconv.FormatUint(count, 10) + "\n")
}

func labelString(names, values []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n + `="` + escapeLabel(values[i]) + `"`)
	}
	b.WriteByte('}')
	return b.String()
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
