package v1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=slab,categories=spawner
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Connections",type=integer,JSONPath=`.status.activity.connections`,description="Connections keeping the backend alive (WebSockets and in-flight requests, as its idle policy counts them)"
// +kubebuilder:printcolumn:name="Idle",type=date,JSONPath=`.status.activity.idleSince`,description="How long nothing has kept the backend alive (empty while busy)"
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// SessionLivedBackend is one backend process (a pod) started for one user,
// document or room, and deleted once nobody has used it for its grace period.
type SessionLivedBackend struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec SessionLivedBackendSpec `json:"spec"`
	// +optional
	Status SessionLivedBackendStatus `json:"status,omitempty"`
}

// SessionLivedBackendSpec is what the user asks for. It is accepted unchanged
// from manifests written for the original Spawner
// (spec.template.containers, spec.gracePeriodSeconds, spec.httpPort).
type SessionLivedBackendSpec struct {
	// Template is the backend's pod. The first container is the application:
	// it receives PORT=<httpPort> and must serve HTTP (and WebSockets) there.
	// +required
	Template BackendPodTemplate `json:"template"`

	// HTTPPort is the port the application container listens on.
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	HTTPPort int32 `json:"httpPort,omitempty"`

	// GracePeriodSeconds is how long the backend is kept after its last
	// connection or request ended; any new connection resets the countdown.
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	// +optional
	GracePeriodSeconds *int64 `json:"gracePeriodSeconds,omitempty"`

	// MaxLifetimeSeconds, when set, is a hard limit: the backend is terminated
	// this long after it was created, even while it is in use.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxLifetimeSeconds *int64 `json:"maxLifetimeSeconds,omitempty"`

	// Key, when set, names the session this backend serves: spawner keeps at
	// most one live backend per key and hands it to every caller asking for it.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`

	// IdlePolicy says what counts as activity; left out, every open
	// WebSocket and every in-flight request keeps the backend alive.
	// +optional
	IdlePolicy *IdlePolicy `json:"idlePolicy,omitempty"`
}

// IdlePolicy says what keeps a backend alive. Whatever it says, the end of a
// request or WebSocket (and a keepalive call) restarts the grace period.
type IdlePolicy struct {
	// WSIdleSeconds, when above 0, makes an open WebSocket count only while
	// data frames flow: one that carried none for this long stops keeping
	// the backend alive (a background tab's silent socket). 0, the default:
	// an open WebSocket always counts.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	// +optional
	WSIdleSeconds int32 `json:"wsIdleSeconds,omitempty"`
	// CountRequests: an in-flight HTTP request (SSE and long-poll included)
	// keeps the backend alive for as long as it is open. Default true.
	// +kubebuilder:default=true
	// +optional
	CountRequests *bool `json:"countRequests,omitempty"`
}

// BackendPodTemplate is the subset of a PodSpec that a backend may set: what
// it runs, and what it needs to be placed and sized. spawner owns the rest
// (restart policy, the sidecar container, labels it routes by).
type BackendPodTemplate struct {
	// Metadata holds extra labels and annotations for the pod.
	// +optional
	Metadata PodMetadata `json:"metadata,omitempty"`

	// Containers run in the backend pod; the first one is the application.
	// +kubebuilder:validation:MinItems=1
	// +listType=atomic
	Containers []corev1.Container `json:"containers"`

	// InitContainers run to completion, in order, before the application
	// starts (as in a Pod).
	// +optional
	// +listType=atomic
	InitContainers []corev1.Container `json:"initContainers,omitempty"`
	// ImagePullSecrets name Secrets in the backend's namespace used to pull
	// its images.
	// +optional
	// +listType=atomic
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	// Volumes the containers may mount (as in a Pod).
	// +optional
	// +listType=atomic
	Volumes []corev1.Volume `json:"volumes,omitempty"`
	// NodeSelector restricts the nodes the backend may run on to those with
	// these labels.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Tolerations let the backend run on nodes with matching taints.
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// Affinity holds the backend's node and pod (anti-)affinity rules.
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// ServiceAccountName is the service account the backend pod runs as
	// (the namespace's default when empty).
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// AutomountServiceAccountToken mounts the service account's API token
	// into the pod. Unlike in a Pod it defaults to false: a backend serving
	// one user's session has no business with the Kubernetes API unless it
	// asks for it.
	// +optional
	AutomountServiceAccountToken *bool `json:"automountServiceAccountToken,omitempty"`
	// SecurityContext holds pod-level security settings (as in a Pod).
	// +optional
	SecurityContext *corev1.PodSecurityContext `json:"securityContext,omitempty"`
	// PriorityClassName gives the backend pod a PriorityClass.
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`
	// RuntimeClassName selects a RuntimeClass for the pod.
	// +optional
	RuntimeClassName *string `json:"runtimeClassName,omitempty"`
	// TerminationGracePeriodSeconds is how long the application gets between
	// SIGTERM and SIGKILL when its backend is terminated.
	// +kubebuilder:validation:Minimum=0
	// +optional
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`
}

