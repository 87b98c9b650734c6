// Package apiserver is spawner's api-server: the control API that web apps
// call to spawn backends (bearer tokens), and the public router that browsers
// use to reach them (per-backend access tokens). Every read on the hot path is
// served from informer caches; writes go to the Kubernetes API server.
package apiserver

import (
	"flag"
	"log/slog"
	"time"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/kubeclient"
	"spawner.dev/common/logs"
)

// Config is everything the api-server takes from its flags.
type Config struct {
	ControlAddr      string
	RouterAddr       string
	BackendNamespace string
	// PublicURL is the base browsers reach the router at, e.g. http://localhost:30081.
	PublicURL string
	// PublicHostSuffix, when set, turns on host mode: backend URLs are
	// <scheme>://<name>.<suffix>/ (scheme and port of PublicURL) and the
	// router routes by Host (hostroute.go, spawnerv1.PublicRoutes).
	PublicHostSuffix string
	// ControlURL is the base of readyUrl/statusUrl; empty means the scheme and
	// host of the request that asked.
	ControlURL string

	TokenFile           string
	TokenSecret         string // namespace/name
	AccessKeyFile       string
	TokenReload         time.Duration
	TrustForwarded      bool
	MaxIdleConnsPerHost int
	RouterReadyWait     time.Duration
	ShutdownTimeout     time.Duration
	ShutdownDelay       time.Duration
	LogRequests         bool

	// Per control token (limits.go): a cap on live backends and a token
	// bucket for POST /spawn; zero disables each.
	// CheckPodSecurity: evaluate each spawn's pod against the backend
	// namespace's enforced Pod Security level first (podsecurity.go).
	CheckPodSecurity bool

	MaxBackendsPerToken int
	SpawnRatePerToken   float64
	SpawnBurstPerToken  int

	// PeerService is namespace/name of the Service whose ready endpoints are
	// this api-server's replicas: their claims split the warm pods between
	// them (peers.go). Empty: no split. PodName is this replica's pod.
	PeerService string
	PodName     string

	Kube kubeclient.Options
	Log  logs.Options

	// Logger is the server's logger; Run makes it from Log when nil, New
	// uses slog.Default().
	Logger *slog.Logger
}

// AddFlags registers the api-server's flags.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ControlAddr, "control-addr", ":8080", "listen address of the control API (bearer tokens)")
	fs.StringVar(&c.RouterAddr, "router-addr", ":8081", "listen address of the public router (/p/<name>/...)")
	fs.StringVar(&c.BackendNamespace, "backend-namespace", spawnerv1.DefaultBackendNamespace, "namespace the backends (SessionLivedBackends and their pods) live in")
	fs.StringVar(&c.PublicURL, "public-url", "http://localhost:8081", "base URL browsers reach the router at; backend URLs are <public-url>/p/<name>/")
	fs.StringVar(&c.PublicHostSuffix, "public-host-suffix", "", "host mode: backend URLs become <scheme>://<name>.<suffix>/ (scheme and port of --public-url) and the router routes by Host, one browser origin per backend; needs wildcard DNS (and a wildcard certificate) for *.<suffix> pointing at the router (empty: path mode, <public-url>/p/<name>/)")
	fs.StringVar(&c.ControlURL, "control-url", "", "base URL of the control API used in readyUrl/statusUrl (default: scheme and host of the request)")
	fs.StringVar(&c.TokenFile, "token-file", "", "file with the control API's bearer tokens, one per line (# comments allowed), each >= 32 bytes; re-read periodically")
	fs.StringVar(&c.TokenSecret, "token-secret", "", "namespace/name of a Secret whose key 'token' holds bearer tokens (one per line) and whose key 'access-token-key' may hold the access-token key")
	fs.StringVar(&c.AccessKeyFile, "access-token-key-file", "", "file holding the secret key (>= 32 bytes, never a value published in spawner's repository) from which per-backend access tokens are derived; every replica must share it")
	fs.DurationVar(&c.TokenReload, "token-reload-interval", 30*time.Second, "how often --token-file / --token-secret are re-read")
	fs.BoolVar(&c.TrustForwarded, "trust-forwarded-headers", false, "keep the client's X-Forwarded-For chain (set when the router sits behind a trusted proxy)")
	fs.IntVar(&c.MaxIdleConnsPerHost, "upstream-idle-conns-per-host", 256, "idle keep-alive connections kept per backend pod")
	fs.DurationVar(&c.RouterReadyWait, "router-ready-wait", 10*time.Second, "how long the router holds a request for a backend that is still starting before answering 503")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 20*time.Second, "how long in-flight requests get on shutdown")
	fs.DurationVar(&c.ShutdownDelay, "shutdown-delay", 0, "on SIGTERM, answer /readyz 503 but keep serving this long first, so load balancers stop sending new requests")
	fs.BoolVar(&c.LogRequests, "log-requests", true, "log one line per request")
	fs.BoolVar(&c.CheckPodSecurity, "check-pod-security", true, "answer 422 to a spawn whose pod the backend namespace's enforced Pod Security level (label pod-security.kubernetes.io/enforce) would refuse, before creating anything; needs get/list/watch on that namespace; turn off when the cluster's admission configuration exempts the backends")
	fs.IntVar(&c.MaxBackendsPerToken, "max-backends-per-token", 500, "live backends one control token may have; a spawn beyond it answers 429 (0: no cap)")
	fs.Float64Var(&c.SpawnRatePerToken, "spawn-rate-per-token", 20, "sustained POST /spawn requests per second per control token and replica; beyond it 429 with Retry-After (0: no limit)")
	fs.IntVar(&c.SpawnBurstPerToken, "spawn-burst-per-token", 200, "POST /spawn requests a control token may send at once before --spawn-rate-per-token applies")
	fs.StringVar(&c.PeerService, "peer-service", "", "namespace/name of the Service whose ready endpoints are this api-server's replicas: concurrent claims of different replicas then try different warm pods first (needs get/list/watch of endpointslices in that namespace; empty: no split)")
	fs.StringVar(&c.PodName, "pod-name", defaultPodName(), "this replica's pod name, as the --peer-service endpoints name it (default: $POD_NAME, else the hostname)")
	c.Kube.AddFlags(fs)
	c.Log.AddFlags(fs)
}
