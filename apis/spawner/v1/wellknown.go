package v1

// Names every spawner component agrees on. docs/architecture.md explains who
// sets each one and who reads it.
const (
	// LabelManagedBy marks the pods spawner created, so watches can select them.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value on spawner's pods.
	ManagedByValue = "spawner"
	// LabelBackend on a pod names the SessionLivedBackend it serves.
	LabelBackend = "spawner.dev/backend"
	// LabelNode on a SessionLivedBackend names the node its pod was scheduled to.
	LabelNode = "spawner.dev/node"
	// LabelKeyHash on a SessionLivedBackend is a hash of spec.key, so backends
	// of one key can be selected (a key itself may not be a valid label value).
	LabelKeyHash = "spawner.dev/key-hash"
	// LabelPool on a pod names the BackendPool that started it; it stays on
	// the pod after a claim, so a pool can count its claimed backends.
	LabelPool = "spawner.dev/pool"
	// LabelPoolTemplateHash on a warm pod is a hash of its pool's backend
	// spec when it was built; a pod of another hash is rolled (if unclaimed).
	LabelPoolTemplateHash = "spawner.dev/pool-template-hash"

	// AnnotationGracePeriodSeconds on a pod copies spec.gracePeriodSeconds, so
	// the sweeper can decide idleness from the pod alone.
	AnnotationGracePeriodSeconds = "spawner.dev/grace-period-seconds"
	// AnnotationPool on a SessionLivedBackend names the BackendPool it was
	// claimed from. Without AnnotationPod beside it the slab is claiming: no
	// pod is created for it until the claim is bound (docs/pools.md).
	AnnotationPool = "spawner.dev/pool"
	// AnnotationPod on a SessionLivedBackend names its pod when that is not
	// the slab's own name (a claimed warm pod); PodNameOf reads it.
	AnnotationPod = "spawner.dev/pod"
	// AnnotationClaimHookPath on a SessionLivedBackend claimed from a pool
	// with a claim hook copies the hook's path at spawn time: the router
	// refuses outside requests to it, so only the claim reaches the hook.
	AnnotationClaimHookPath = "spawner.dev/claim-hook-path"
	// DefaultClaimHookTimeoutSeconds is a claim hook's timeoutSeconds default.
	DefaultClaimHookTimeoutSeconds = 2
	// AnnotationAccessTokenHash on a SessionLivedBackend is the hex SHA-256 of
	// the token browsers present; the token itself is never stored.
	AnnotationAccessTokenHash = "spawner.dev/access-token-sha256"
	// AnnotationAccessTokenSalt on a SessionLivedBackend holds the random
	// per-backend salt from which the api-server derives the backend's access
	// token (docs/api.md): the token is HMAC-SHA256(access-token key, salt)
	// truncated to 128 bits. The salt alone is useless without the key, which
	// only the api-server holds.
	AnnotationAccessTokenSalt = "spawner.dev/access-token-salt"
	// LabelTokenID on a SessionLivedBackend names the control token that
	// spawned it: the first 128 bits of the token's SHA-256, hex (a label
	// value, like LabelKeyHash). The api-server's per-token cap counts it; the
	// token itself cannot be recovered from it.
	LabelTokenID = "spawner.dev/token-id"

	// AccessTokenParam is the query parameter, and AccessTokenCookie the
	// cookie, that carry a backend's access token to the router; the router
	// strips both before proxying.
	AccessTokenParam  = "spawner_token"
	AccessTokenCookie = "spawner_token"

	// SystemNamespace is where spawner's own components run (deploy/).
	SystemNamespace = "spawner-system"
	// DefaultBackendNamespace is where the api-server creates backends unless
	// --backend-namespace says otherwise.
	DefaultBackendNamespace = "spawner-backends"

	// SidecarContainerName is the container spawner adds to every backend pod.
	SidecarContainerName = "spawner-sidecar"
	// SidecarServePort is the sidecar's public port, proxied to the application.
	SidecarServePort = 9090
	// SidecarStatusPort serves the sidecar's state (/_events) to the sweeper;
	// it is never reachable through the public port or the router.
	SidecarStatusPort = 9091

	// PortEnvVar is set in the application container to spec.httpPort.
	PortEnvVar = "PORT"

	// DefaultHTTPPort is spec.httpPort when the user leaves it out.
	DefaultHTTPPort int32 = 8080
	// DefaultGracePeriodSeconds is spec.gracePeriodSeconds when the user leaves it out.
	DefaultGracePeriodSeconds int64 = 300
)

// RoutePrefix is the router's path prefix in path mode: backend <name> is
// served under /p/<name>/ (BackendPath). PublicRoutes builds and parses
// every public backend address, in both modes.
const RoutePrefix = "/p/"
