//go:build tools

// Package tools records the binaries this wrapper module builds so that
// `go mod tidy` keeps their dependencies: the control plane, kubectl, and the
// node components (kubelet, kube-scheduler, kube-proxy) of the test node.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
