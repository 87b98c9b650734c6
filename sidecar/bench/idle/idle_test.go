// Package idle measures what an idle backend costs at rest: N real sidecars,
// each in front of its own idle app and followed by the sweeper's own stream
// machinery (one follower process for all N, as on a node), with CPU time and
// wake-ups read from the kernel's accounting of each process over a window.
//
// Run it with ./run.sh, which builds the binaries and starts this test in a
// network namespace of its own (so the sidecars' socket tables hold only the
// benchmark's sockets, not the host's); plain `go test` skips it.
package idle

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const roleEnv = "SIDECAR_IDLE_BENCH_ROLE"

func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "app" {
		runApp(os.Getenv("SIDECAR_IDLE_BENCH_APP_ADDR"))
	}
	os.Exit(m.Run())
}

// runApp is the idle app: a plain Go net/http server with a page and a
// WebSocket echo, as a session backend would be.
func runApp(addr string) {
	upgrader := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello, world\n")
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

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative number", name, v)
	}
	return n
}

// sidecarIP gives backend i its own loopback address, standing in for a
// pod IP: every sidecar uses the real ports 9090 and 9091.
func sidecarIP(i int) string { return fmt.Sprintf("127.1.%d.%d", i/250, i%250+1) }

// usage is one process's accounting at one moment, summed over its threads.
type usage struct {
	ticks   int64 // utime+stime, USER_HZ ticks (/proc/pid/stat)
	runNs   int64 // time on a CPU (/proc/pid/task/*/schedstat, 1st field)
	slices  int64 // times put on a CPU (schedstat, 3rd field): wake-ups
	volCS   int64 // voluntary context switches (/proc/pid/task/*/status)
	threads int
	rssKiB  int64
	anonKiB int64 // RssAnon: the private part; the binary's pages are shared
}

func readUsage(t *testing.T, pid int) usage {
	t.Helper()
	var u usage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the ")" ending the command name; utime and stime are the
	// 14th and 15th fields overall.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	u.ticks = ut + st
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ss, err := os.ReadFile(task + "/schedstat")
		if err != nil {
			continue // the thread exited
		}
		var run, wait, slices int64
		fmt.Sscan(string(ss), &run, &wait, &slices)
		u.runNs += run
		u.slices += slices
		u.volCS += statusField(task+"/status", "voluntary_ctxt_switches:")
		u.threads++
	}
	u.rssKiB = statusField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	u.anonKiB = statusField(fmt.Sprintf("/proc/%d/status", pid), "RssAnon:")
	return u
}

