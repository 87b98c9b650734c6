package apiserver

import (
	"encoding/json"
	"net/http"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// activityOf is the slab's status.activity as the status answers carry it
// (nil until the sweeper first wrote it).
func activityOf(slab *spawnerv1.SessionLivedBackend) *spawnerv1.BackendActivity {
	if slab.Status.Activity == nil {
		return nil
	}
	return slab.Status.Activity.DeepCopy()
}

// KeepaliveResponse is the answer of POST /backend/{name}/keepalive.
type KeepaliveResponse struct {
	Name string `json:"name"`
	// KeepaliveTime is the time recorded; the backend is not swept before
	// it plus its grace period.
	KeepaliveTime string `json:"keepaliveTime"`
	// SweepAfter is that time (when the backend is idle; while it is busy
	// it has no deadline and this is empty).
	SweepAfter string `json:"sweepAfter,omitempty"`
}

// handleKeepalive records a keepalive call in status.activity: it counts as
// activity, for apps whose users are active without a connection to their
// backend. The sweeper reads it before any sweep (and with every activity
// write), so the grace period restarts from it. One merge patch of the
// status subresource: no read-modify-write, no conflict with the sweeper's
// writes (it never writes keepaliveTime).
func (s *Server) handleKeepalive(w http.ResponseWriter, r *http.Request) {
	slab, ok := s.backendOr404(w, r)
	if !ok {
		return
	}
	name := slab.Name
	if !live(slab) {
		writeError(w, http.StatusConflict, "backend "+name+" has ended ("+string(lifecycle.Phase(slab))+"); spawn it again")
		return
	}
	now := time.Now()
	act := map[string]any{"keepaliveTime": metav1.NewMicroTime(now)}
	resp := KeepaliveResponse{Name: name, KeepaliveTime: now.UTC().Format(metav1.RFC3339Micro)}
	if a := slab.Status.Activity; a == nil || a.Connections == 0 {
		// Idle (or not reported yet): the deadline moves now. The sweeper
		// rewrites these when the backend's state next changes.
		sweep := now.Add(slab.Spec.GracePeriod())
		act["lastActivity"] = wire.ActivityKeepalive
		act["lastActivityTime"] = metav1.NewTime(now)
		act["sweepAfter"] = metav1.NewTime(sweep)
		resp.SweepAfter = sweep.UTC().Format(time.RFC3339)
	}
	body, _ := json.Marshal(map[string]any{"status": map[string]any{"activity": act}})
	_, err := s.slabs.SpawnerV1().SessionLivedBackends(s.cfg.BackendNamespace).Patch(r.Context(), name,
		types.MergePatchType, body, metav1.PatchOptions{}, "status")
	if writeBackendWriteError(w, name, "recording the keepalive", err) {
		return
	}
	writeJSON(w, http.StatusOK, resp)
}
