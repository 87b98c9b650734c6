//go:build cluster

package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/e2e/framework"
)

// The soak (make soak, not part of make test): N backends with real
// WebSocket and SSE clients following a scripted mix for M minutes while the
// controller, one api-server replica and the sweeper are each killed at
// least twice. Every verdict comes from the clients' own records of what
// they did and when, and from a watch of the slabs (soakrecord_test.go).
const soakWSIdle = 10 // wsIdleSeconds of the "silent" backends

// The scripted mix, by backend index mod 5.
var soakKinds = []string{
	"active",       // one WebSocket for the whole run, a frame every 3 s: never swept
	"reconnecting", // WebSocket sessions of 10-30 s, 1-5 s apart (< grace): never swept
	"idle-after",   // a WebSocket until a random time, then gone: swept grace after
	"silent",       // wsIdleSeconds=10: frames until a random time, then the socket stays open but silent: swept grace after the last frame
	"sse",          // an SSE request held (even: the whole run; odd: until a random time, then swept grace after)
}

// soakClient is one backend's client and its record.
type soakClient struct {
	soakRecord
	b    framework.SpawnResponse
	kind string
	i    int
}

func (c *soakClient) failf(format string, args ...any) {
	c.fail(time.Now(), fmt.Sprintf(format, args...))
}

func soakEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func routerURL(t testing.TB, backendURL, path string, ws bool) string {
	u, err := url.Parse(backendURL)
	if err != nil {
		t.Fatal(err)
	}
	if ws {
		u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	return u.String()
}

// wsSession holds one WebSocket until until (or ctx), sending a frame every
// every (0: none after the open, silent). It returns whether it ended as
// planned; a broken connection is a client-visible error (unless the backend
// was swept).
func (c *soakClient) wsSession(ctx context.Context, t testing.TB, until time.Time, every time.Duration, holding bool) bool {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	conn, resp, err := d.DialContext(ctx, routerURL(t, c.b.URL, "/ws", true), nil)
	if err != nil {
		if ctx.Err() == nil && !c.swept() {
			code := 0
			if resp != nil {
				code = resp.StatusCode
			}
			c.failf("%s dial: %v (HTTP %d)", time.Now().Format("15:04:05"), err, code)
			time.Sleep(500 * time.Millisecond)
		}
		return false
	}
	c.active(holding, time.Now())
	broken := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				broken <- err
				return
			}
		}
	}()
	var tick <-chan time.Time
	if every > 0 {
		tk := time.NewTicker(every)
		defer tk.Stop()
		tick = tk.C
	}
	end := time.NewTimer(time.Until(until))
	defer end.Stop()
	for {
		select {
		case <-ctx.Done():
			conn.Close()
			return true
		case <-end.C:
			conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			conn.Close()
			c.active(false, time.Now())
			return true
		case err := <-broken:
			conn.Close()
			if ctx.Err() == nil && !c.swept() {
				c.failf("%s connection lost: %v", time.Now().Format("15:04:05"), err)
			}
			c.broke(time.Now())
			return false
		case <-tick:
			conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := conn.WriteMessage(websocket.TextMessage, []byte("soak")); err != nil {
				if ctx.Err() == nil && !c.swept() {
					c.failf("%s write: %v", time.Now().Format("15:04:05"), err)
				}
				conn.Close()
				c.broke(time.Now())
				return false
			}
			c.active(holding, time.Now())
		}
	}
}

// sseSession holds GET /sse until until (or ctx).
func (c *soakClient) sseSession(ctx context.Context, t testing.TB, until time.Time) bool {
	rctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, "GET", routerURL(t, c.b.URL, "/sse", false), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		if ctx.Err() == nil && time.Now().Before(until) && !c.swept() {
			c.failf("%s SSE request: %v %v", time.Now().Format("15:04:05"), err, resp)
			time.Sleep(500 * time.Millisecond)
		}
		if resp != nil {
			resp.Body.Close()
		}
		return false
	}
	c.active(true, time.Now())
	buf := make([]byte, 512)
	for {
		if _, err := resp.Body.Read(buf); err != nil {
			resp.Body.Close()
			planned := rctx.Err() != nil
			if planned {
				c.active(false, time.Now())
			} else {
				if !c.swept() {
					c.failf("%s SSE stream broke: %v", time.Now().Format("15:04:05"), err)
				}
				c.broke(time.Now())
			}
			return planned
		}
	}
}

