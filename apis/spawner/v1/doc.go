// Package v1 is version v1 of the spawner.dev API: the SessionLivedBackend
// resource, a backend pod that lives as long as somebody uses it.
//
// +k8s:deepcopy-gen=package
// +groupName=spawner.dev
package v1
