//go:build cluster

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
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
// they did and when, and from a watch of the slabs.
const (
	soakGrace  = 20 * time.Second // every backend's gracePeriodSeconds
	soakWSIdle = 10               // wsIdleSeconds of the "silent" backends
	// soakSlack is the margin the verdicts allow for the hop between a
	// client's clock and the sidecar's (the same machine) and for the watch:
	// a sweep more than this before last activity + grace is false, more
	// than 2 s after it is missed.
	soakSlack = time.Second
)

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
	b    framework.SpawnResponse
	kind string
	i    int

	mu sync.Mutex
	// holding: a connection that keeps the backend alive is open (for
	// "silent", frames are still flowing). lastActive: the client's last act
	// that counts (a frame, an open, a close, the end of a request).
	holding    bool
	lastActive time.Time
	done       bool        // the client has left for good (its backend may be swept)
	sweptAt    time.Time   // when the watch first saw the slab Swept
	errors     []soakError // client-visible errors before any sweep
	falseSweep string
}

type soakError struct {
	at  time.Time
	msg string
}

func (c *soakClient) active(holding bool) {
	c.mu.Lock()
	c.holding, c.lastActive = holding, time.Now()
	c.mu.Unlock()
}

func (c *soakClient) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sweptAt.IsZero() {
		c.errors = append(c.errors, soakError{time.Now(), fmt.Sprintf(format, args...)})
	}
}

func (c *soakClient) swept() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.sweptAt.IsZero()
}

// observeSweep is the watch's report; the verdict on a false sweep is made
// from the client's state at that moment.
func (c *soakClient) observeSweep(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.sweptAt.IsZero() {
		return
	}
	c.sweptAt = at
	switch {
	case c.holding:
		c.falseSweep = "swept while the client held a connection open"
	case at.Before(c.lastActive.Add(soakGrace - soakSlack)):
		c.falseSweep = fmt.Sprintf("swept %v after the client's last activity, grace is %v", at.Sub(c.lastActive).Round(time.Millisecond), soakGrace)
	}
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
			c.fail("%s dial: %v (HTTP %d)", time.Now().Format("15:04:05"), err, code)
			time.Sleep(500 * time.Millisecond)
		}
		return false
	}
	c.active(holding)
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
			c.active(false)
			return true
		case err := <-broken:
			conn.Close()
			if ctx.Err() == nil && !c.swept() {
				c.fail("%s connection lost: %v", time.Now().Format("15:04:05"), err)
			}
			c.active(false)
			return false
		case <-tick:
			conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := conn.WriteMessage(websocket.TextMessage, []byte("soak")); err != nil {
				if ctx.Err() == nil && !c.swept() {
					c.fail("%s write: %v", time.Now().Format("15:04:05"), err)
				}
				conn.Close()
				c.active(false)
				return false
			}
			c.active(holding)
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
			c.fail("%s SSE request: %v %v", time.Now().Format("15:04:05"), err, resp)
			time.Sleep(500 * time.Millisecond)
		}
		if resp != nil {
			resp.Body.Close()
		}
		return false
	}
	c.active(true)
	buf := make([]byte, 512)
	for {
		if _, err := resp.Body.Read(buf); err != nil {
			resp.Body.Close()
			planned := rctx.Err() != nil
			c.active(false)
			if !planned && !c.swept() {
				c.fail("%s SSE stream broke: %v", time.Now().Format("15:04:05"), err)
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
	c.mu.Lock()
	c.done = true
	if c.holding {
		c.holding = false
	}
	c.mu.Unlock()
}

// kill deletes one pod of a component at once (no grace), as a crash would,
// and returns when a replacement is Ready again.
func soakKill(t testing.TB, e *framework.Env, component string) (killed time.Time, back time.Duration) {
	ctx := context.Background()
	pods, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + component})
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
	if component == "spawner-controller" {
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
		cur, err := e.Kube.CoreV1().Pods(framework.SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + component})
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

// waitReady follows the status stream until Ready; it returns why not
// ("" when Ready).
func waitReady(e *framework.Env, name string, within time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.Control+"/backend/"+name+"/status", nil)
		req.Header.Set("Authorization", "Bearer "+e.Token)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var st framework.StatusEvent
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			switch st.State {
			case "Ready":
				return ""
			case "Failed", "Swept", "Terminating":
				return st.State + " (" + st.Reason + ": " + st.Message + ")"
			}
		}
		time.Sleep(time.Second)
	}
	return "not Ready within " + within.String()
}

