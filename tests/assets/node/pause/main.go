// Command pause is the process that holds a pod sandbox's namespaces open.
//
// It does what the upstream pause container does: as PID 1 of a pod that shares
// its process namespace it reaps orphaned children, and it exits on SIGINT or
// SIGTERM so that the runtime can stop the sandbox quickly.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD may stand for several exited children, so reap until none is left.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
