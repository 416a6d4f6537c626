// Command httpecho is the test image's program: an HTTP server that says who
// answered, and a client that fetches URLs, for tests of pod networking.
//
//	httpecho serve [-listen :8080] [-name NAME]   answer every request with "NAME PATH\n"
//	httpecho probe [-timeout 60s] URL...          GET each URL until it answers 200, print the bodies
//	httpecho say WORD...                          print the words and exit
//
// The server logs one line per request on standard output, so `kubectl logs`
// shows that it was reached.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: httpecho serve|probe|say ...")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		serve(args)
	case "probe":
		probe(args)
	case "say":
		fmt.Println(strings.Join(args, " "))
	default:
		fmt.Fprintf(os.Stderr, "httpecho: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := flags.String("listen", ":8080", "address to listen on")
	hostname, _ := os.Hostname()
	name := flags.String("name", hostname, "name to answer with")
	flags.Parse(args)

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("%s %s %s\n", r.RemoteAddr, r.Method, r.URL.Path)
		fmt.Fprintf(w, "%s %s\n", *name, r.URL.Path)
	})
	server := &http.Server{Addr: *listen, Handler: handler, ReadHeaderTimeout: 10 * time.Second}

	// Stop at once on SIGTERM: the pod should not wait out its grace period.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		server.Close()
	}()
	fmt.Printf("serving on %s as %s\n", *listen, *name)
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "httpecho:", err)
		os.Exit(1)
	}
}

func probe(args []string) {
	flags := flag.NewFlagSet("probe", flag.ExitOnError)
	timeout := flags.Duration("timeout", 60*time.Second, "how long to keep trying each URL")
	flags.Parse(args)

	client := &http.Client{Timeout: 5 * time.Second}
	for _, url := range flags.Args() {
		// A new Service takes a moment to reach kube-proxy's rules and the DNS server,
		// so a failure is retried until the deadline rather than reported at once.
		deadline := time.Now().Add(*timeout)
		for {
			body, err := get(client, url)
			if err == nil {
				fmt.Printf("%s -> %s", url, body)
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "httpecho: %s: %v\n", url, err)
				os.Exit(1)
			}
			fmt.Fprintf(os.Stderr, "httpecho: %s: %v (retrying)\n", url, err)
			time.Sleep(time.Second)
		}
	}
}

func get(client *http.Client, url string) (string, error) {
	response, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return "", err
	}
	if response.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %s", response.StatusCode, body)
	}
	return string(body), nil
}