// PodMetadata is the part of the pod's metadata a backend may add to.
type PodMetadata struct {
	// Labels are added to the pod's; spawner's own labels win on a clash.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations are added to the pod's.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// BackendPhase is a one-word summary of where a backend is in its life. It is
// always derived from the conditions (see spawner.dev/apis/lifecycle).
// +kubebuilder:validation:Enum=Pending;Scheduled;Running;Ready;Swept;Terminating;Failed
type BackendPhase string

// SessionLivedBackendStatus is what spawner observed about the backend.
type SessionLivedBackendStatus struct {
	// Phase summarises the conditions in one word: Pending, Scheduled,
	// Running, Ready, Swept, Terminating or Failed.
	// +optional
	Phase BackendPhase `json:"phase,omitempty"`

	// Conditions record each milestone (PodCreated, Scheduled, Running, Ready,
	// Swept, Terminating, Failed) with the time and reason it was reached.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// NodeName is the node the backend's pod was scheduled to.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
	// PodIP is the backend pod's IP address.
	// +optional
	PodIP string `json:"podIP,omitempty"`
	// URL is where browsers reach the backend, without its access token.
	// +optional
	URL string `json:"url,omitempty"`

	// Reason is a CamelCase word saying why the backend failed or ended.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says the same for a person.
	// +optional
	Message string `json:"message,omitempty"`

	// ReadyTime is when the application first listened on its port.
	// +optional
	ReadyTime *metav1.Time `json:"readyTime,omitempty"`
	// LastActiveTime is the sidecar's last activity as last reported
	// (written when the backend became ready and when it was swept).
	// +optional
	LastActiveTime *metav1.Time `json:"lastActiveTime,omitempty"`

	// Activity is why the backend is alive: what its sidecar last reported,
	// written by the sweeper at most once per backend every few seconds and
	// at once when the backend turns busy or idle.
	// +optional
	Activity *BackendActivity `json:"activity,omitempty"`
}

// BackendActivity is a backend's use as its sidecar reports it.
type BackendActivity struct {
	// Connections is what keeps the backend alive: open WebSockets and
	// in-flight requests, as its idle policy counts them. 0 means idle.
	Connections int32 `json:"connections"`
	// WebSockets is the number of open WebSockets (idle ones included).
	WebSockets int32 `json:"webSockets"`
	// InFlightRequests is the number of open HTTP requests (SSE, long-poll).
	InFlightRequests int32 `json:"inFlightRequests"`
	// LastActivity says what the backend last did ("WebSocket closed",
	// "request ended", "WebSocket message", "keepalive"), or what keeps it
	// busy ("WebSocket open", "request in flight").
	// +optional
	LastActivity string `json:"lastActivity,omitempty"`
	// LastActivityTime is when that was (while busy: when it was reported).
	// +optional
	LastActivityTime *metav1.Time `json:"lastActivityTime,omitempty"`
	// IdleSince is when the backend was last in use; empty while busy.
	// +optional
	IdleSince *metav1.Time `json:"idleSince,omitempty"`
	// SweepAfter is when the backend will be swept if nothing happens
	// before; empty while busy.
	// +optional
	SweepAfter *metav1.Time `json:"sweepAfter,omitempty"`
	// KeepaliveTime is the last POST /backend/{name}/keepalive; it counts as
	// activity (written by the api-server). Microsecond precision: the
	// grace period restarts from it, and a time truncated to the second
	// let the sweeper end a backend up to a second before its grace after
	// a keepalive (TestKeepalivePostponesASweep saw 7.998 s of 8).
	// +optional
	KeepaliveTime *metav1.MicroTime `json:"keepaliveTime,omitempty"`
	// UpdateTime is when the sweeper wrote this.
	// +optional
	UpdateTime *metav1.Time `json:"updateTime,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true

// SessionLivedBackendList is a list of SessionLivedBackends.
type SessionLivedBackendList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []SessionLivedBackend `json:"items"`
}