// TestSoak: see the constants above; SPAWNER_SOAK=1 runs it (make soak).
func TestSoak(t *testing.T) {
	if os.Getenv("SPAWNER_SOAK") == "" {
		t.Skip("SPAWNER_SOAK not set (make soak)")
	}
	n := soakEnvInt("SPAWNER_SOAK_BACKENDS", 100)
	minutes := soakEnvInt("SPAWNER_SOAK_MINUTES", 20)
	spawned := n
	e := framework.Deployed(t)

	// Spawn, ten at a time, and wait for every backend to be Ready.
	clients := make([]*soakClient, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	spawnStart := time.Now()
	for i := range clients {
		kind := soakKinds[i%len(soakKinds)]
		req := framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(int64(soakGrace / time.Second))}
		if kind == "silent" {
			req.IdlePolicy = &framework.IdlePolicy{WSIdleSeconds: framework.Seconds(soakWSIdle)}
		}
		clients[i] = &soakClient{b: e.Spawn(t, req), kind: kind, i: i / len(soakKinds)}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cwg sync.WaitGroup
	// A backend that fails to start (the node overloaded: StartupTimeout)
	// is not part of the soak: it is reported as what did not fit.
	var startMu sync.Mutex
	var notStarted []string
	for _, c := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if why := waitReady(e, c.b.Name, 10*time.Minute); why != "" {
				startMu.Lock()
				notStarted = append(notStarted, c.b.Name+": "+why)
				startMu.Unlock()
				return
			}
			// The client starts as soon as its backend is Ready (waiting
			// for all would leave the first ones idle past their grace) and
			// plays its script over the next M minutes.
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				at := time.Now()
				c.run(ctx, t, at, at.Add(time.Duration(minutes)*time.Minute), rand.New(rand.NewPCG(uint64(c.i*len(soakKinds)+len(c.kind)), 42)))
			}()
		}()
	}
	wg.Wait()
	byName := map[string]*soakClient{}
	started := clients[:0:0]
	for _, c := range clients {
		if !slices.ContainsFunc(notStarted, func(s string) bool { return strings.HasPrefix(s, c.b.Name+":") }) {
			byName[c.b.Name] = c
			started = append(started, c)
		}
	}
	clients = started
	t.Logf("%d of %d backends Ready in %v; did not start: %v", len(clients), n, time.Since(spawnStart).Round(time.Second), notStarted)

	// The watch: sweeps, and which writes were activity updates.
	var (
		wmu            sync.Mutex
		activityWrites int
		otherWrites    int
		perMinute      = map[int]int{}
	)
	start := time.Now()
	end := start.Add(time.Duration(minutes) * time.Minute)
	go func() {
		last := map[string]*spawnerv1.SessionLivedBackend{}
		for ctx.Err() == nil {
			wi, err := e.Spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).Watch(ctx, metav1.ListOptions{})
			if err != nil {
				time.Sleep(time.Second)
				continue
			}
			for ev := range wi.ResultChan() {
				s, ok := ev.Object.(*spawnerv1.SessionLivedBackend)
				if !ok || byName[s.Name] == nil {
					continue
				}
				now := time.Now()
				if ev.Type == watch.Deleted || s.Status.Phase == lifecycle.Swept || s.Status.Phase == lifecycle.Terminating {
					byName[s.Name].observeSweep(now)
				}
				if ev.Type == watch.Modified && now.Before(end) {
					prev := last[s.Name]
					wmu.Lock()
					if prev != nil && equality.Semantic.DeepEqual(prev.Status.Conditions, s.Status.Conditions) &&
						!equality.Semantic.DeepEqual(prev.Status.Activity, s.Status.Activity) {
						activityWrites++
						perMinute[int(now.Sub(start)/time.Minute)]++
					} else {
						otherWrites++
					}
					wmu.Unlock()
				}
				last[s.Name] = s
			}
		}
	}()

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
		order := []string{"spawner-controller", "spawner-api", "spawner-sweeper"}
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
	// Sweeps due before the end get grace + a margin to be seen.
	time.Sleep(5 * time.Second)
	cancel()

	// Verdicts from the clients' records.
	var falseSweeps, missed, errs []string
	var lateness []time.Duration
	sweeperDown := func(at time.Time) bool {
		for _, k := range kills {
			if k.component == "spawner-sweeper" && !at.Before(k.at) && at.Before(k.at.Add(k.back+2*time.Second)) {
				return true
			}
		}
		return false
	}
	duringOutage := 0
	swept := 0
	for _, c := range clients {
		c.mu.Lock()
		if c.falseSweep != "" {
			falseSweeps = append(falseSweeps, c.b.Name+" ("+c.kind+"): "+c.falseSweep)
		}
		for _, m := range c.errors {
			// A connection cut by the pod's deletion a moment before the
			// watch saw the sweep is the sweep, not an error.
			if !c.sweptAt.IsZero() && m.at.After(c.sweptAt.Add(-5*time.Second)) {
				continue
			}
			errs = append(errs, c.b.Name+" ("+c.kind+"): "+m.msg)
		}
		if !c.sweptAt.IsZero() {
			swept++
		}
		due := c.lastActive.Add(soakGrace)
		if !c.holding && c.falseSweep == "" && due.Add(2*time.Second).Before(end) && c.kind != "active" && c.kind != "reconnecting" && !(c.kind == "sse" && c.i%2 == 0) {
			late := c.sweptAt.Sub(due)
			if c.sweptAt.IsZero() {
				late = end.Sub(due)
			}
			lateness = append(lateness, late)
			if late > 2*time.Second {
				if sweeperDown(due) {
					duringOutage++
				} else {
					missed = append(missed, fmt.Sprintf("%s (%s): idle since %s, swept %v after its deadline", c.b.Name, c.kind, c.lastActive.Format("15:04:05.000"), late.Round(time.Millisecond)))
				}
			}
		}
		c.mu.Unlock()
	}
	sort.Slice(lateness, func(i, j int) bool { return lateness[i] < lateness[j] })
	pct := func(p float64) time.Duration {
		if len(lateness) == 0 {
			return 0
		}
		return lateness[min(len(lateness)-1, int(p*float64(len(lateness))))].Round(time.Millisecond)
	}
	dur := end.Sub(start)
	wmu.Lock()
	rate := float64(activityWrites) / dur.Seconds()
	n = len(clients)
	maxMinute := 0
	for _, v := range perMinute {
		maxMinute = max(maxMinute, v)
	}
	wmu.Unlock()
	report := fmt.Sprintf(`| figure | value |
| --- | --- |
| backends spawned / Ready (mix: %s, 1/5 each) | %d / %d |
| duration | %v |
| kills (each component twice) | %d |
| sweeps seen | %d (due: %d) |
| false sweeps | %d |
| missed sweeps (idle past grace + 2 s, not swept) | %d |
| late sweeps whose deadline fell in a sweeper restart | %d |
| sweep delay after grace (p50 / p90 / max) | %v / %v / %v |
| client-visible errors | %d |
| activity writes to the API server | %d (%.2f/s, %.4f per backend per second; busiest minute %d) |
| other slab writes (lifecycle) | %d |
`, strings.Join(soakKinds, ", "), spawned, len(clients), dur.Round(time.Second), len(kills), swept, len(lateness), len(falseSweeps), len(missed), duringOutage,
		pct(0.5), pct(0.9), pct(1), len(errs), activityWrites, rate, rate/float64(n), maxMinute, otherWrites)
	t.Logf("soak report:\n%s", report)
	for _, k := range kills {
		t.Logf("kill: %s at +%v, back after %v", k.component, k.at.Sub(start).Round(time.Second), k.back.Round(100*time.Millisecond))
	}
	for _, m := range errs {
		t.Logf("client error: %s", m)
	}
	if path := os.Getenv("SPAWNER_SOAK_REPORT"); path != "" {
		os.WriteFile(path, []byte(report), 0o644)
	}
	for _, f := range falseSweeps {
		t.Errorf("false sweep: %s", f)
	}
	for _, m := range missed {
		t.Errorf("missed sweep: %s", m)
	}
}
