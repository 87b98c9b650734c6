// Package routerproof draws and reads a backend pod's router proof: the
// per-pod secret the controller puts in the sidecar container's environment
// (wire.SidecarRouterProofEnv) and that the router and the sweeper send in
// the wire.HeaderRouterProof header, so the sidecar can tell their requests
// from any other pod's. docs/architecture.md ("The fence") describes it.
//
// The sidecar only compares the header with its environment and does not
// import this package (it carries no Kubernetes code).
package routerproof

import (
	"crypto/rand"
	"encoding/base64"

	corev1 "k8s.io/api/core/v1"

	"spawner.dev/common/wire"
)

// Size is the number of random bytes in a proof: 256 bits, as much as an
// HMAC-SHA256 key, so guessing one is out of the question.
const Size = 32

// New draws a fresh proof: Size bytes from crypto/rand, base64url without
// padding (43 characters, safe in an HTTP header and an env value).
func New() string {
	b := make([]byte, Size)
	rand.Read(b) // never fails (Go 1.24+: it crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// FromPod is the proof in the env of pod's container named container (the
// sidecar), or "" when it has none (a pod built before the fence, or a test's).
// Only that container's env counts: the app's own env could say anything.
func FromPod(pod *corev1.Pod, container string) string {
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if c.Name != container {
			continue
		}
		for _, e := range c.Env {
			if e.Name == wire.SidecarRouterProofEnv {
				return e.Value
			}
		}
		return ""
	}
	return ""
}
