// Command hello is the tiny HTTP server used by scripts/test-localcluster.sh and
// scripts/bench-localcluster.sh (image localhost/spawner-hello:dev). It listens on
// $PORT (default 8080), answers / with a greeting naming the pod, and /healthz with "ok".
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (pod %s) at %s; you are %s\n",
			host, os.Getenv("POD_NAME"), time.Now().UTC().Format(time.RFC3339), r.RemoteAddr)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	log.Printf("hello: listening on :%s", port)
	log.Fatal(http.ListenAndServe(":"+port, mux))
}
