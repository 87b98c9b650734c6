// Package bench measures the sidecar against a direct connection to the same
// app, in the same run, and prints the ratios docs/sidecar.md reports.
//
// The app (this test binary re-executed in the app role) and the sidecar (the
// real binary, built by the test) run as separate processes, so the sidecar's
// RSS is its own and the scheduler sees the same processes as in a pod. Run it with ./run.sh; plain
// `go test` skips it.
package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"spawner.dev/common/freeport"
)

const roleEnv = "SIDECAR_BENCH_ROLE"

func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "app" {
		runApp(os.Getenv("SIDECAR_BENCH_APP_ADDR"))
	}
	os.Exit(m.Run())
}

// runApp is the benchmark app: a tiny GET handler and a WebSocket echo.
func runApp(addr string) {
	hello := []byte("hello, world\n")
	upgrader := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(hello)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil || c.WriteMessage(typ, msg) != nil {
				return
			}
		}
	})
	fmt.Fprintln(os.Stderr, http.ListenAndServe(addr, mux))
	os.Exit(1)
}

func startApp(t *testing.T, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, roleEnv+"=app")...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
	}
	t.Fatalf("%s never answered", url)
}

type httpResult struct{ rps, p99ms, requests float64 }

var (
	wrkTotal = regexp.MustCompile(`([0-9]+) requests in`)
	wrkRPS   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99   = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
)

func runWrk(t *testing.T, url string, d time.Duration) httpResult {
	t.Helper()
	out, err := exec.Command("wrk", "-t2", "-c32", "-d"+d.String(), "--latency", url).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	rps := wrkRPS.FindSubmatch(out)
	p99 := wrkP99.FindSubmatch(out)
	total := wrkTotal.FindSubmatch(out)
	if rps == nil || p99 == nil || total == nil {
		t.Fatalf("cannot parse wrk output:\n%s", out)
	}
	var r httpResult
	r.rps, _ = strconv.ParseFloat(string(rps[1]), 64)
	r.p99ms, _ = strconv.ParseFloat(string(p99[1]), 64)
	r.requests, _ = strconv.ParseFloat(string(total[1]), 64)
	switch string(p99[2]) {
	case "us":
		r.p99ms /= 1000
	case "s":
		r.p99ms *= 1000
	}
	return r
}

// wsEcho runs conns clients that each send a 1 KiB message and wait for its
// echo (strict ping-pong), for d, and returns echoed messages per second.
func wsEcho(t *testing.T, url string, conns int, d time.Duration) float64 {
	t.Helper()
	msg := make([]byte, 1024)
	var total atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for i := 0; i < conns; i++ {
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			n := int64(0)
			for time.Now().Before(stop) {
				if c.WriteMessage(websocket.BinaryMessage, msg) != nil {
					break
				}
				if _, _, err := c.ReadMessage(); err != nil {
					break
				}
				n++
			}
			total.Add(n)
		}()
	}
	start := time.Now()
	wg.Wait()
	return float64(total.Load()) / time.Since(start).Seconds()
}

// wsThroughput runs conns sockets, each with a writer sending 1 KiB binary
// messages continuously with at most window of them unanswered and a reader
// counting the echoes, for d, and returns echoes per second.
func wsThroughput(t *testing.T, url string, conns, window int, d time.Duration) float64 {
	t.Helper()
	msg := make([]byte, 1024)
	sockets := make([]*websocket.Conn, conns)
	for i := range sockets {
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sockets[i] = c
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	done := make(chan struct{})
	stop := time.AfterFunc(d, func() { close(done) })
	defer stop.Stop()
	for _, c := range sockets {
		credits := make(chan struct{}, window)
		for i := 0; i < window; i++ {
			credits <- struct{}{}
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case <-credits:
				}
				if c.WriteMessage(websocket.BinaryMessage, msg) != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			n := int64(0)
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					break
				}
				n++
				credits <- struct{}{}
			}
			total.Add(n)
		}()
	}
	wg.Wait()
	return float64(total.Load()) / d.Seconds()
}

type latencies struct{ p50, p99 time.Duration }

