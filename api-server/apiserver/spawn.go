package apiserver

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// Limits of a spawn request.
const (
	MaxSpawnBody          = 64 << 10
	maxArgs               = 256
	maxEnv                = 256
	maxLabels             = 32
	maxGracePeriodSeconds = 7 * 24 * 3600
	maxLifetimeSeconds    = 366 * 24 * 3600
	appContainerName      = "app"
	slabNamePrefix        = "slab-"
)

// SpawnRequest is the body of POST /spawn.
type SpawnRequest struct {
	Image              string            `json:"image"`
	Port               int64             `json:"port,omitempty"`
	Env                map[string]string `json:"env,omitempty"`
	GracePeriodSeconds *int64            `json:"gracePeriodSeconds,omitempty"`
	Key                string            `json:"key,omitempty"`
	MaxLifetimeSeconds *int64            `json:"maxLifetimeSeconds,omitempty"`
	Args               []string          `json:"args,omitempty"`
	Resources          *SpawnResources   `json:"resources,omitempty"`
	Labels             map[string]string `json:"labels,omitempty"`
	IdlePolicy         *SpawnIdlePolicy  `json:"idlePolicy,omitempty"`
	// SecurityContext is the app container's, as in a Pod. Left out, the
	// controller fills in the restricted defaults; given, it is kept as
	// written and the backend namespace's Pod Security level decides (a
	// context it refuses is a 422 naming the reasons, podsecurity.go).
	SecurityContext *corev1.SecurityContext `json:"securityContext,omitempty"`
	// Pool names a BackendPool to claim a warm backend from (docs/pools.md);
	// the backend is then the pool's template, and image, port, args,
	// resources, idlePolicy and securityContext may not be given; env only
	// when the pool has a claim hook (it delivers env to a warm app).
	Pool string `json:"pool,omitempty"`
}

// SpawnIdlePolicy is spec.idlePolicy of the backend (what counts as activity).
type SpawnIdlePolicy struct {
	// WSIdleSeconds > 0: an open WebSocket counts only while data frames flow.
	WSIdleSeconds *int64 `json:"wsIdleSeconds,omitempty"`
	// CountRequests: in-flight requests (SSE, long-poll) count; default true.
	CountRequests *bool `json:"countRequests,omitempty"`
}

// SpawnResources are the app container's requests and limits, as quantities
// ("250m", "128Mi").
type SpawnResources struct {
	Requests map[string]string `json:"requests,omitempty"`
	Limits   map[string]string `json:"limits,omitempty"`
}

// SpawnResponse is the answer of POST /spawn.
type SpawnResponse struct {
	Name      string `json:"name"`
	URL       string `json:"url"`
	ReadyURL  string `json:"readyUrl"`
	StatusURL string `json:"statusUrl"`
	Spawned   bool   `json:"spawned"`
	// Warm, for a spawn naming a pool: true when the backend is a claimed
	// warm pod, false when the pool had none and it starts cold.
	Warm *bool `json:"warm,omitempty"`
}

// requestError is a client error: the status and the message to answer with.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) *requestError {
	return &requestError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// decodeSpawn reads a spawn request: one JSON object, no unknown fields, at
