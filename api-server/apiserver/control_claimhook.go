package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// The claim hook (docs/pools.md, "Claim hook"): before a claimed warm pod is
// bound to its backend, the api-server POSTs the spawn's session to the
// pool's hook path on the app. The hop is the one the router takes — the
// pod's sidecar on its public port, with the pod's router proof — because
// the NetworkPolicies let only the api-server reach a backend, and only on
// that port (the app's own port is closed to everyone, and an app may listen
// on 127.0.0.1 only). The sidecar checks the proof and removes it before the
// app; nothing else of the spawn's request goes along: no control token, no
// access token, no cookie.

// maxHookAttempts bounds the warm pods one spawn tries the hook on before
// it starts cold: a hook that failed on two pods of one template most
// likely fails on all of them, and each try may cost the hook's timeout.
const maxHookAttempts = 2

// ClaimSession is the JSON body a claim hook receives.
type ClaimSession struct {
	// Backend is the name of the backend the pod is being claimed for (the
	// Spawner-Backend header of its later requests).
	Backend string `json:"backend"`
	// Key is the spawn's key ("" for an unkeyed spawn).
	Key string `json:"key"`
	// Env and Labels are the spawn's, as given (empty objects when none).
	Env    map[string]string `json:"env"`
	Labels map[string]string `json:"labels"`
}

// hookClient calls claim hooks: no proxy from the environment (the pod IP is
// reached directly, as the router does), no redirects followed (a 3xx is
// not a 2xx: the hook failed), no connection kept (one call per pod).
var hookClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, MaxResponseHeaderBytes: 16 << 10},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// callClaimHook delivers session to the app of pod p (a cached, trimmed
// pod: annotationUpstream is its sidecar's address) and returns nil when
// the app answered 2xx within hook's timeout.
func callClaimHook(ctx context.Context, hook *spawnerv1.ClaimHook, p *corev1.Pod, session ClaimSession) error {
	addr := p.Annotations[annotationUpstream]
	if addr == "" {
		return fmt.Errorf("pod %s has no address", p.Name)
	}
	if session.Env == nil {
		session.Env = map[string]string{}
	}
	if session.Labels == nil {
		session.Labels = map[string]string{}
	}
	body, err := json.Marshal(session)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, hook.Timeout())
	defer cancel()
	u := &url.URL{Scheme: "http", Host: addr, Path: hook.Path}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(wire.HeaderBackend, session.Backend)
	if session.Key != "" {
		req.Header.Set(wire.HeaderKey, url.PathEscape(session.Key))
	}
	if proof := p.Annotations[annotationRouterProof]; proof != "" {
		req.Header.Set(wire.HeaderRouterProof, proof)
	}
	resp, err := hookClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the app answered %s: %q", resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// isClaimHookPath reports whether a request for the app's path p (the path
// the app sees, decoded) would reach the claim hook at hookPath: the same
// path after cleaning, in any letter case, or below it. The router refuses
// such requests from outside, so an app can trust what its hook receives.
func isClaimHookPath(p, hookPath string) bool {
	if hookPath == "" {
		return false
	}
	clean := func(s string) string {
		s = path.Clean("/" + s)
		return strings.ToLower(s)
	}
	p, h := clean(p), clean(hookPath)
	return p == h || strings.HasPrefix(p, strings.TrimSuffix(h, "/")+"/")
}
