package reconciler

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/informers"
	kubescheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/env"
	"spawner.dev/common/kubeclient"
	"spawner.dev/common/logs"
	"spawner.dev/controller/pool"
	"spawner.dev/generated/clientset/versioned"
	spawnerscheme "spawner.dev/generated/clientset/versioned/scheme"
	"spawner.dev/generated/informers/externalversions"
)

// Config is everything the controller process is configured with.
type Config struct {
	Kube kubeclient.Options
	Log  logs.Options

	SidecarImage         string
	SidecarPullPolicy    string
	SidecarCPURequest    string
	SidecarMemoryRequest string
	PublicBaseURL        string
	PublicHostSuffix     string
	StartupTimeout       time.Duration
	FailedRetention      time.Duration
	Namespace            string
	Workers              int
	PoolMaxStarting      int
	ResyncPeriod         time.Duration
	HTTPAddress          string

	// The app container's requests and limits when its template sets none.
	AppCPURequest    string
	AppMemoryRequest string
	AppCPULimit      string
	AppMemoryLimit   string

	LeaderElect         bool
	LeaderElectionNS    string
	LeaderElectionID    string
	LeaseDuration       time.Duration
	RenewDeadline       time.Duration
	RetryPeriod         time.Duration
	LeaderElectionIdent string
}

// DefaultSidecarImage is the sidecar of this release.
const DefaultSidecarImage = "ghcr.io/spawner-dev/spawner-sidecar:v0.1.0"

// The sidecar's default requests follow its measured cost (docs/sidecar.md,
// Idle cost; sidecar/bench/idle): at rest it uses about 0.001% of a core
// (under 0.01% in its first minutes, while readiness backs off), so 1m, the
// smallest request Kubernetes expresses, is already ten times more; and 1.2 to
// 1.6 MiB of private memory plus its share of the binary's ~6.5 MiB of page
// cache, which all sidecars on a node share. 4Mi leaves room for a few
// hundred idle WebSockets (~8.5 KiB each). At the former 10m/16Mi, 168 idle
// sidecars reserved 1.7 of a 2-core node's CPU while using almost none, and
// spawns failed Unschedulable (issue 19).
const (
	DefaultSidecarCPURequest    = "1m"
	DefaultSidecarMemoryRequest = "4Mi"
)