// run plays the client's script until end.
func (c *soakClient) run(ctx context.Context, t testing.TB, start, end time.Time, rng *rand.Rand) {
	leaveAt := start.Add(time.Minute + time.Duration(rng.Int64N(int64(max(end.Sub(start)-3*time.Minute, time.Minute)))))
	switch c.kind {
	case "active":
		for time.Now().Before(end) && ctx.Err() == nil {
			c.wsSession(ctx, t, end, 3*time.Second, true)
		}
	case "reconnecting":
		for time.Now().Before(end) && ctx.Err() == nil {
			c.wsSession(ctx, t, time.Now().Add(10*time.Second+time.Duration(rng.Int64N(int64(20*time.Second)))), 3*time.Second, true)
			time.Sleep(time.Second + time.Duration(rng.Int64N(int64(4*time.Second))))
		}
	case "idle-after":
		for time.Now().Before(leaveAt) && ctx.Err() == nil {
			c.wsSession(ctx, t, leaveAt, 3*time.Second, true)
		}
	case "silent":
		for time.Now().Before(leaveAt) && ctx.Err() == nil {
			c.wsSession(ctx, t, leaveAt, 2*time.Second, true)
		}
		// Then a socket that stays open and says nothing; holding is false:
		// by the backend's policy it does not keep it.
		for time.Now().Before(end) && ctx.Err() == nil && !c.swept() {
			c.wsSession(ctx, t, end, 0, false)
		}
	case "sse":
		until := end
		if c.i%2 == 1 {
			until = leaveAt
		}
		for time.Now().Before(until) && ctx.Err() == nil {
			c.sseSession(ctx, t, until)
		}
	}
}

// kill deletes one pod of a component at once (no grace), as a crash would,
// and returns when a replacement is Ready again.
func soakKill(t testing.TB, e *framework.Env, component string) (killed time.Time, back time.Duration) {
	ctx := context.Background()
	pods, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: framework.PodsOf(component)})
	if err == nil {
		// Pods already on their way out (an older rollout's) are neither
		// victims nor counted as the ones to come back.
		pods.Items = slices.DeleteFunc(pods.Items, func(p corev1.Pod) bool { return p.DeletionTimestamp != nil })
	}
	if err != nil || len(pods.Items) == 0 {
		t.Errorf("no %s pod to kill: %v", component, err)
		return time.Now(), 0
	}
	victim := pods.Items[rand.IntN(len(pods.Items))]
	if component == framework.Controller {
		// The leader: killing the standby would test nothing.
		if l, err := e.Kube.CoordinationV1().Leases(framework.SystemNamespace).Get(ctx, component, metav1.GetOptions{}); err == nil && l.Spec.HolderIdentity != nil {
			for _, p := range pods.Items {
				if strings.HasPrefix(*l.Spec.HolderIdentity, p.Name) {
					victim = p
				}
			}
		}
	}
	zero := int64(0)
	killed = time.Now()
	if err := e.Kube.CoreV1().Pods(framework.SystemNamespace).Delete(ctx, victim.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Errorf("killing %s: %v", victim.Name, err)
	}
	want := len(pods.Items)
	for time.Since(killed) < 3*time.Minute {
		time.Sleep(250 * time.Millisecond)
		cur, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: framework.PodsOf(component)})
		if err != nil {
			continue
		}
		ready := 0
		for _, p := range cur.Items {
			if p.Name == victim.Name || p.DeletionTimestamp != nil {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready >= want {
			return killed, time.Since(killed)
		}
	}
	t.Errorf("%s not Ready again within 3 minutes of the kill", component)
	return killed, time.Since(killed)
}