// most MaxSpawnBody bytes. r must already be limited (http.MaxBytesReader) or
// short; decodeSpawn never reads more than MaxSpawnBody+1 bytes.
func decodeSpawn(r io.Reader) (*SpawnRequest, *requestError) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSpawnBody+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &requestError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", MaxSpawnBody)}
		}
		return nil, badRequest("reading the request body: %v", err)
	}
	if len(data) > MaxSpawnBody {
		return nil, &requestError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", MaxSpawnBody)}
	}
	if !utf8.Valid(data) {
		return nil, badRequest("request body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var req SpawnRequest
	if err := dec.Decode(&req); err != nil {
		return nil, badRequest("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("invalid JSON body: more than one JSON value")
	}
	return &req, nil
}

// reserved label prefixes a caller may not set.
func reservedLabel(k string) bool {
	return strings.HasPrefix(k, spawnerv1.GroupName+"/") || strings.Contains(k, "."+spawnerv1.GroupName+"/") || k == spawnerv1.LabelManagedBy
}

var standardResources = map[string]bool{"cpu": true, "memory": true, "ephemeral-storage": true}

func validResourceName(n string) bool {
	if standardResources[n] || strings.HasPrefix(n, "hugepages-") {
		return true
	}
	// Extended resources: a domain-prefixed qualified name (nvidia.com/gpu).
	return strings.Contains(n, "/") && len(validation.IsQualifiedName(n)) == 0 && !strings.HasPrefix(n, "kubernetes.io/")
}

func parseResourceList(path *field.Path, in map[string]string) (corev1.ResourceList, field.ErrorList) {
	var errs field.ErrorList
	if len(in) == 0 {
		return nil, nil
	}
	if len(in) > 16 {
		return nil, field.ErrorList{field.TooMany(path, len(in), 16)}
	}
	out := corev1.ResourceList{}
	for k, v := range in {
		if !validResourceName(k) {
			errs = append(errs, field.NotSupported(path.Key(k), k, []string{"cpu", "memory", "ephemeral-storage", "hugepages-<size>", "<domain>/<name>"}))
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			errs = append(errs, field.Invalid(path.Key(k), v, "must be a quantity such as 250m, 1, 128Mi"))
			continue
		}
		if q.Sign() < 0 {
			errs = append(errs, field.Invalid(path.Key(k), v, "must not be negative"))
			continue
		}
		out[corev1.ResourceName(k)] = q
	}
	return out, errs
}

// validImage checks the reference syntax ([registry/]path[:tag][@digest]).
func validImage(image string) error {
	if image == "" {
		return errors.New("is required")
	}
	if len(image) > 512 {
		return errors.New("is longer than 512 characters")
	}
	if strings.TrimSpace(image) != image {
		return errors.New("must not have surrounding spaces")
	}
	if _, err := reference.ParseNormalizedNamed(image); err != nil {
		return fmt.Errorf("is not a valid image reference: %v", err)
	}
	return nil
}

func validText(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// Validate checks a spawn request; nil means it can be created.
func (req *SpawnRequest) Validate() field.ErrorList {
	if req.Pool != "" {
		return req.validatePool()
	}
	var errs field.ErrorList
	if err := validImage(req.Image); err != nil {
		errs = append(errs, field.Invalid(field.NewPath("image"), req.Image, err.Error()))
	}
	// The range is checked here because port is an int64 that buildSlab
	// narrows to spec.httpPort's int32; the sidecar's ports are refused by
	// spawnerv1.ValidateSpec (parseSpawn), like every other spec rule.
	if req.Port != 0 && (req.Port < 1 || req.Port > 65535) {
		errs = append(errs, field.Invalid(field.NewPath("port"), req.Port, "must be between 1 and 65535"))
	}
	if len(req.Env) > maxEnv {
		errs = append(errs, field.TooMany(field.NewPath("env"), len(req.Env), maxEnv))
	}
	for k := range req.Env {
		p := field.NewPath("env").Key(k)
		if k == spawnerv1.PortEnvVar {
			errs = append(errs, field.Invalid(p, k, "is set by spawner to the app's port"))
		} else if msgs := validation.IsEnvVarName(k); len(msgs) > 0 {
			errs = append(errs, field.Invalid(p, k, strings.Join(msgs, "; ")))
		}
	}
	if g := req.GracePeriodSeconds; g != nil && (*g < 0 || *g > maxGracePeriodSeconds) {
		errs = append(errs, field.Invalid(field.NewPath("gracePeriodSeconds"), *g, fmt.Sprintf("must be between 0 and %d", maxGracePeriodSeconds)))
	}
	if m := req.MaxLifetimeSeconds; m != nil && (*m < 1 || *m > maxLifetimeSeconds) {
		errs = append(errs, field.Invalid(field.NewPath("maxLifetimeSeconds"), *m, fmt.Sprintf("must be between 1 and %d", maxLifetimeSeconds)))
	}
	// Its length is spawnerv1.ValidateSpec's to check.
	if !validText(req.Key) {
		errs = append(errs, field.Invalid(field.NewPath("key"), req.Key, "must not contain control characters"))
	}
	if len(req.Args) > maxArgs {
		errs = append(errs, field.TooMany(field.NewPath("args"), len(req.Args), maxArgs))
	}
	if len(req.Labels) > maxLabels {
		errs = append(errs, field.TooMany(field.NewPath("labels"), len(req.Labels), maxLabels))
	}
	for k, v := range req.Labels {
		p := field.NewPath("labels").Key(k)
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			errs = append(errs, field.Invalid(p, k, strings.Join(msgs, "; ")))
		} else if reservedLabel(k) {
			errs = append(errs, field.Invalid(p, k, "is reserved for spawner"))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			errs = append(errs, field.Invalid(p, v, strings.Join(msgs, "; ")))
		}
	}
	if p := req.IdlePolicy; p != nil && p.WSIdleSeconds != nil && (*p.WSIdleSeconds < 0 || *p.WSIdleSeconds > spawnerv1.MaxWSIdleSeconds) {
		errs = append(errs, field.Invalid(field.NewPath("idlePolicy", "wsIdleSeconds"), *p.WSIdleSeconds,
			fmt.Sprintf("must be between 0 (any open WebSocket keeps the backend) and %d", spawnerv1.MaxWSIdleSeconds)))
	}
	if req.Resources != nil {
		rp := field.NewPath("resources")
		reqs, e1 := parseResourceList(rp.Child("requests"), req.Resources.Requests)
		lims, e2 := parseResourceList(rp.Child("limits"), req.Resources.Limits)
		errs = append(errs, e1...)
		errs = append(errs, e2...)
		for name, r := range reqs {
			if l, ok := lims[name]; ok && r.Cmp(l) > 0 {
				errs = append(errs, field.Invalid(rp.Child("requests").Key(string(name)), r.String(), "must not exceed the limit "+l.String()))
			}
		}
	}
	return errs
}

// keyHash is the hex SHA-256 of a key.
func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// keyHashLabel is the value of spawner.dev/key-hash: 128 bits of the key's
// SHA-256 (a full hex SHA-256 is longer than a label value may be).
func keyHashLabel(key string) string { return keyHash(key)[:32] }

// keyedName is the deterministic name of a key's generation-th backend.
func keyedName(key string, generation int) string {
	return fmt.Sprintf("k-%s-%d", keyHash(key)[:16], generation)
}

// buildSlab turns a validated request into a SessionLivedBackend, without a
// name; salt is the backend's access-token salt and tokenHash its hash.
func (req *SpawnRequest) buildSlab(namespace, salt, tokenHash string) *spawnerv1.SessionLivedBackend {
	env := sortedEnv(req.Env)
	c := corev1.Container{Name: appContainerName, Image: req.Image, Args: req.Args, Env: env, SecurityContext: req.SecurityContext}
	if req.Resources != nil {
		c.Resources.Requests, _ = parseResourceList(nil, req.Resources.Requests)
		c.Resources.Limits, _ = parseResourceList(nil, req.Resources.Limits)
	}
	labels := map[string]string{}
	var podLabels map[string]string
	for k, v := range req.Labels {
		labels[k] = v
		if podLabels == nil {
			podLabels = map[string]string{}
		}
		podLabels[k] = v
	}
	if req.Key != "" {
		labels[spawnerv1.LabelKeyHash] = keyHashLabel(req.Key)
	}
	port := spawnerv1.DefaultHTTPPort
	if req.Port != 0 {
		port = int32(req.Port)
	}
	grace := spawnerv1.DefaultGracePeriodSeconds
	if req.GracePeriodSeconds != nil {
		grace = *req.GracePeriodSeconds
	}
	var maxLife *int64
	if req.MaxLifetimeSeconds != nil {
		v := *req.MaxLifetimeSeconds
		maxLife = &v
	}
	return &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Labels:    labels,
			Annotations: map[string]string{
				spawnerv1.AnnotationAccessTokenHash: tokenHash,
				spawnerv1.AnnotationAccessTokenSalt: salt,
			},
		},
		Spec: spawnerv1.SessionLivedBackendSpec{
			Template: spawnerv1.BackendPodTemplate{
				Metadata:   spawnerv1.PodMetadata{Labels: podLabels},
				Containers: []corev1.Container{c},
			},
			HTTPPort:           port,
			GracePeriodSeconds: &grace,
			MaxLifetimeSeconds: maxLife,
			Key:                req.Key,
			IdlePolicy:         req.IdlePolicy.spec(),
		},
	}
}

