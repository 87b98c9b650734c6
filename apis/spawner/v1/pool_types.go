package v1

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +genclient
// +genclient:method=GetScale,verb=get,subresource=scale,result=k8s.io/api/autoscaling/v1.Scale
// +genclient:method=UpdateScale,verb=update,subresource=scale,input=k8s.io/api/autoscaling/v1.Scale,result=k8s.io/api/autoscaling/v1.Scale
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=bpool,categories=spawner
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.spec.replicas`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Starting",type=integer,JSONPath=`.status.startingReplicas`
// +kubebuilder:printcolumn:name="Claimed",type=integer,JSONPath=`.status.claimedReplicas`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// BackendPool keeps spec.replicas backends of one template started and Ready
// but unclaimed (warm), so that a spawn naming the pool binds to one at once
// instead of waiting for a pod to start. docs/pools.md describes it.
type BackendPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec BackendPoolSpec `json:"spec"`
	// +optional
	Status BackendPoolStatus `json:"status,omitempty"`
}

// BackendPoolSpec is a backend's spec (as in a SessionLivedBackend, without
// the key) and how many warm backends to keep.
type BackendPoolSpec struct {
	// Replicas is how many warm (started, unclaimed) backends to keep. A
	// claimed backend leaves the pool and is replaced.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Template is every warm backend's pod, as spec.template of a
	// SessionLivedBackend. Changing it replaces the unclaimed backends;
	// claimed ones keep running unchanged.
	// +required
	Template BackendPodTemplate `json:"template"`

	// HTTPPort is the port the application container listens on.
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	HTTPPort int32 `json:"httpPort,omitempty"`

	// GracePeriodSeconds is a claimed backend's grace period (counted from
	// its claim); an unclaimed one is never swept.
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	// +optional
	GracePeriodSeconds *int64 `json:"gracePeriodSeconds,omitempty"`

	// MaxLifetimeSeconds, when set, is a claimed backend's hard limit,
	// counted from its claim.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxLifetimeSeconds *int64 `json:"maxLifetimeSeconds,omitempty"`

	// ClaimHook, when set, is where a claimed warm backend's app learns its
	// session: before the backend is bound (and so before it is Ready), the
	// api-server POSTs the spawn's key, env and labels as JSON to this path
	// on the app, through its sidecar. A hook that fails or times out fails
	// the claim: that pod is deleted and the spawn tries another warm pod or
	// starts cold. Without a claim hook a spawn naming the pool may not give
	// env. Changing it does not replace the warm pods (docs/pools.md).
	// +optional
	ClaimHook *ClaimHook `json:"claimHook,omitempty"`
}

// ClaimHook is an HTTP endpoint of the pool's app that receives a claim's
// session (docs/pools.md, "Claim hook").
type ClaimHook struct {
	// Path is the absolute HTTP path on the app, e.g. /spawner/claim. The
	// router refuses outside requests to it, so only a claim reaches it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^/[^/?#\s][^?#\s]*$`
	Path string `json:"path"`

	// TimeoutSeconds bounds one call of the hook; a call that takes longer
	// fails the claim of that pod.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// Timeout is TimeoutSeconds with the API server's default (2 s).
func (h *ClaimHook) Timeout() time.Duration {
	if h.TimeoutSeconds <= 0 {
		return DefaultClaimHookTimeoutSeconds * time.Second
	}
	return time.Duration(h.TimeoutSeconds) * time.Second
}

// The condition a pool's status carries, and its reasons (docs/pools.md).
const (
	// PoolConditionReady is True once readyReplicas reached spec.replicas
	// (reason PoolReasonFull), else False (PoolReasonStarting, or
	// PoolReasonInvalidSpec when the backend spec does not validate).
	PoolConditionReady    = "Ready"
	PoolReasonFull        = "Full"
	PoolReasonStarting    = "Starting"
	PoolReasonInvalidSpec = "InvalidSpec"
)

// BackendPoolStatus is what the controller observed about the pool's pods.
type BackendPoolStatus struct {
	// ObservedGeneration is the spec generation these counts were made for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Replicas counts the unclaimed pods, ready or starting, of the current
	// template (the scale subresource's status).
	// +optional
	Replicas int32 `json:"replicas"`
	// ReadyReplicas counts the unclaimed pods whose app listens: what a
	// claim can take now.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`
	// StartingReplicas counts the unclaimed pods not Ready yet.
	// +optional
	StartingReplicas int32 `json:"startingReplicas"`
	// ClaimedReplicas counts the live backends claimed from this pool.
	// +optional
	ClaimedReplicas int32 `json:"claimedReplicas"`
	// Selector selects the pool's unclaimed pods (label selector syntax),
	// for the scale subresource.
	// +optional
	Selector string `json:"selector,omitempty"`
	// Conditions: Ready is True when ReadyReplicas reached spec.replicas,
	// else False with reason Starting, or InvalidSpec when the template
	// cannot make a backend (its message says why).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true

// BackendPoolList is a list of BackendPools.
type BackendPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []BackendPool `json:"items"`
}

// DesiredReplicas is spec.replicas with the API server's default (1).
func (p *BackendPool) DesiredReplicas() int32 {
	if p.Spec.Replicas == nil {
		return 1
	}
	return *p.Spec.Replicas
}

// TemplateHash identifies the pool's backend spec (everything but
// replicas): warm pods carry it in LabelPoolTemplateHash, and pods of
// another hash were built from an older spec (rolled, never claimed).
func (p *BackendPool) TemplateHash() string {
	spec := p.BackendSpec()
	b, _ := json.Marshal(&spec) // a plain struct: never fails
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

// BackendSpec is the SessionLivedBackend spec of the pool's backends (no
// key): the one value validation and the pod builder take.
func (p *BackendPool) BackendSpec() SessionLivedBackendSpec {
	return SessionLivedBackendSpec{
		Template:           *p.Spec.Template.DeepCopy(),
		HTTPPort:           p.Spec.HTTPPort,
		GracePeriodSeconds: p.Spec.GracePeriodSeconds,
		MaxLifetimeSeconds: p.Spec.MaxLifetimeSeconds,
	}
}
