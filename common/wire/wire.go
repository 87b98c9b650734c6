// Package wire holds the names that cross a process boundary and that the
// sidecar must know too. It imports nothing but the standard library, so the
// sidecar (which carries no Kubernetes code) can share it with the router,
// the sweeper and the controller. docs/architecture.md names this file as the
// one definition of each name below.
package wire

const (
	// HeaderRouterProof carries a backend's router proof on every request the
	// router sends to the sidecar's public port and on every request the
	// sweeper sends to its status port. The sidecar answers 403 to a request
	// without the right value and never forwards the header to the app.
	HeaderRouterProof = "Spawner-Router-Proof"

	// SidecarRouterProofEnv is the sidecar container's environment variable
	// holding the backend's router proof: a random value the controller draws
	// for each pod. The router and the sweeper read it from the pod they
	// already cache. Empty means the sidecar does not check (tests, benches).
	SidecarRouterProofEnv = "SIDECAR_ROUTER_PROOF"

	// HeaderBackend names, on every request the router proxies, the backend
	// (SessionLivedBackend) the request is for, and HeaderKey its spec.key,
	// percent-encoded as a URL path segment (url.PathEscape; absent when the
	// backend has no key). They tell an app which session it serves, which
	// a warm pool pod, started before anyone asked for it, cannot learn from
	// its environment (docs/pools.md). The router always sets or removes
	// both: a client's own values never reach the app.
	HeaderBackend = "Spawner-Backend"
	HeaderKey     = "Spawner-Key"
)
