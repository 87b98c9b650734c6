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
	// AnnotationAccessTokenHash on a SessionLivedBackend is the hex SHA-256 of
	// the token browsers present; the token itself is never stored.
	AnnotationAccessTokenHash = "spawner.dev/access-token-sha256"

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
