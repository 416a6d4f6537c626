// Command coredns is CoreDNS with the few plugins the test node needs: it answers
// for the cluster.local zone from the Kubernetes API and reports its health.
//
// This is CoreDNS's documented way to compile a server with a chosen plugin set:
// import the plugins and list them, in the order of upstream's plugin.cfg, as the
// server's directives.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is the order in which the plugins handle a query; it must follow
// upstream's plugin.cfg, whatever order the Corefile names them in.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
