package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/kubeclient"
	"spawner.dev/generated/clientset/versioned"
	"spawner.dev/generated/informers/externalversions"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"
)

const indexKeyHash = "keyHash"

// Server is one api-server replica.
type Server struct {
	cfg   Config
	log   *slog.Logger
	kube  kubernetes.Interface
	slabs versioned.Interface
	creds *credentials

	// routes builds backend URLs and finds the backend of a request
	// (path or host mode); routes.Secure() makes the token cookie Secure.
	routes spawnerv1.PublicRoutes

	slabFactory externalversions.SharedInformerFactory
	podFactory  kubeinformers.SharedInformerFactory
	slabInf     cache.SharedIndexInformer
	podInf      cache.SharedIndexInformer
	slabLister  spawnerlisters.SessionLivedBackendNamespaceLister
	poolInf     cache.SharedIndexInformer
	poolLister  spawnerlisters.BackendPoolNamespaceLister

	// upstreamPort is the sidecar's public port; only tests change it.
	upstreamPort string

	watchers *watchers
	// ownSlabs and ownPods are this replica's own write results over its
	// caches (ownwrites.go): cachedSlab and pod read through them.
	ownSlabs, ownPods *ownWrites
	limits            *spawnLimits
	metrics           *serverMetrics
	proxy             *routerProxy
	psa               *podSecurity   // nil with --check-pod-security=false
	taken             takenHere      // warm pods this replica's claims took a moment ago
	lists             poolLists      // lists of pools' free pods shared by concurrent claims
	claims            claimsInFlight // pool spawns not answered yet
	peers             *peers         // the other replicas, to split warm pods with

	shuttingDown chan struct{}
	shutdownOnce sync.Once
	// background is the work a handler leaves running after it answered
	// (recording a warm claim Ready); Run waits for it before returning.
	background sync.WaitGroup
}

// Run sets up logging from cfg.Log (unless cfg.Logger is given), builds the
// clients from cfg.Kube and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = cfg.Log.Setup()
		kubeclient.RouteKlog(cfg.Logger, int(cfg.Log.Verbosity))
	}
	clients, err := kubeclient.NewClients(&cfg.Kube, "spawner-api-server", versioned.NewForConfig)
	if err != nil {
		return err
	}
	s, err := New(cfg, clients.Kube, clients.Spawner)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// New builds a server on the given clients; nothing runs until Run or Start.
