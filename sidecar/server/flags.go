package server

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"spawner.dev/common/env"
	"spawner.dev/common/wire"
	"spawner.dev/sidecar/proxy"
)

// The sidecar's own port defaults. They equal spawnerv1.SidecarServePort and
// SidecarStatusPort (apis/spawner/v1/wellknown.go), which the sidecar cannot
// import (it carries no Kubernetes code); the controller always passes both
// ports as flags, so these matter only for a sidecar run by hand.
const (
	defaultServePort  = 9090
	defaultStatusPort = 9091
)

// AddFlags registers the sidecar process's flags (docs/sidecar.md lists them).
// Every flag takes its default from an environment variable; a variable that
// is not a valid value is reported by Run. The router proof is read from the
// environment only, never a flag: the controller sets it in the pod spec, and
// a flag would also show it in the process list of every container sharing
// the pod's PID namespace.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	c.Log.AddFlags(fs)
	c.intFlag(fs, &c.ServePort, "serve-port", "SIDECAR_SERVE_PORT", defaultServePort, "public port, proxied to the app")
	c.intFlag(fs, &c.UpstreamPort, "upstream-port", "SIDECAR_UPSTREAM_PORT", 8080, "the app's port on 127.0.0.1")
	c.intFlag(fs, &c.StatusPort, "status-port", "SIDECAR_STATUS_PORT", defaultStatusPort, "status port: /_events, /healthz, /metrics")
	c.secondsFlag(fs, &c.WSIdle, "ws-idle-seconds", "SIDECAR_WS_IDLE_SECONDS", 0, 0, "a WebSocket without data frames for this long stops counting as active; 0 = never")
	c.IgnoreRequests = env.Or("SIDECAR_COUNT_REQUESTS", "true") != "true"
	fs.BoolFunc("count-requests", "in-flight HTTP requests (SSE, long-poll) keep the backend alive for as long as they are open; false = only WebSockets do (env SIDECAR_COUNT_REQUESTS; default true)",
		func(v string) error {
			count, err := strconv.ParseBool(v)
			c.IgnoreRequests = !count
			return err
		})
	c.secondsFlag(fs, &c.Drain, "drain-seconds", "SIDECAR_DRAIN_SECONDS", 10*time.Second, anySeconds, "after SIGTERM, keep proxying at most this long while the app finishes")
	fs.StringVar(&c.StatusBlockFile, "status-block-file", os.Getenv("SIDECAR_STATUS_BLOCK_FILE"), "testing: while this file exists the status port is closed (env SIDECAR_STATUS_BLOCK_FILE)")
	fs.StringVar(&c.ProcNet, "proc-net", env.Or("SIDECAR_PROC_NET", "/proc/net"), "directory with the tcp and tcp6 socket tables (env SIDECAR_PROC_NET)")
	fs.StringVar(&c.Host, "listen-host", os.Getenv("SIDECAR_LISTEN_HOST"), "address to bind the public and status ports on; empty = all (env SIDECAR_LISTEN_HOST)")
	c.secondsFlag(fs, &c.BodyIdleTimeout, "body-idle-timeout-seconds", "SIDECAR_BODY_IDLE_TIMEOUT_SECONDS", proxy.DefaultBodyIdleTimeout, time.Second,
		"a request body that pauses this long is answered 408")
	c.RouterProof = os.Getenv(wire.SidecarRouterProofEnv)
}

// intFlag registers an int flag whose default is the variable's value.
func (c *Config) intFlag(fs *flag.FlagSet, p *int, name, envName string, def int, usage string) {
	*p = def
	if v := os.Getenv(envName); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			c.flagErrs = append(c.flagErrs, fmt.Errorf("%s=%q is not a number", envName, v))
		}
		*p = n
	}
	fs.IntVar(p, name, *p, usage+" (env "+envName+")")
}

// secondsFlag registers a flag given in whole seconds, at least least, whose
// default is the variable's value.
func (c *Config) secondsFlag(fs *flag.FlagSet, p *time.Duration, name, envName string, def, least time.Duration, usage string) {
	*p = def
	f := &seconds{p: p, least: least}
	if v := os.Getenv(envName); v != "" {
		if err := f.Set(v); err != nil {
			c.flagErrs = append(c.flagErrs, fmt.Errorf("%s=%q: %w", envName, v, err))
		}
	}
	fs.Var(f, name, usage+" (env "+envName+")")
}

// anySeconds is the least of a seconds flag that takes any number.
const anySeconds = time.Duration(math.MinInt64)

// seconds is a flag of whole seconds stored as a Duration.
type seconds struct {
	p     *time.Duration
	least time.Duration
}

func (s *seconds) String() string {
	if s.p == nil {
		return "0"
	}
	return strconv.Itoa(int(*s.p / time.Second))
}

func (s *seconds) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("%q is not a number of seconds", v)
	}
	d := time.Duration(n) * time.Second
	if d < s.least {
		return fmt.Errorf("must be at least %d, not %d", s.least/time.Second, n)
	}
	*s.p = d
	return nil
}
