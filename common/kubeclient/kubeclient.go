// Package kubeclient builds the client-go configuration every spawner
// component uses, from the same flags everywhere.
package kubeclient

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
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
