package apiserver

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// TerminateRequest is the optional body of POST /backend/{name}/terminate.
type TerminateRequest struct {
	Hard bool `json:"hard"`
}

func (s *Server) handleTerminate(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req TerminateRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body too large")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
			return
		}
	}
	slab, ok := s.backendOr404(w, r)
	if !ok {
		return
	}
	ns := s.cfg.BackendNamespace
	ctx := r.Context()
	if req.Hard {
		zero := int64(0)
		bg := metav1.DeletePropagationBackground
		if podName, bound := spawnerv1.PodNameOf(slab); bound {
			opts := metav1.DeleteOptions{GracePeriodSeconds: &zero}
			if podName != slab.Name {
				// A warm pod is deleted only if this backend holds it: a
				// slab created bound to the pod its claim is taking
				// (preBind) may have lost it to another spawn, or not
				// taken it yet. Its UID as precondition: that very pod.
				p, err := s.cachedOrLivePod(ctx, slab, podName)
				switch {
				case err == nil && spawnerv1.HoldsPod(slab, p):
					opts.Preconditions = &metav1.Preconditions{UID: &p.UID}
				case err == nil || apierrors.IsNotFound(err):
					bound = false
				default:
					writeError(w, http.StatusBadGateway, "reading the pod: "+err.Error())
					return
				}
			}
			if bound {
				if err := s.kube.CoreV1().Pods(ns).Delete(ctx, podName, opts); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
					writeError(w, http.StatusBadGateway, "deleting the pod: "+err.Error())
					return
				}
			}
		}
		if err := s.slabs.SpawnerV1().SessionLivedBackends(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
			writeError(w, http.StatusBadGateway, "deleting the backend: "+err.Error())
			return
		}
		s.log.Info("backend terminated (hard)", "name", name)
		writeJSON(w, http.StatusAccepted, map[string]any{"name": name, "state": StateDeleted, "hard": true})
		return
	}
	client := s.slabs.SpawnerV1().SessionLivedBackends(ns)
	var final spawnerv1.BackendPhase
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		final = lifecycle.Phase(cur)
		if !live(cur) {
			return nil // already on its way out
		}
		if !lifecycle.Record(&cur.Status, lifecycle.ConditionSwept, lifecycle.ReasonTerminationRequested,
			"termination requested through the api-server", cur.Generation) {
			return nil
		}
		updated, err := client.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err == nil {
			final = updated.Status.Phase
		}
		return err
	})
	if writeBackendWriteError(w, name, "recording the termination request", err) {
		return
	}
	s.log.Info("backend termination requested", "name", name, "phase", final)
	writeJSON(w, http.StatusAccepted, map[string]any{"name": name, "state": final, "hard": false})
}
