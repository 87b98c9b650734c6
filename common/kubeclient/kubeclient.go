// Package kubeclient builds the client-go configuration every spawner
// component uses, from the same flags everywhere.
package kubeclient

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// Options are the connection settings a component takes from its flags.
type Options struct {
	// Kubeconfig is a kubeconfig file; empty means $KUBECONFIG, then the
	// in-cluster service account.
	Kubeconfig string
	// QPS and Burst replace client-go's defaults of 5 and 10, which throttle a
	// controller creating hundreds of pods to a crawl.
	QPS   float64
	Burst int
}

// AddFlags registers --kubeconfig, --kube-api-qps and --kube-api-burst.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "path to a kubeconfig file (default: $KUBECONFIG, then the in-cluster service account)")
	fs.Float64Var(&o.QPS, "kube-api-qps", 100, "sustained requests per second to the Kubernetes API server")
	fs.IntVar(&o.Burst, "kube-api-burst", 200, "burst of requests to the Kubernetes API server above --kube-api-qps")
}

// Config returns a rest.Config for the cluster, identified to the API server
// as userAgent.
func (o *Options) Config(userAgent string) (*rest.Config, error) {
	path := o.Kubeconfig
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	var (
		cfg *rest.Config
		err error
	)
	if path != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("reading kubeconfig %s: %w", path, err)
		}
	} else {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig or $KUBECONFIG given and not running in a cluster: %w", err)
		}
	}
	if o.QPS <= 0 || o.Burst <= 0 {
		return nil, fmt.Errorf("--kube-api-qps and --kube-api-burst must be positive (got %v and %d)", o.QPS, o.Burst)
	}
	cfg.QPS = float32(o.QPS)
	cfg.Burst = o.Burst
	cfg.UserAgent = userAgent
	return cfg, nil
}

// Clients are what a spawner component talks to the API server with.
type Clients[S any] struct {
	Config *rest.Config
	Kube   kubernetes.Interface
	// Spawner is the spawner.dev clientset (generated/clientset/versioned).
	Spawner S
}

// NewClients builds the rest.Config from o and both clientsets on it, the
// one way every component does. newSpawner is versioned.NewForConfig: common
// does not import the generated clientset, so the sidecar's module, which
// needs common/wire, stays free of it.
func NewClients[S any](o *Options, userAgent string, newSpawner func(*rest.Config) (S, error)) (Clients[S], error) {
	var c Clients[S]
	cfg, err := o.Config(userAgent)
	if err != nil {
		return c, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return c, fmt.Errorf("building the Kubernetes client: %w", err)
	}
	sp, err := newSpawner(cfg)
	if err != nil {
		return c, fmt.Errorf("building the spawner.dev client: %w", err)
	}
	return Clients[S]{Config: cfg, Kube: kube, Spawner: sp}, nil
}

// RouteKlog sends klog — where client-go writes its own lines (leader
// election, watch errors, event broadcasting) — into log, so a process writes
// one format; klog's V(n) lines pass when n <= verbosity.
func RouteKlog(log *slog.Logger, verbosity int) {
	var fs flag.FlagSet
	klog.InitFlags(&fs)
	fs.Set("v", strconv.Itoa(verbosity))
	klog.SetSlogLogger(log)
}
