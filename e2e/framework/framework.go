// Package framework is how spawner's end-to-end suite and benchmarks see a
// deployed spawner: only through its public interfaces (the control API, the
// router URLs it hands out, and kubectl-level objects) on whatever cluster
// KUBECONFIG points at — the local cluster here, kind where Docker works.
//
// It expects spawner deployed from deploy/ by scripts/deploy.sh (which
// `make up`, `make e2e` and `make test-cluster` run) with the demo image loaded.
package framework

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/generated/clientset/versioned"
)

const (
	SystemNamespace  = spawnerv1.SystemNamespace
	BackendNamespace = spawnerv1.DefaultBackendNamespace
)

// DemoImage is the demo app's image, as every cluster suite names it.
var DemoImage = clustertest.DemoImage

// The deployed components as deploy/ names them: each one's Deployment or
// DaemonSet, Service and pods (label app.kubernetes.io/name=<name>), and the
// controller's Lease.
const (
	Controller = "spawner-controller"
	APIServer  = "spawner-api"
	Sweeper    = "spawner-sweeper"
)

// ComponentLabel names the component a pod of deploy/ belongs to.
const ComponentLabel = "app.kubernetes.io/name"

// PodsOf is the label selector of a deployed component's pods.
func PodsOf(component string) string { return ComponentLabel + "=" + component }

// env is the deployed spawner as a user sees it.
type Env struct {
	Kube    kubernetes.Interface
	Spawner versioned.Interface
	Control string // base URL of the control API
	Token   string // a control API bearer token
	// HTTP does not follow redirects, so tests see them.
	HTTP *http.Client
}

var (
	envOnce   sync.Once
	shared    *Env
	sharedErr error
)

// deployed returns the deployed spawner, found once per test binary.
func Deployed(t testing.TB) *Env {
	t.Helper()
	cfg := clustertest.Config(t)
	envOnce.Do(func() { shared, sharedErr = discover(cfg) })
	if sharedErr != nil {
		t.Fatalf("finding the deployed spawner (deploy it with scripts/deploy.sh): %v", sharedErr)
	}
	return shared
}