func New(cfg Config, kube kubernetes.Interface, slabs versioned.Interface) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BackendNamespace == "" {
		cfg.BackendNamespace = spawnerv1.DefaultBackendNamespace
	}
	routes, err := spawnerv1.NewPublicRoutes(cfg.PublicURL, cfg.PublicHostSuffix)
	if err != nil {
		return nil, fmt.Errorf("--public-url / --public-host-suffix: %w", err)
	}
	if cfg.ControlURL != "" {
		if cu, err := url.Parse(cfg.ControlURL); err != nil || (cu.Scheme != "http" && cu.Scheme != "https") || cu.Host == "" {
			return nil, fmt.Errorf("--control-url %q must be an absolute http(s) URL", cfg.ControlURL)
		}
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, kube: kube, slabs: slabs,
		routes:       routes,
		watchers:     newWatchers(),
		ownSlabs:     newOwnWrites(),
		ownPods:      newOwnWrites(),
		upstreamPort: sidecarPort,
		shuttingDown: make(chan struct{}),
	}
	s.creds = &credentials{cfg: &s.cfg, kube: kube, log: s.log}

	ns := cfg.BackendNamespace
	s.slabFactory = externalversions.NewSharedInformerFactoryWithOptions(slabs, 0, externalversions.WithNamespace(ns))
	s.slabInf = s.slabFactory.Spawner().V1().SessionLivedBackends().Informer()
	if err := s.slabInf.AddIndexers(cache.Indexers{indexTokenID: tokenIndexer, indexKeyHash: func(obj any) ([]string, error) {
		slab, ok := obj.(*spawnerv1.SessionLivedBackend)
		if !ok || slab.Labels[spawnerv1.LabelKeyHash] == "" {
			return nil, nil
		}
		return []string{slab.Labels[spawnerv1.LabelKeyHash]}, nil
	}}); err != nil {
		return nil, err
	}
	_ = s.slabInf.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(metav1.Object); ok {
			m.SetManagedFields(nil)
		}
		return obj, nil
	})
	s.slabLister = s.slabFactory.Spawner().V1().SessionLivedBackends().Lister().SessionLivedBackends(ns)
	// Warm pools a spawn may claim from (control_claim.go).
	s.poolInf = s.slabFactory.Spawner().V1().BackendPools().Informer()
	s.poolLister = s.slabFactory.Spawner().V1().BackendPools().Lister().BackendPools(ns)
	s.slabInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.ownSlabs.observe(obj); s.watchers.notify(obj) },
		UpdateFunc: func(_, obj any) { s.ownSlabs.observe(obj); s.watchers.notify(obj) },
		DeleteFunc: func(obj any) { s.ownSlabs.observeDelete(obj); s.watchers.deleted(obj) },
	})

	s.podFactory = kubeinformers.NewSharedInformerFactoryWithOptions(kube, 0, kubeinformers.WithNamespace(ns),
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = spawnerv1.LabelManagedBy + "=" + spawnerv1.ManagedByValue
		}))
	s.podInf = s.podFactory.Core().V1().Pods().Informer()
	// The router waits for a starting backend's pod as well as its slab.
	s.podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.ownPods.observe(obj); s.watchers.notify(obj) },
		UpdateFunc: func(_, obj any) { s.ownPods.observe(obj); s.watchers.notify(obj) },
		DeleteFunc: func(obj any) { s.ownPods.observeDelete(obj); s.watchers.notify(obj) },
	})
	// The router needs a pod's IP and whether it is alive: keep only that.
	_ = s.podInf.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return trimPod(p, s.upstreamPort), nil
		}
		return obj, nil
	})

	if cfg.MaxBackendsPerToken < 0 || cfg.SpawnRatePerToken < 0 || cfg.SpawnBurstPerToken < 0 {
		return nil, errors.New("--max-backends-per-token, --spawn-rate-per-token and --spawn-burst-per-token must not be negative")
	}
	if s.peers, err = newPeers(kube, cfg.PeerService, cfg.PodName); err != nil {
		return nil, err
	}
	s.limits = newSpawnLimits(cfg.SpawnRatePerToken, cfg.SpawnBurstPerToken, cfg.MaxBackendsPerToken, s.slabInf)
	s.metrics = newServerMetrics(s)
	s.proxy = newRouterProxy(s)
	if cfg.CheckPodSecurity {
		if s.psa, err = newPodSecurity(kube, ns); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Start loads credentials and starts the informers (not the listeners).
func (s *Server) Start(ctx context.Context) error {
	if err := s.creds.init(ctx); err != nil {
		return err
	}
	go s.creds.reload(ctx)
	s.slabFactory.Start(ctx.Done())
	s.podFactory.Start(ctx.Done())
	if s.psa != nil {
		s.psa.factory.Start(ctx.Done())
	}
	// Not waited for: until it syncs (or without the RBAC to), claims
	// pick at random, as with one replica.
	s.peers.start(ctx.Done())
	return nil
}

// synced reports whether both caches have synced.
func (s *Server) synced() bool {
	return s.slabInf.HasSynced() && s.podInf.HasSynced() && s.poolInf.HasSynced() && (s.psa == nil || s.psa.informer.HasSynced())
}

// WaitForSync blocks until the caches synced or ctx ends.
func (s *Server) WaitForSync(ctx context.Context) bool {
	synced := []cache.InformerSynced{s.slabInf.HasSynced, s.podInf.HasSynced, s.poolInf.HasSynced}
	if s.psa != nil {
		synced = append(synced, s.psa.informer.HasSynced)
	}
	return cache.WaitForCacheSync(ctx.Done(), synced...)
}

// Run starts everything and serves both listeners until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		return err
	}
	control := &http.Server{Addr: s.cfg.ControlAddr, Handler: s.ControlHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	router := &http.Server{Addr: s.cfg.RouterAddr, Handler: s.RouterHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	cl, err := net.Listen("tcp", s.cfg.ControlAddr)
	if err != nil {
		return fmt.Errorf("control listener: %w", err)
	}
	rl, err := net.Listen("tcp", s.cfg.RouterAddr)
	if err != nil {
		cl.Close()
		return fmt.Errorf("router listener: %w", err)
	}
	s.log.Info("api-server listening", "control", cl.Addr().String(), "router", rl.Addr().String(),
		"backendNamespace", s.cfg.BackendNamespace, "publicURL", s.routes.Base(), "publicHostSuffix", s.routes.HostSuffix())
	errc := make(chan error, 2)
	go func() { errc <- control.Serve(cl) }()
	go func() { errc <- router.Serve(rl) }()
	go func() {
		if s.WaitForSync(ctx) {
			s.log.Info("informer caches synced")
		}
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.shutdownOnce.Do(func() { close(s.shuttingDown) })
	if serveErr == nil && s.cfg.ShutdownDelay > 0 {
		s.log.Info("shutting down: not ready any more, still serving", "for", s.cfg.ShutdownDelay)
		time.Sleep(s.cfg.ShutdownDelay)
	}
	sctx, scancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer scancel()
	control.Shutdown(sctx)
	router.Shutdown(sctx)
	s.background.Wait()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// slab returns a backend from the cache or, failing that, the API server.
// A backend another replica created a moment ago may not be in this
// replica's cache yet; rather than answer 404 to a caller who was just told
// the name, the control API asks the API server. (The public router, open to
// anyone, never does: see routable.)
func (s *Server) slab(name string) (*spawnerv1.SessionLivedBackend, bool) {
	if slab, ok := s.cachedSlab(name); ok {
		return slab, true
	}
	slab, err := s.slabs.SpawnerV1().SessionLivedBackends(s.cfg.BackendNamespace).Get(context.TODO(), name, metav1.GetOptions{})
	if err != nil {
		return nil, false
	}
	// What the API said is newer than the cache: the next lookup (a ready
	// URL reads its backend to authenticate the request, then to answer
	// it; a client polls) reads it here, not from the API again.
	s.recordSlab(slab)
	return slab, true
}

// cachedSlab returns a backend from the cache, or as this replica's own
// last write of it returned it when that is newer (ownWrites).
func (s *Server) cachedSlab(name string) (*spawnerv1.SessionLivedBackend, bool) {
	var cached runtime.Object
	c, err := s.slabLister.Get(name)
	if err == nil {
		cached = c
	}
	obj, ok := s.ownSlabs.get(s.cfg.BackendNamespace+"/"+name, cached, err == nil)
	if !ok {
		return nil, false
	}
	slab, ok := obj.(*spawnerv1.SessionLivedBackend)
	return slab, ok
}

// pod returns a backend's pod from the cache, or as this replica's own last
// write of it returned it when that is newer (ownWrites: a warm pod it
// took).
func (s *Server) pod(name string) (*corev1.Pod, bool) {
	key := s.cfg.BackendNamespace + "/" + name
	var cached runtime.Object
	c, found, err := s.podInf.GetIndexer().GetByKey(key)
	if err == nil && found {
		if p, ok := c.(*corev1.Pod); ok {
			cached = p
		}
	}
	obj, ok := s.ownPods.get(key, cached, cached != nil)
	if !ok {
		return nil, false
	}
	p, ok := obj.(*corev1.Pod)
	return p, ok
}

// recordSlab lays a slab this replica wrote over its cache (ownSlabs),
// trimmed as the cache keeps slabs.
func (s *Server) recordSlab(slab *spawnerv1.SessionLivedBackend) {
	if slab == nil {
		return
	}
	c := slab.DeepCopy()
	c.ManagedFields = nil
	s.ownSlabs.record(c)
}

// recordPod lays a pod this replica wrote over its cache (ownPods), trimmed
// as the cache keeps pods.
func (s *Server) recordPod(p *corev1.Pod) {
	if p != nil {
		s.ownPods.record(trimPod(p, s.upstreamPort))
	}
}

// cachedOrLivePod is warm pod name from the cache if slab holds it there,
// else as the API has it now (the cache may not have the take yet).
func (s *Server) cachedOrLivePod(ctx context.Context, slab *spawnerv1.SessionLivedBackend, name string) (*corev1.Pod, error) {
	if p, ok := s.pod(name); ok && spawnerv1.HoldsPod(slab, p) {
		return p, nil
	}
	p, err := s.kube.CoreV1().Pods(slab.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	s.recordPod(p)
	return p, nil
}

// slabsForKey returns the cached backends of a key.
func (s *Server) slabsForKey(key string) []*spawnerv1.SessionLivedBackend {
	objs, err := s.slabInf.GetIndexer().ByIndex(indexKeyHash, keyHashLabel(key))
	if err != nil {
		return nil
	}
	out := make([]*spawnerv1.SessionLivedBackend, 0, len(objs))
	for _, o := range objs {
		if slab, ok := o.(*spawnerv1.SessionLivedBackend); ok && slab.Spec.Key == key {
			out = append(out, slab)
		}
	}
	return out
}
