package metrics

import (
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func render(t *testing.T, r *Registry) string {
	t.Helper()
	var b strings.Builder
	n, err := r.WriteTo(&b)
	if err != nil || int(n) != b.Len() {
		t.Fatalf("WriteTo = %d, %v; wrote %d bytes", n, err, b.Len())
	}
	return b.String()
}

func TestTextFormat(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounter("reqs_total", "Requests.\nSecond line with \\.")
	g := r.NewGauge("temp", "Temperature.")
	cv := r.NewCounterVec("bytes_total", "Bytes.", "direction", "kind")
	gv := r.NewGaugeVec("open", "Open things.", "what")
	r.NewGaugeFunc("answer", "Computed.", func() float64 { return 42 })
	h := r.NewHistogram("latency_seconds", "Latency.", []float64{1, 0.1})

	c.Add(3)
	c.Inc()
	g.Set(1.5)
	g.Dec()
	cv.WithLabelValues("up", `q"uo\te`).Add(7)
	cv.WithLabelValues("down", "x").Inc()
	gv.WithLabelValues("sockets").Add(2)
	h.Observe(0.05)
	h.Observe(0.1)
	h.Observe(0.5)
	h.Observe(3)

	want := `# HELP reqs_total Requests.\nSecond line with \\.
# TYPE reqs_total counter
reqs_total 4
# HELP temp Temperature.
# TYPE temp gauge
temp 0.5
# HELP bytes_total Bytes.
# TYPE bytes_total counter
bytes_total{direction="down",kind="x"} 1
bytes_total{direction="up",kind="q\"uo\\te"} 7
# HELP open Open things.
# TYPE open gauge
open{what="sockets"} 2
# HELP answer Computed.
# TYPE answer gauge
answer 42
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 2
latency_seconds_bucket{le="1"} 3
latency_seconds_bucket{le="+Inf"} 4
latency_seconds_sum 3.65
latency_seconds_count 4
`
	if got := render(t, r); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	r := NewRegistry()
	c := r.NewCounter("c", "c")
	g := r.NewGauge("g", "g")
	cv := r.NewCounterVec("cv", "cv", "l")
	h := r.NewHistogram("h", "h", nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				c.Inc()
				g.Add(1)
				cv.WithLabelValues("a").Inc()
				h.Observe(0.001)
			}
		}()
	}
	wg.Wait()
	if c.Value() != 8000 || g.Value() != 8000 || cv.WithLabelValues("a").Value() != 8000 {
		t.Fatalf("lost updates: %d %v %d", c.Value(), g.Value(), cv.WithLabelValues("a").Value())
	}
	if !strings.Contains(render(t, r), "h_count 8000\n") {
		t.Fatal("histogram lost observations")
	}
}

func TestServeHTTP(t *testing.T) {
	r := NewRegistry()
	r.NewCounter("x_total", "X.").Inc()
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type = %q", ct)
	}
	if !strings.Contains(rec.Body.String(), "x_total 1\n") {
		t.Errorf("body = %q", rec.Body.String())
	}
}

func TestDuplicateNamePanics(t *testing.T) {
	r := NewRegistry()
	r.NewCounter("dup", "")
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on duplicate registration")
		}
	}()
	r.NewGauge("dup", "")
}

func TestWrongLabelCountPanics(t *testing.T) {
	v := NewRegistry().NewCounterVec("v", "", "a", "b")
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on wrong label count")
		}
	}()
	v.WithLabelValues("only-one")
}

func BenchmarkCounterInc(b *testing.B) {
	c := NewRegistry().NewCounter("c", "")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Inc()
		}
	})
}

func TestGaugeVecReplaceDropsSeriesNotGiven(t *testing.T) {
	r := NewRegistry()
	g := r.NewGaugeVec("pool_pods", "Pods.", "pool", "state")
	g.Replace([]Sample{{[]string{"a", "ready"}, 3}, {[]string{"b", "ready"}, 1}})
	g.Replace([]Sample{{[]string{"a", "ready"}, 2}})
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); !strings.Contains(got, `pool_pods{pool="a",state="ready"} 2`+"\n") || strings.Contains(got, `pool="b"`) {
		t.Errorf("after Replace:\n%s", got)
	}
}