// TestSoak: see the constants above; SPAWNER_SOAK=1 runs it (make soak).
func TestSoak(t *testing.T) {
	if os.Getenv("SPAWNER_SOAK") == "" {
		t.Skip("SPAWNER_SOAK not set (make soak)")
	}
	n := soakEnvInt("SPAWNER_SOAK_BACKENDS", 100)
	minutes := soakEnvInt("SPAWNER_SOAK_MINUTES", 20)
	e := framework.Deployed(t)
	loadStart := loadAverage()
	began := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The watch runs from before the first spawn: it starts each client the
	// moment its backend is Ready (a client that waited for others would
	// leave its backend idle past grace), reports sweeps to the records, and
	// counts which writes were activity updates.
	var (
		wmu            sync.Mutex
		byName         = map[string]*soakClient{}
		readyCh        = map[string]chan string{} // "" when Ready, else why not
		start, end     time.Time                  // the measured window (set after the ramp)
		activityWrites int
		otherWrites    int
		perMinute      = map[int]int{}
	)
	client := func(name string) (*soakClient, chan string) {
		wmu.Lock()
		defer wmu.Unlock()
		return byName[name], readyCh[name]
	}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		last := map[string]*spawnerv1.SessionLivedBackend{}
		signalled := map[string]bool{}
		rv := ""
		for ctx.Err() == nil {
			// Resumed from the last resourceVersion seen: a sweep that
			// happened while the watch was being re-established is not lost.
			wi, err := e.Spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
			if err != nil {
				time.Sleep(time.Second)
				continue
			}
			for ev := range wi.ResultChan() {
				if ev.Type == watch.Error {
					rv = "" // too old: start from a fresh list
					break
				}
				s, ok := ev.Object.(*spawnerv1.SessionLivedBackend)
				if !ok {
					continue
				}
				rv = s.ResourceVersion
				c, ready := client(s.Name)
				if c == nil {
					continue
				}
				now := time.Now()
				if !signalled[s.Name] {
					why, final := "", false
					switch s.Status.Phase {
					case lifecycle.Ready:
						final = true
					case lifecycle.Failed, lifecycle.Swept, lifecycle.Terminating:
						why, final = string(s.Status.Phase), true
						for _, cond := range s.Status.Conditions {
							if cond.Status == metav1.ConditionTrue && cond.Reason != "" {
								why += " (" + cond.Reason + ": " + cond.Message + ")"
							}
						}
					}
					if ev.Type == watch.Deleted {
						why, final = "deleted", true
					}
					if final {
						signalled[s.Name] = true
						ready <- why
					}
				}
				if ev.Type == watch.Deleted || s.Status.Phase == lifecycle.Swept || s.Status.Phase == lifecycle.Terminating {
					c.observeSweep(now)
				}
				wmu.Lock()
				if ev.Type == watch.Modified && !start.IsZero() && now.After(start) && now.Before(end) {
					prev := last[s.Name]
					if prev != nil && equality.Semantic.DeepEqual(prev.Status.Conditions, s.Status.Conditions) &&
						!equality.Semantic.DeepEqual(prev.Status.Activity, s.Status.Activity) {
						activityWrites++
						perMinute[int(now.Sub(start)/time.Minute)]++
					} else {
						otherWrites++
					}
				}
				wmu.Unlock()
				last[s.Name] = s
			}
			wi.Stop()
		}
	}()
	// Missed sweeps are noted as they happen (soakRecord.checkOverdue).
	go func() {
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tk.C:
				wmu.Lock()
				cs := make([]*soakClient, 0, len(byName))
				for _, c := range byName {
					cs = append(cs, c)
				}
				wmu.Unlock()
				for _, c := range cs {
					c.checkOverdue(now)
				}
			}
		}
	}()

	// The ramp: at most 20 backends spawned and not yet Ready (all at once
	// left the node's kubelet creating 100 pods together: 2 of 100 timed
	// out). A backend that does not start (the node overloaded:
	// StartupTimeout) is not part of the soak: it is reported as what did
	// not fit.
	var (
		smu        sync.Mutex
		notStarted []string
		started    []*soakClient
		cwg, rwg   sync.WaitGroup
	)
	sem := make(chan struct{}, 20)
	spawnStart := time.Now()
	for i := range n {
		kind := soakKinds[i%len(soakKinds)]
		req := framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(int64(soakGrace / time.Second))}
		if kind == "silent" {
			req.IdlePolicy = &framework.IdlePolicy{WSIdleSeconds: framework.Seconds(soakWSIdle)}
		}
		sem <- struct{}{}
		c := &soakClient{b: e.Spawn(t, req), kind: kind, i: i / len(soakKinds)}
		ch := make(chan string, 1)
		wmu.Lock()
		byName[c.b.Name], readyCh[c.b.Name] = c, ch
		wmu.Unlock()
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			var why string
			select {
			case why = <-ch:
			case <-time.After(10 * time.Minute):
				why = "not Ready within 10m0s"
			}
			<-sem
			smu.Lock()
			defer smu.Unlock()
			if why != "" {
				notStarted = append(notStarted, c.b.Name+": "+why)
				wmu.Lock()
				delete(byName, c.b.Name)
				wmu.Unlock()
				return
			}
			started = append(started, c)
			// The client plays its script over the next M minutes.
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				at := time.Now()
				c.run(ctx, t, at, at.Add(time.Duration(minutes)*time.Minute), rand.New(rand.NewPCG(uint64(c.i*len(soakKinds)+len(c.kind)), 42)))
			}()
		}()
	}
	rwg.Wait()
	clients := started
	rampTime := time.Since(spawnStart)
	t.Logf("%d of %d backends Ready in %v; did not start: %v", len(clients), n, rampTime.Round(time.Second), notStarted)
	wmu.Lock()
	start = time.Now()
	end = start.Add(time.Duration(minutes) * time.Minute)
	wmu.Unlock()

	// The kills: controller, api-server, sweeper, twice each, spread out.
	type kill struct {
		component string
		at        time.Time
		back      time.Duration
	}
	var kills []kill
	killsDone := make(chan struct{})
	go func() {
		defer close(killsDone)
		order := []string{framework.Controller, framework.APIServer, framework.Sweeper}
		total := 2 * len(order)
		for k := range total {
			at := start.Add(time.Duration(k+1) * time.Duration(minutes) * time.Minute / time.Duration(total+1))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
			killed, back := soakKill(t, e, order[k%len(order)])
			kills = append(kills, kill{order[k%len(order)], killed, back})
			t.Logf("killed %s at +%v; a replacement was Ready %v later", order[k%len(order)], killed.Sub(start).Round(time.Second), back.Round(100*time.Millisecond))
		}
	}()

	cwg.Wait()
	<-killsDone
	// Every client has left: each backend is due grace after its last
	// activity; the watch and the overdue check run until all are due and
	// past the missed margin.
	time.Sleep(soakGrace + soakMissAfter + 3*time.Second)
	cancel()
	<-watchDone
	finished := time.Now()
	loadEnd := loadAverage()

	// Verdicts from the clients' records.
	var falseSweeps, missed, errs []string
	var all, outsideOutage []time.Duration
	sweeperDown := func(at time.Time) bool {
		for _, k := range kills {
			if k.component == framework.Sweeper && !at.Before(k.at) && at.Before(k.at.Add(k.back+2*time.Second)) {
				return true
			}
		}
		return false
	}
	missedInOutage, sweptInOutage, beforeClient := 0, 0, 0
	var perBackend strings.Builder
	for _, c := range clients {
		v := c.verdict()
		c.mu.Lock()
		if c.lastActive.IsZero() && !c.sweptAt.IsZero() {
			// Swept before its client ever connected: the client did not
			// dial within grace of the backend's start.
			beforeClient++
			c.mu.Unlock()
			continue
		}
		for _, m := range c.errors {
			// A connection cut by the pod's deletion a moment before the
			// watch saw the sweep is the sweep, not an error.
			if !c.sweptAt.IsZero() && m.at.After(c.sweptAt.Add(-5*time.Second)) {
				continue
			}
			errs = append(errs, c.b.Name+" ("+c.kind+"): "+m.msg)
		}
		c.mu.Unlock()
		if v.falseSweep != "" {
			falseSweeps = append(falseSweeps, c.b.Name+" ("+c.kind+"): "+v.falseSweep)
			continue
		}
		inOutage := (v.swept || v.missed) && sweeperDown(v.due)
		if v.swept {
			all = append(all, v.late)
			if inOutage {
				sweptInOutage++
			} else {
				outsideOutage = append(outsideOutage, v.late)
			}
			fmt.Fprintf(&perBackend, "| %s | %s | %s | %v |%s\n", c.b.Name, c.kind, v.due.Format("15:04:05.000"), v.late.Round(time.Millisecond), map[bool]string{true: " due in a sweeper restart"}[inOutage])
		}
		if v.missed {
			if inOutage {
				missedInOutage++
			} else if v.swept {
				missed = append(missed, fmt.Sprintf("%s (%s): due %s, swept %v after it", c.b.Name, c.kind, v.due.Format("15:04:05.000"), v.late.Round(time.Millisecond)))
			} else {
				missed = append(missed, fmt.Sprintf("%s (%s): due %s, not swept", c.b.Name, c.kind, v.due.Format("15:04:05.000")))
			}
		}
	}
	la, lo := summarizeLateness(all), summarizeLateness(outsideOutage)
	wmu.Lock()
	rate := float64(activityWrites) / end.Sub(start).Seconds()
	maxMinute := 0
	for _, v := range perMinute {
		maxMinute = max(maxMinute, v)
	}
	wmu.Unlock()
	r := func(d time.Duration) string { return fmt.Sprint(d.Round(time.Millisecond)) }
	report := fmt.Sprintf(`| figure | value |
| --- | --- |
| command | make soak SOAK_BACKENDS=%d SOAK_MINUTES=%d |
| run (UTC) | %s – %s; load average %s at the start, %s at the end |
| backends spawned / Ready (mix: %s, 1/5 each; ≤ 20 starting at once) | %d / %d in %v (did not start: %d) |
| measured window after the ramp | %v |
| kills (controller leader, an api-server replica, the sweeper; each twice) | %d |
| false sweeps (swept while a client held it, or > %v before last activity + grace) | %d |
| missed sweeps (idle past grace + %v and not swept, due outside a sweeper restart) | %d |
| sweeps seen (each judged against its client's last activity + grace) | %d |
| delay past due, all sweeps (p50 / p99 / max; earliest) | %s / %s / %s; %s |
| sweeps within %v of due, all | %d of %d |
| sweeps whose due time fell in a sweeper restart (late or missed there) | %d swept, %d past grace + %v |
| delay past due, the other sweeps (p50 / p99 / max) | %s / %s / %s |
| sweeps within %v of due, the other sweeps | %d of %d |
| swept before its client first connected | %d |
| client-visible errors | %d |
| activity writes to the API server (in the measured window) | %d (%.2f/s, %.4f per backend per second; busiest minute %d) |
| other slab writes (lifecycle) | %d |
`, n, minutes, began.UTC().Format("2006-01-02 15:04"), finished.UTC().Format("15:04"), loadStart, loadEnd,
		strings.Join(soakKinds, ", "), n, len(clients), rampTime.Round(time.Second), len(notStarted), end.Sub(start).Round(time.Second), len(kills),
		soakSlack, len(falseSweeps), soakMissAfter, len(missed), la.n, r(la.p50), r(la.p99), r(la.max), r(la.early), soakOnTime, la.onTime, la.n,
		sweptInOutage, missedInOutage, soakMissAfter, r(lo.p50), r(lo.p99), r(lo.max), soakOnTime, lo.onTime, lo.n,
		beforeClient, len(errs), activityWrites, rate, rate/float64(max(len(clients), 1)), maxMinute, otherWrites)
	t.Logf("soak report:\n%s", report)
	for _, k := range kills {
		t.Logf("kill: %s at +%v, back after %v", k.component, k.at.Sub(start).Round(time.Second), k.back.Round(100*time.Millisecond))
	}
	for _, m := range notStarted {
		t.Logf("did not start: %s", m)
	}
	for _, m := range errs {
		t.Logf("client error: %s", m)
	}
	perBackendTable := "\nEach sweep (backend, kind, due = client's last activity + grace, delay past due):\n\n| backend | kind | due | delay |\n| --- | --- | --- | --- |\n" + perBackend.String()
	t.Logf("%s", perBackendTable)
	if path := os.Getenv("SPAWNER_SOAK_REPORT"); path != "" {
		os.WriteFile(path, []byte(report+perBackendTable), 0o644)
	}
	for _, f := range falseSweeps {
		t.Errorf("false sweep: %s", f)
	}
	for _, m := range missed {
		t.Errorf("missed sweep: %s", m)
	}
}