// fixedRate sends a small GET at rate requests per second in total over conns
// connections for d, on a fixed schedule (open loop), and returns latency
// percentiles. A request is timed from its send, or from its scheduled time
// when the connection was still busy then, so a slow response is not hidden
// by the requests it delayed (no coordinated omission).
func fixedRate(t *testing.T, addr string, rate, conns int, d time.Duration) (latencies, int) {
	t.Helper()
	interval := time.Duration(float64(time.Second) * float64(conns) / float64(rate))
	perConn := int(d / interval)
	start := time.Now().Add(50 * time.Millisecond)
	results := make([][]time.Duration, conns)
	late := make([]int, conns)
	var wg sync.WaitGroup
	for k := 0; k < conns; k++ {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReader(conn)
			req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
			// Connections are spread evenly over the interval.
			first := start.Add(interval * time.Duration(k) / time.Duration(conns))
			for i := 0; i < perConn; i++ {
				scheduled := first.Add(interval * time.Duration(i))
				from := scheduled
				if wait := time.Until(scheduled); wait > 0 {
					time.Sleep(wait)
					from = time.Now()
				} else {
					late[k]++
				}
				if _, err := conn.Write(req); err != nil {
					t.Error(err)
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				results[k] = append(results[k], time.Since(from))
			}
		}()
	}
	wg.Wait()
	var all []time.Duration
	lateTotal := 0
	for k := range results {
		all = append(all, results[k]...)
		lateTotal += late[k]
	}
	if len(all) == 0 {
		t.Fatal("no requests completed")
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return latencies{p50: all[len(all)/2], p99: all[len(all)*99/100]}, lateTotal
}

// followEvents reads the sidecar's /_events stream until the test ends and
// counts its events.
func followEvents(t *testing.T, statusPort int) *atomic.Int64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/_events", statusPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	var events atomic.Int64
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data:") {
				events.Add(1)
			}
		}
	}()
	return &events
}

func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// cpuSeconds is the user+system CPU time a process has used so far.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the ")" that ends the command name; utime and stime are
	// the 14th and 15th fields overall, in clock ticks (100 per second).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// nginxConfig proxies to the app the way a tuned reverse proxy would: one
// worker (the sidecar runs on one P), a keep-alive upstream pool, unbuffered
// responses, and WebSocket upgrades passed through.
const nginxConfig = `%s
worker_processes 1;
daemon off;
pid %s/nginx.pid;
events { worker_connections 4096; }
http {
	access_log off;
	map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
	upstream app { server 127.0.0.1:%d; keepalive 1024; }
	server {
		listen 127.0.0.1:%d;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
			proxy_buffering off;
		}
	}
}
`

// startNginx starts nginx in front of the app as the reference proxy and
// returns its worker's pid and address; the address is empty when nginx is
// not installed or SIDECAR_BENCH_NGINX=0.
func startNginx(t *testing.T, appPort int) (worker int, public string) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil || os.Getenv("SIDECAR_BENCH_NGINX") == "0" {
		return 0, ""
	}
	dir := t.TempDir()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers would otherwise run as nobody, who cannot use dir
	}
	port := freeport.Port(t)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConfig, user, dir, appPort, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", "stderr")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM, not Kill: the master then stops its worker, which would
	// otherwise outlive it holding the test's stderr open.
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	public = fmt.Sprintf("127.0.0.1:%d", port)
	waitHTTP(t, "http://"+public+"/")
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
	if err != nil || len(strings.Fields(string(children))) != 1 {
		t.Fatalf("cannot find nginx's worker process: %v %q", err, children)
	}
	worker, _ = strconv.Atoi(strings.Fields(string(children))[0])
	return worker, public
}

// path is one way to reach the app: directly, through the sidecar, or
// through the reference proxy.
type path struct {
	name string
	addr string
	pid  int // the process whose CPU time per request is reported; 0 for none
	// Per-round results.
	rps, p99, cpu, fixed50, fixed99, wsThroughput, wsPingPong []float64
}