// sortedEnv is a spawn's env as a container's, sorted by name (nil when empty).
func sortedEnv(in map[string]string) []corev1.EnvVar {
	if len(in) == 0 {
		return nil
	}
	env := make([]corev1.EnvVar, 0, len(in))
	for k, v := range in {
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	sort.Slice(env, func(i, j int) bool { return env[i].Name < env[j].Name })
	return env
}

// spec is the validated policy as the slab stores it (nil: the defaults).
func (p *SpawnIdlePolicy) spec() *spawnerv1.IdlePolicy {
	if p == nil || (p.WSIdleSeconds == nil && p.CountRequests == nil) {
		return nil
	}
	out := &spawnerv1.IdlePolicy{}
	if p.WSIdleSeconds != nil {
		out.WSIdleSeconds = int32(*p.WSIdleSeconds)
	}
	if p.CountRequests != nil {
		v := *p.CountRequests
		out.CountRequests = &v
	}
	return out
}

// parseSpawn decodes and validates a body and builds the backend to create.
func parseSpawn(r io.Reader, namespace, salt, tokenHash string) (*SpawnRequest, *spawnerv1.SessionLivedBackend, *requestError) {
	req, rerr := decodeSpawn(r)
	if rerr != nil {
		return nil, nil, rerr
	}
	if errs := req.Validate(); len(errs) > 0 {
		return nil, nil, &requestError{http.StatusUnprocessableEntity, errs.ToAggregate().Error()}
	}
	slab := req.buildSlab(namespace, salt, tokenHash)
	if req.Pool != "" {
		return req, slab, nil // the pool's spec replaces it (fromPool)
	}
	if errs := spawnerv1.ValidateSpec(&slab.Spec, field.NewPath("spec")); len(errs) > 0 {
		return nil, nil, &requestError{http.StatusUnprocessableEntity, errs.ToAggregate().Error()}
	}
	return req, slab, nil
}

// validatePool checks a spawn naming a pool: the backend is the pool's
// template, so what would change it is refused (env only reaches a warm
// pod through the pool's claim hook, which fromPool checks). The fields a pool spawn shares with any spawn (key, labels,
// gracePeriodSeconds, maxLifetimeSeconds) get the same checks as always.
func (req *SpawnRequest) validatePool() field.ErrorList {
	var errs field.ErrorList
	if msgs := validation.IsDNS1123Subdomain(req.Pool); len(msgs) > 0 {
		errs = append(errs, field.Invalid(field.NewPath("pool"), req.Pool, strings.Join(msgs, "; ")))
	}
	fromPool := "is the pool's (its template says it); leave it out when naming a pool"
	if req.Image != "" {
		errs = append(errs, field.Forbidden(field.NewPath("image"), fromPool))
	}
	if req.Port != 0 {
		errs = append(errs, field.Forbidden(field.NewPath("port"), fromPool))
	}
	if len(req.Args) > 0 {
		errs = append(errs, field.Forbidden(field.NewPath("args"), fromPool))
	}
	if req.Resources != nil {
		errs = append(errs, field.Forbidden(field.NewPath("resources"), fromPool))
	}
	if req.IdlePolicy != nil {
		errs = append(errs, field.Forbidden(field.NewPath("idlePolicy"), fromPool))
	}
	if req.SecurityContext != nil {
		errs = append(errs, field.Forbidden(field.NewPath("securityContext"), fromPool))
	}
	// env is the claim hook's to deliver: whether the pool has one is
	// fromPool's to check; its names get the usual checks here.
	shared := SpawnRequest{Image: "localhost/pool-template", Key: req.Key, Labels: req.Labels, Env: req.Env,
		GracePeriodSeconds: req.GracePeriodSeconds, MaxLifetimeSeconds: req.MaxLifetimeSeconds}
	return append(errs, shared.Validate()...)
}
