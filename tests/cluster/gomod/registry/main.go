// Command registry is the CNCF distribution registry with only the filesystem storage
// driver: the test node's image registry, which containerd pulls from over plain HTTP.
//
// It is upstream's cmd/registry (registry.RootCmd, `registry serve CONFIG`) without the
// cloud storage drivers, the auth backends and the pull-through proxy, whose SDKs the
// test node would only download and compile.
package main

import (
	"github.com/distribution/distribution/v3/registry"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	// Execute reports its own errors and exits non-zero on failure, as upstream's does.
	_ = registry.RootCmd.Execute()
}