func TestFigures(t *testing.T) {
	if os.Getenv("SIDECAR_BENCH") == "" {
		t.Skip("set SIDECAR_BENCH=1 (or use run.sh) to measure")
	}
	rounds, _ := strconv.Atoi(os.Getenv("SIDECAR_BENCH_ROUNDS"))
	if rounds <= 0 {
		rounds = 5
	}
	appPort := freeport.Port(t)
	app := startApp(t, fmt.Sprintf("SIDECAR_BENCH_APP_ADDR=127.0.0.1:%d", appPort))
	direct := fmt.Sprintf("127.0.0.1:%d", appPort)
	waitHTTP(t, "http://"+direct+"/")
	// Two sidecars: one takes the load, the other only the idle sockets, so
	// its RSS is not inflated by heap the load left behind.
	bin := filepath.Join(t.TempDir(), "spawner-sidecar")
	if out, err := exec.Command("go", "build", "-o", bin, "spawner.dev/sidecar").CombinedOutput(); err != nil {
		t.Fatalf("building the sidecar: %v\n%s", err, out)
	}
	startSidecar := func() (cmd *exec.Cmd, public string, statusPort int) {
		servePort, statusPort := freeport.Port(t), freeport.Port(t)
		cmd = exec.Command(bin, "--listen-host=127.0.0.1", fmt.Sprintf("--serve-port=%d", servePort),
			fmt.Sprintf("--upstream-port=%d", appPort), fmt.Sprintf("--status-port=%d", statusPort))
		cmd.Env = append(os.Environ(), os.Getenv("SIDECAR_BENCH_SIDECAR_ENV")) // e.g. GOMAXPROCS=2
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		public = fmt.Sprintf("127.0.0.1:%d", servePort)
		waitHTTP(t, "http://"+public+"/")
		return cmd, public, statusPort
	}
	loaded, proxied, loadedStatus := startSidecar()
	// The sweeper holds a status stream on every sidecar; so does the run.
	events := followEvents(t, loadedStatus)
	runStart := time.Now()
	fresh, freshPublic, freshStatus := startSidecar()

	paths := []*path{{name: "direct", addr: direct, pid: app.Process.Pid}, {name: "sidecar", addr: proxied, pid: loaded.Process.Pid}}
	if worker, public := startNginx(t, appPort); public != "" {
		paths = append(paths, &path{name: "nginx", addr: public, pid: worker})
	}
	directPath, sidecarPath := paths[0], paths[1]
	var nginxPath *path
	if len(paths) == 3 {
		nginxPath = paths[2]
	}

	// SIDECAR_BENCH_ONLY_RSS=1 skips the load tests (for quick memory work).
	onlyRSS := os.Getenv("SIDECAR_BENCH_ONLY_RSS") != ""
	_, wrkErr := exec.LookPath("wrk")
	if onlyRSS {
		rounds = 0
	} else if wrkErr == nil {
		for _, p := range paths {
			runWrk(t, "http://"+p.addr+"/", 2*time.Second) // warm-up
		}
	}
	// Each round measures every path once, one after the other, so slow
	// drifts in the machine's speed hit all of them alike.
	for i := 0; i < rounds; i++ {
		if wrkErr == nil {
			for _, p := range paths {
				cpu := cpuSeconds(t, p.pid)
				r := runWrk(t, "http://"+p.addr+"/", 5*time.Second)
				cpu = cpuSeconds(t, p.pid) - cpu
				p.rps, p.p99, p.cpu = append(p.rps, r.rps), append(p.p99, r.p99ms), append(p.cpu, cpu/r.requests*1e6)
				t.Logf("round %d: %s %.0f req/s, p99 %.3f ms, %.1f µs CPU per request", i, p.name, r.rps, r.p99ms, cpu/r.requests*1e6)
			}
		}
		for _, p := range paths {
			l, late := fixedRate(t, p.addr, 2000, 32, 5*time.Second)
			p.fixed50, p.fixed99 = append(p.fixed50, float64(l.p50)/1e6), append(p.fixed99, float64(l.p99)/1e6)
			t.Logf("round %d: %s at 2000 req/s: p50 %v p99 %v (%d late sends)", i, p.name, l.p50, l.p99, late)
		}
		for _, p := range paths {
			tp := wsThroughput(t, "ws://"+p.addr+"/ws", 32, 32, 3*time.Second)
			pp := wsEcho(t, "ws://"+p.addr+"/ws", 32, 3*time.Second)
			p.wsThroughput, p.wsPingPong = append(p.wsThroughput, tp), append(p.wsPingPong, pp)
			t.Logf("round %d: %s WebSocket throughput %.0f msg/s, ping-pong %.0f msg/s", i, p.name, tp, pp)
		}
	}

	var report strings.Builder
	fmt.Fprintf(&report, "rounds: %d; each round measures every path in turn. Values are medians over the rounds;\n"+
		"ratios and differences are medians of the per-round ratios and differences to direct.\n\n", rounds)
	fmt.Fprintf(&report, "| measure | direct | sidecar | sidecar vs direct | nginx | nginx vs direct | target (sidecar) |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	// row prints one measure: the median of each path's rounds, and the
	// median over rounds of each proxy's ratio to (or difference from)
	// direct in the same round. The machine's speed drifts by tens of
	// percent between rounds, so comparing within a round is what makes
	// the ratio steady; a ratio of two overall medians would pair rounds
	// that ran at different speeds.
	row := func(measure, format string, values func(*path) []float64, difference bool, target string) {
		d := values(directPath)
		if len(d) == 0 {
			return
		}
		compare := func(p *path) string {
			v := values(p)
			per := make([]float64, len(v))
			for i := range v {
				if difference {
					per[i] = v[i] - d[i]
				} else {
					per[i] = v[i] / d[i]
				}
			}
			if difference {
				return fmt.Sprintf("%+.3f ms", median(per))
			}
			return fmt.Sprintf("%.2f×", median(per))
		}
		ng, ngVs := "—", "—"
		if nginxPath != nil {
			ng, ngVs = fmt.Sprintf(format, median(values(nginxPath))), compare(nginxPath)
		}
		fmt.Fprintf(&report, "| %s | "+format+" | "+format+" | %s | %s | %s | %s |\n",
			measure, median(d), median(values(sidecarPath)), compare(sidecarPath), ng, ngVs, target)
	}
	if wrkErr != nil {
		fmt.Fprintf(&report, "| HTTP (wrk missing) | | | | | | |\n")
	} else if !onlyRSS {
		row("HTTP req/s, wrk -t2 -c32, small GET", "%.0f", func(p *path) []float64 { return p.rps }, false, "≥ 0.5×")
		row("HTTP p99 latency, the same wrk runs (at saturation)", "%.3f ms", func(p *path) []float64 { return p.p99 }, true, "≤ +0.3 ms")
		row("CPU per request of the app (direct) or the proxy process", "%.1f µs", func(p *path) []float64 { return p.cpu }, false, "")
	}
	if !onlyRSS {
		row("HTTP p50 latency at a fixed 2000 req/s, 32 connections", "%.3f ms", func(p *path) []float64 { return p.fixed50 }, true, "")
		row("HTTP p99 latency at a fixed 2000 req/s, 32 connections", "%.3f ms", func(p *path) []float64 { return p.fixed99 }, true, "≤ +0.3 ms")
		row("WebSocket echo msg/s, throughput: 32 sockets, 32 messages in flight each, 1 KiB", "%.0f", func(p *path) []float64 { return p.wsThroughput }, false, "≥ 0.8×")
		row("WebSocket echo msg/s, ping-pong: 32 sockets, one message in flight each, 1 KiB", "%.0f", func(p *path) []float64 { return p.wsPingPong }, false, "")
	}

	eventCount, loadTime := events.Load(), time.Since(runStart)

	// Idle sockets: RSS of each sidecar process with 1000 open.
	time.Sleep(2 * time.Second) // let the loaded one's GC and scavenger catch up
	for _, sc := range []struct {
		name       string
		cmd        *exec.Cmd
		public     string
		statusPort int
	}{{"fresh sidecar", fresh, freshPublic, freshStatus}, {"sidecar after the load above", loaded, proxied, 0}} {
		before := rssKiB(t, sc.cmd.Process.Pid)
		var idle []*websocket.Conn
		for i := 0; i < 1000; i++ {
			c, _, err := websocket.DefaultDialer.Dial("ws://"+sc.public+"/ws", nil)
			if err != nil {
				t.Fatalf("socket %d: %v", i, err)
			}
			idle = append(idle, c)
		}
		time.Sleep(3 * time.Second)
		with := rssKiB(t, sc.cmd.Process.Pid)
		if sc.statusPort != 0 {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", sc.statusPort))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), "sidecar_websockets 1000\n") {
				t.Errorf("sidecar does not see 1000 sockets:\n%s", body)
			}
		}
		for _, c := range idle {
			c.Close()
		}
		fmt.Fprintf(&report, "| RSS with 1000 idle WebSockets, %s | | %.1f MiB (%.1f MiB before) | | | | ≤ 20 MiB |\n",
			sc.name, float64(with)/1024, float64(before)/1024)
	}

	fmt.Fprintf(&report, "\nThe loaded sidecar's status stream, followed throughout as the sweeper follows it, carried %d events in the %.0f s of load (%.1f/s).\n",
		eventCount, loadTime.Seconds(), float64(eventCount)/loadTime.Seconds())
	t.Log("\n" + report.String())
	if out := os.Getenv("SIDECAR_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
