//go:build tools

// Package tools records the etcd binary this wrapper module builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