// discover reads the control token from the Secret users install and finds
// the control API: SPAWNER_E2E_CONTROL_URL when set, else the Service's
// ClusterIP when this host reaches it (the local cluster runs kube-proxy on
// the host), else a kubectl port-forward (kind).
func discover(cfg *rest.Config) (*Env, error) {
	e := &Env{
		Kube:    kubernetes.NewForConfigOrDie(cfg),
		Spawner: versioned.NewForConfigOrDie(cfg),
		HTTP:    &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	ctx := context.Background()
	secret, err := e.Kube.CoreV1().Secrets(SystemNamespace).Get(ctx, "spawner-api-tokens", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the control token Secret: %w", err)
	}
	e.Token = strings.TrimSpace(strings.SplitN(strings.TrimSpace(string(secret.Data["token"])), "\n", 2)[0])
	if e.Token == "" {
		return nil, fmt.Errorf("Secret %s/spawner-api-tokens has no key 'token'", SystemNamespace)
	}

	if url := os.Getenv("SPAWNER_E2E_CONTROL_URL"); url != "" {
		e.Control = strings.TrimRight(url, "/")
		return e, nil
	}
	svc, err := e.Kube.CoreV1().Services(SystemNamespace).Get(ctx, APIServer, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Service spawner-api: %w", err)
	}
	if len(svc.Spec.Ports) == 0 {
		return nil, fmt.Errorf("Service spawner-api has no ports")
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(svc.Spec.Ports[0].Port))
	if isControlAPI(e.HTTP, "http://"+addr) {
		e.Control = "http://" + addr
		return e, nil
	}
	local, err := portForward(svc.Name, svc.Spec.Ports[0].Port)
	if err != nil {
		return nil, fmt.Errorf("Service spawner-api's ClusterIP %s is not reachable from here and port-forwarding failed: %w", addr, err)
	}
	e.Control = "http://" + local
	return e, nil
}

// isControlAPI says whether spawner's control API answers at base: GET
// /spawn is 405 there. A successful TCP connect is no proof: on a host whose
// network hands every unknown address to a proxy (this CI's VMs do), a kind
// cluster's ClusterIP "answers" with the proxy's 404.
func isControlAPI(client *http.Client, base string) bool {
	c := *client
	c.Timeout = 3 * time.Second
	resp, err := c.Get(base + "/spawn")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusMethodNotAllowed
}

// SpawnRequest is the body of POST /spawn.
type SpawnRequest struct {
	Image              string            `json:"image"`
	Port               int               `json:"port,omitempty"`
	Env                map[string]string `json:"env,omitempty"`
	GracePeriodSeconds *int64            `json:"gracePeriodSeconds,omitempty"`
	Key                string            `json:"key,omitempty"`
	MaxLifetimeSeconds *int64            `json:"maxLifetimeSeconds,omitempty"`
	IdlePolicy         *IdlePolicy       `json:"idlePolicy,omitempty"`
}

// IdlePolicy is the spawn request's idlePolicy (what keeps a backend alive).
type IdlePolicy struct {
	WSIdleSeconds *int64 `json:"wsIdleSeconds,omitempty"`
	CountRequests *bool  `json:"countRequests,omitempty"`
}

type SpawnResponse struct {
	Name      string `json:"name"`
	URL       string `json:"url"`
	ReadyURL  string `json:"readyUrl"`
	StatusURL string `json:"statusUrl"`
	Spawned   bool   `json:"spawned"`
}

type StatusEvent struct {
	State   string `json:"state"`
	Time    string `json:"time"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Activity is status.activity (why the backend is alive), as
	// GET /backend/{name}/status answers it.
	Activity *Activity `json:"activity,omitempty"`
}

// Activity is a backend's status.activity.
type Activity struct {
	Connections      int    `json:"connections"`
	WebSockets       int    `json:"webSockets"`
	InFlightRequests int    `json:"inFlightRequests"`
	LastActivity     string `json:"lastActivity"`
	LastActivityTime string `json:"lastActivityTime"`
	IdleSince        string `json:"idleSince"`
	SweepAfter       string `json:"sweepAfter"`
	KeepaliveTime    string `json:"keepaliveTime"`
}

// Status is GET /backend/{name}/status.
func (e *Env) Status(t testing.TB, name string) StatusEvent {
	t.Helper()
	var st StatusEvent
	if code := e.Do(t, "GET", "/backend/"+name+"/status", nil, &st); code != http.StatusOK {
		t.Fatalf("status of %s answered %d", name, code)
	}
	return st
}

func Seconds(n int64) *int64 { return &n }

// do sends an authenticated control API request and decodes a JSON answer
// into out (when not nil); it returns the status code.
func (e *Env) Do(t testing.TB, method, path string, body any, out any) int {
	t.Helper()
	var reader io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.Control+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.Token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := e.HTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		// Not spawner's answer (every one of its control answers is JSON):
		// this connection may have reached something else on this host's
		// network while the Service had no endpoint (see
		// TestControlAPIReachableWhileEveryReplicaIsReplaced). Do not reuse
		// it: it is idle now that its body is read and closed.
		e.HTTP.CloseIdleConnections()
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s answered %d with %q: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

// spawn asks for a backend and registers a hard terminate for the end of
// the test, so a failing test leaks nothing.
func (e *Env) Spawn(t testing.TB, req SpawnRequest) SpawnResponse {
	t.Helper()
	var resp SpawnResponse
	if code := e.Do(t, "POST", "/spawn", req, &resp); code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("POST /spawn answered %d", code)
	}
	t.Cleanup(func() { e.Do(t, "POST", "/backend/"+resp.Name+"/terminate", map[string]bool{"hard": true}, nil) })
	return resp
}

// stream follows a backend's status stream and sends each event until the
// stream ends or ctx is done.
func (e *Env) Stream(ctx context.Context, t testing.TB, name string) <-chan StatusEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", e.Control+"/backend/"+name+"/status/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.Token)
	// A replica killed a moment ago stays behind the Service until
	// kube-proxy catches up: a refused connection is retried, like a
	// browser's EventSource would. So is an answer that is not spawner's
	// (every error of its control API is JSON): while the Service has no
	// endpoint, or kind's port-forward is moving to a live replica, the
	// request can reach something else on this host's network, which
	// answers 404 (a 3-node kind run failed that way right after an
	// api-server replica was killed).
	var resp *http.Response
	for attempt := 0; ; attempt++ {
		resp, err = (&http.Client{}).Do(req)
		notSpawners := err == nil && resp.StatusCode != http.StatusOK && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json")
		if notSpawners && attempt < 20 && ctx.Err() == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %d, not as spawner", resp.StatusCode)
		}
		if (err == nil && !notSpawners) || attempt == 20 || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("status stream of %s: %v", name, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("status stream of %s answered %d", name, resp.StatusCode)
	}
	events := make(chan StatusEvent, 16)
	go func() {
		defer close(events)
		defer resp.Body.Close()
		lines := bufio.NewScanner(resp.Body)
		for lines.Scan() {
			data, ok := strings.CutPrefix(lines.Text(), "data: ")
			if !ok {
				continue
			}
			var ev StatusEvent
			if json.Unmarshal([]byte(data), &ev) == nil {
				select {
				case events <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return events
}

// waitForState follows the status stream until the backend reaches state,
// failing on any state in failOn; it returns every state seen, in order.
func (e *Env) WaitForState(t testing.TB, name, state string, timeout time.Duration) []StatusEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var seen []StatusEvent
	// A stream can end early when the replica serving it dies; like a
	// browser's EventSource, reconnect (each stream replays the past).
	for ctx.Err() == nil {
		seen = nil
		for ev := range e.Stream(ctx, t, name) {
			seen = append(seen, ev)
			if ev.State == state {
				return seen
			}
			if ev.State == "Deleted" || (ev.State == "Failed" && state != "Failed") {
				t.Fatalf("backend %s ended as %s (%s: %s) instead of reaching %s; states seen: %+v", name, ev.State, ev.Reason, ev.Message, state, seen)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("backend %s never reached %s within %v; states seen: %+v", name, state, timeout, seen)
	return nil
}

// states lists the state names of events.
func States(events []StatusEvent) []string {
	var names []string
	for _, ev := range events {
		names = append(names, ev.State)
	}
	return names
}

// WaitGone waits until neither the backend's slab nor its pod exists.
func (e *Env) WaitGone(t testing.TB, name string, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	clustertest.Eventually(t, timeout, "slab and pod "+name+" deleted", func() (bool, error) {
		_, slabErr := e.Spawner.SpawnerV1().SessionLivedBackends(BackendNamespace).Get(ctx, name, metav1.GetOptions{})
		_, podErr := e.Kube.CoreV1().Pods(BackendNamespace).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(slabErr) && apierrors.IsNotFound(podErr), nil
	})
}

// DemoMembers is how many members the demo room at statsURL (a backend URL
// ending in /stats, through the router) counts. A client's WebSocket
// handshake completes before the room has registered it: tests wait for the
// count before they send to every member.
func DemoMembers(statsURL string) (int64, error) {
	resp, err := http.Get(statsURL)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var stats map[string]int64
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		return 0, err
	}
	return stats["members"], nil
}