func statusField(path, name string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// group sums the processes of one role over the window.
type group struct {
	name   string
	pids   []int
	before []usage
}

func (g *group) start(t *testing.T) {
	g.before = g.before[:0]
	for _, p := range g.pids {
		g.before = append(g.before, readUsage(t, p))
	}
}

// result is a group's cost over the window, per unit (process or backend).
type result struct {
	cpuPctTicks, cpuPctRun float64 // % of one core
	wakeups, volCS         float64 // per second
	rssMiB, anonMiB        float64
	threads                float64
}

func (g *group) end(t *testing.T, window time.Duration, units int) result {
	var d usage
	var rss, anon int64
	threads := 0
	for i, p := range g.pids {
		a := readUsage(t, p)
		d.ticks += a.ticks - g.before[i].ticks
		d.runNs += a.runNs - g.before[i].runNs
		d.slices += a.slices - g.before[i].slices
		d.volCS += a.volCS - g.before[i].volCS
		rss += a.rssKiB
		anon += a.anonKiB
		threads += a.threads
	}
	sec := window.Seconds()
	n := float64(units)
	return result{
		cpuPctTicks: float64(d.ticks) / 100 / sec / n * 100,
		cpuPctRun:   float64(d.runNs) / 1e9 / sec / n * 100,
		wakeups:     float64(d.slices) / sec / n,
		volCS:       float64(d.volCS) / sec / n,
		rssMiB:      float64(rss) / 1024 / float64(len(g.pids)),
		anonMiB:     float64(anon) / 1024 / float64(len(g.pids)),
		threads:     float64(threads) / float64(len(g.pids)),
	}
}

// TestIdleCost starts N backends (app + sidecar), has the sweeper's follower
// read all N status streams, exercises each backend once (one GET, and with
// SIDECAR_IDLE_BENCH_WS=1 one WebSocket left open), lets them settle, and
// reports each role's CPU and wake-ups over the window.
func TestIdleCost(t *testing.T) {
	sidecarBin, followerBin := os.Getenv("SIDECAR_IDLE_BENCH_SIDECAR"), os.Getenv("SIDECAR_IDLE_BENCH_FOLLOWER")
	if sidecarBin == "" || followerBin == "" {
		t.Skip("run ./run.sh: it builds the sidecar and the sweeper's follower")
	}
	n := envInt(t, "SIDECAR_IDLE_BENCH_N", 50)
	window := time.Duration(envInt(t, "SIDECAR_IDLE_BENCH_WINDOW", 60)) * time.Second
	settle := time.Duration(envInt(t, "SIDECAR_IDLE_BENCH_SETTLE", 10)) * time.Second
	withWS := os.Getenv("SIDECAR_IDLE_BENCH_WS") == "1"
	if n < 1 || n > 60000 {
		t.Fatalf("SIDECAR_IDLE_BENCH_N=%d: want 1..60000", n)
	}

	start := func(cmd *exec.Cmd) int {
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process.Pid
	}
	apps := &group{name: "app"}
	sidecars := &group{name: "sidecar"}
	ips := make([]string, n)
	for i := range n {
		appAddr := fmt.Sprintf("127.0.0.1:%d", 20000+i)
		app := exec.Command(os.Args[0], "-test.run=^$")
		app.Env = append(os.Environ(), roleEnv+"=app", "SIDECAR_IDLE_BENCH_APP_ADDR="+appAddr)
		apps.pids = append(apps.pids, start(app))
		ips[i] = sidecarIP(i)
		sc := exec.Command(sidecarBin, "--listen-host="+ips[i], "--serve-port=9090", "--status-port=9091",
			fmt.Sprintf("--upstream-port=%d", 20000+i))
		sc.Env = append(os.Environ(), "SIDECAR_ROUTER_PROOF=")
		sidecars.pids = append(sidecars.pids, start(sc))
	}

	// The follower is the sweeper's per-backend code; it says "following N"
	// once every sidecar's stream has reported its app listening.
	fl := exec.Command(followerBin, "-test.run=^TestIdleFollower$", "-test.timeout=0", "-test.count=1")
	fl.Env = append(os.Environ(), "SWEEPER_IDLE_FOLLOW_IPS="+strings.Join(ips, ","), "SWEEPER_IDLE_FOLLOW_PORT=9091")
	stdin, err := fl.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := fl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	sweeper := &group{name: "sweeper", pids: []int{start(fl)}}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "following ") {
		t.Fatalf("follower: %q, %v", line, err)
	}
	go io.Copy(io.Discard, out)
	t.Logf("%d backends Ready and followed", n)

	// One request through every sidecar, as a session's first page load.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for _, ip := range ips {
		resp, err := client.Get("http://" + ip + ":9090/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if withWS {
		for _, ip := range ips {
			c, _, err := websocket.DefaultDialer.Dial("ws://"+ip+":9090/ws", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.ReadMessage(); err != nil {
				t.Fatal(err)
			}
		}
	}

	time.Sleep(settle)
	tcpLines := tableLines("/proc/net/tcp") + tableLines("/proc/net/tcp6")
	groups := []*group{apps, sidecars, sweeper}
	for _, g := range groups {
		g.start(t)
	}
	time.Sleep(window)
	app := apps.end(t, window, n)
	side := sidecars.end(t, window, n)
	sw := sweeper.end(t, window, n)

	var b strings.Builder
	fmt.Fprintf(&b, "Idle cost: %d backends (app + sidecar each, one GET made through each%s), the sweeper's follower reading all %d status streams; %s settle, then a %s window. Socket table: %d lines.\n\n",
		n, map[bool]string{true: ", one WebSocket left open through each", false: ""}[withWS], n, settle, window, tcpLines)
	fmt.Fprintf(&b, "| per idle backend | CPU, %% of a core (utime+stime) | CPU, %% of a core (schedstat run time) | wake-ups/s (times on a CPU) | voluntary switches/s | RSS (of it private) per process | threads per process |\n")
	fmt.Fprintf(&b, "| --- | --- | --- | --- | --- | --- | --- |\n")
	row := func(name string, r result, rss string) {
		fmt.Fprintf(&b, "| %s | %.4f%% | %.4f%% | %.3f | %.3f | %s | %.1f |\n", name, r.cpuPctTicks, r.cpuPctRun, r.wakeups, r.volCS, rss, r.threads)
	}
	row("app (baseline)", app, fmt.Sprintf("%.1f (%.1f) MiB", app.rssMiB, app.anonMiB))
	row("sidecar", side, fmt.Sprintf("%.1f (%.1f) MiB", side.rssMiB, side.anonMiB))
	row("sweeper, per followed backend", sw, fmt.Sprintf("%.1f (%.1f) MiB, one process", sw.rssMiB, sw.anonMiB))
	if app.cpuPctRun > 0 {
		fmt.Fprintf(&b, "\nSidecar / app CPU (schedstat): %.2f×.\n", side.cpuPctRun/app.cpuPctRun)
	}
	t.Log("\n" + b.String())
	if p := os.Getenv("SIDECAR_IDLE_BENCH_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func tableLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return max(strings.Count(string(b), "\n")-1, 0)
}