// AddFlags registers the controller's flags (docs/controller.md lists them).
func (c *Config) AddFlags(fs *flag.FlagSet) {
	c.Kube.AddFlags(fs)
	c.Log.AddFlags(fs)
	fs.StringVar(&c.SidecarImage, "sidecar-image", env.Or("SPAWNER_SIDECAR_IMAGE", DefaultSidecarImage), "image of the spawner-sidecar container added to every backend pod (env SPAWNER_SIDECAR_IMAGE)")
	fs.StringVar(&c.SidecarPullPolicy, "sidecar-image-pull-policy", env.Or("SPAWNER_SIDECAR_IMAGE_PULL_POLICY", string(corev1.PullIfNotPresent)), "imagePullPolicy of the sidecar container: Always, IfNotPresent or Never")
	fs.StringVar(&c.SidecarCPURequest, "sidecar-cpu-request", DefaultSidecarCPURequest, "CPU request of the sidecar container (empty: none)")
	fs.StringVar(&c.SidecarMemoryRequest, "sidecar-memory-request", DefaultSidecarMemoryRequest, "memory request of the sidecar container (empty: none)")
	fs.StringVar(&c.AppCPURequest, "app-default-cpu-request", "5m", "CPU request of a backend's app container whose template sets no resources (empty: none)")
	fs.StringVar(&c.AppMemoryRequest, "app-default-memory-request", "32Mi", "memory request of a backend's app container whose template sets no resources (empty: none)")
	fs.StringVar(&c.AppCPULimit, "app-default-cpu-limit", "1", "CPU limit of a backend's app container whose template sets no resources (empty: none)")
	fs.StringVar(&c.AppMemoryLimit, "app-default-memory-limit", "512Mi", "memory limit of a backend's app container whose template sets no resources (empty: none)")
	fs.StringVar(&c.PublicBaseURL, "public-base-url", os.Getenv("SPAWNER_PUBLIC_BASE_URL"), "when set, status.url = <base>/p/<name>/, or <scheme>://<name>.<suffix>/ with --public-host-suffix (env SPAWNER_PUBLIC_BASE_URL)")
	fs.StringVar(&c.PublicHostSuffix, "public-host-suffix", os.Getenv("SPAWNER_PUBLIC_HOST_SUFFIX"), "host mode, as the api-server's flag of the same name: status.url = <scheme>://<name>.<suffix>/, scheme and port of --public-base-url (env SPAWNER_PUBLIC_HOST_SUFFIX)")
	fs.DurationVar(&c.StartupTimeout, "startup-timeout", 5*time.Minute, "a backend not Ready this long after creation fails (Unschedulable or StartupTimeout); 0 disables")
	fs.DurationVar(&c.FailedRetention, "failed-retention", 10*time.Minute, "how long a Failed slab is kept before it is deleted (its pod is deleted at once)")
	fs.StringVar(&c.Namespace, "namespace", "", "watch only this namespace (default: all namespaces)")
	fs.IntVar(&c.Workers, "workers", 16, "slabs synced concurrently")
	fs.IntVar(&c.PoolMaxStarting, "pool-max-starting", pool.DefaultMaxStarting, "warm pods each BackendPool starts at once (created, not Ready yet); a pool refilling after a burst of claims starts no more than this (0: the default)")
	fs.DurationVar(&c.ResyncPeriod, "resync-period", 10*time.Minute, "informer resync: every slab is re-synced this often as a safety net (0 disables)")
	fs.StringVar(&c.HTTPAddress, "http-address", ":8080", "address serving /healthz, /readyz and /metrics (empty disables)")
	fs.BoolVar(&c.LeaderElect, "leader-elect", true, "run only while holding the Lease lock, so replicas can stand by")
	fs.StringVar(&c.LeaderElectionNS, "leader-election-namespace", env.Or("POD_NAMESPACE", spawnerv1.SystemNamespace), "namespace of the Lease (env POD_NAMESPACE)")
	fs.StringVar(&c.LeaderElectionID, "leader-election-id", "spawner-controller", "name of the Lease")
	fs.DurationVar(&c.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "how long standbys wait before taking over an unrenewed lease")
	fs.DurationVar(&c.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader retries renewing before it gives up leading (and exits)")
	fs.DurationVar(&c.RetryPeriod, "leader-election-retry-period", 2*time.Second, "interval between lease acquire/renew attempts")
	fs.StringVar(&c.LeaderElectionIdent, "leader-election-identity", "", "identity in the Lease (default: hostname_random)")
}

// Options turns the flags into controller options.
func (c *Config) Options() (Options, error) {
	o := Options{PublicBaseURL: c.PublicBaseURL, PublicHostSuffix: c.PublicHostSuffix, StartupTimeout: c.StartupTimeout, FailedRetention: c.FailedRetention, PoolMaxStarting: c.PoolMaxStarting}
	if c.PoolMaxStarting < 0 {
		return o, fmt.Errorf("--pool-max-starting must not be negative, got %d", c.PoolMaxStarting)
	}
	if c.PublicHostSuffix != "" && c.PublicBaseURL == "" {
		return o, errors.New("--public-host-suffix needs --public-base-url (its scheme and port)")
	}
	if c.PublicBaseURL != "" {
		if _, err := spawnerv1.NewPublicRoutes(c.PublicBaseURL, c.PublicHostSuffix); err != nil {
			return o, fmt.Errorf("--public-base-url / --public-host-suffix: %w", err)
		}
	}
	if c.SidecarImage == "" {
		return o, errors.New("--sidecar-image must not be empty")
	}
	o.Sidecar.Image = c.SidecarImage
	switch p := corev1.PullPolicy(c.SidecarPullPolicy); p {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		o.Sidecar.PullPolicy = p
	default:
		return o, fmt.Errorf("--sidecar-image-pull-policy=%q: want Always, IfNotPresent or Never", c.SidecarPullPolicy)
	}
	for _, q := range []struct {
		flag, value string
		into        *resource.Quantity
	}{{"sidecar-cpu-request", c.SidecarCPURequest, &o.Sidecar.CPURequest}, {"sidecar-memory-request", c.SidecarMemoryRequest, &o.Sidecar.MemoryRequest},
		{"app-default-cpu-request", c.AppCPURequest, &o.AppResources.CPURequest}, {"app-default-memory-request", c.AppMemoryRequest, &o.AppResources.MemoryRequest},
		{"app-default-cpu-limit", c.AppCPULimit, &o.AppResources.CPULimit}, {"app-default-memory-limit", c.AppMemoryLimit, &o.AppResources.MemoryLimit}} {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil {
			return o, fmt.Errorf("--%s: %w", q.flag, err)
		}
		*q.into = v
	}
	for _, p := range []struct {
		what       string
		req, limit resource.Quantity
	}{{"cpu", o.AppResources.CPURequest, o.AppResources.CPULimit}, {"memory", o.AppResources.MemoryRequest, o.AppResources.MemoryLimit}} {
		if !p.limit.IsZero() && p.req.Cmp(p.limit) > 0 {
			return o, fmt.Errorf("--app-default-%s-request %s exceeds --app-default-%s-limit %s", p.what, p.req.String(), p.what, p.limit.String())
		}
	}
	if c.Workers < 1 {
		return o, errors.New("--workers must be at least 1")
	}
	if c.StartupTimeout < 0 || c.FailedRetention < 0 {
		return o, errors.New("--startup-timeout and --failed-retention must not be negative")
	}
	return o, nil
}

// Run runs the controller process until ctx ends (nil) or it cannot go on
// (an error; also when it loses the leader lease, so that it restarts clean).
func Run(ctx context.Context, cfg Config) error {
	opts, err := cfg.Options()
	if err != nil {
		return err
	}
	log := cfg.Log.Setup()
	kubeclient.RouteKlog(log, int(cfg.Log.Verbosity))
	clients, err := kubeclient.NewClients(&cfg.Kube, "spawner-controller", versioned.NewForConfig)
	if err != nil {
		return err
	}
	kube, sp := clients.Kube, clients.Spawner
	utilAddToScheme()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(3)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(kubescheme.Scheme, corev1.EventSource{Component: "spawner-controller"})

	m := NewMetrics()
	var (
		leading    atomic.Bool
		controller atomic.Pointer[Controller]
		watchdog   = leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	)

	if cfg.HTTPAddress != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			if err := watchdog.Check(r); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			switch c := controller.Load(); {
			case !leading.Load():
				fmt.Fprintln(w, "ok (standby)")
			case c == nil || !c.CachesSynced():
				http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			default:
				fmt.Fprintln(w, "ok")
			}
		})
		mux.Handle("/metrics", m)
		ln, err := net.Listen("tcp", cfg.HTTPAddress)
		if err != nil {
			return fmt.Errorf("--http-address: %w", err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving health and metrics", "address", ln.Addr().String())
	}

	runController := func(ctx context.Context) error {
		leading.Store(true)
		transform := func(obj interface{}) (interface{}, error) {
			if a, err := meta.Accessor(obj); err == nil {
				a.SetManagedFields(nil)
			}
			return obj, nil
		}
		spawnerFactory := externalversions.NewSharedInformerFactoryWithOptions(sp, cfg.ResyncPeriod,
			externalversions.WithNamespace(cfg.Namespace), externalversions.WithTransform(transform))
		kubeFactory := informers.NewSharedInformerFactoryWithOptions(kube, cfg.ResyncPeriod,
			informers.WithNamespace(cfg.Namespace), informers.WithTransform(transform),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.LabelSelector = spawnerv1.LabelManagedBy + "=" + spawnerv1.ManagedByValue
			}))
		slabs := spawnerFactory.Spawner().V1().SessionLivedBackends()
		pods := kubeFactory.Core().V1().Pods()
		c, err := New(Params{Kube: kube, Spawner: sp, Slabs: slabs, Pods: pods, Recorder: recorder, Metrics: m, Logger: log, Options: opts})
		if err != nil {
			return err
		}
		pools, err := newPoolController(sp, kube, spawnerFactory, pods, recorder, log, opts)
		if err != nil {
			return err
		}
		controller.Store(c)
		m.followPools(spawnerFactory.Spawner().V1().BackendPools().Lister())
		defer m.followPools(nil)
		spawnerFactory.Start(ctx.Done())
		kubeFactory.Start(ctx.Done())
		defer spawnerFactory.Shutdown()
		defer kubeFactory.Shutdown()
		poolErr := make(chan error, 1)
		go func() { poolErr <- pools.Run(ctx, poolWorkers) }()
		err = c.Run(ctx, cfg.Workers)
		if perr := <-poolErr; err == nil {
			err = perr
		}
		return err
	}

	if !cfg.LeaderElect {
		return runController(ctx)
	}

	id := cfg.LeaderElectionIdent
	if id == "" {
		host, _ := os.Hostname()
		id = host + "_" + rand.String(8)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.LeaderElectionNS, Name: cfg.LeaderElectionID},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	errCh := make(chan error, 1)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.LeaderElectionID,
		WatchDog:        watchdog,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				log.Info("became leader", "identity", id)
				errCh <- runController(ctx)
			},
			OnStoppedLeading: func() { log.Info("stopped leading", "identity", id) },
			OnNewLeader: func(leader string) {
				if leader != id {
					log.Info("standing by", "leader", leader)
				}
			},
		},
	})
	if err != nil {
		return err
	}
	log.Info("waiting for the leader lease", "lease", cfg.LeaderElectionNS+"/"+cfg.LeaderElectionID, "identity", id)
	elector.Run(ctx)
	select {
	case err := <-errCh:
		if err != nil {
			return err
		}
	default:
	}
	if ctx.Err() == nil {
		return errors.New("lost the leader lease")
	}
	return nil
}

var schemeOnce atomic.Bool

func utilAddToScheme() {
	if schemeOnce.CompareAndSwap(false, true) {
		// Events on slabs need their kind in the scheme the recorder uses.
		if err := spawnerscheme.AddToScheme(kubescheme.Scheme); err != nil {
			panic(err)
		}
	}
}
