// Package logs is the one logger setup every spawner process uses: log/slog
// with JSON lines on stderr (text for reading by eye). It is stdlib-only, like
// common/wire, so the sidecar can use it; kubeclient.RouteKlog sends
// client-go's own lines (klog) into the same logger.
package logs

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
)

// Options are the logging flags of a process.
type Options struct {
	// Verbosity 0 logs Info and above; 1 or more adds Debug lines and
	// client-go's klog lines up to that V-level.
	Verbosity Verbosity
	// Text writes key=value lines instead of JSON.
	Text bool
}

// AddFlags registers -v and --log-json.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.Var(&o.Verbosity, "v", "log verbosity: 0 Info and above, 1 or more adds Debug lines (and client-go's lines up to that level); -v alone means 4")
	fs.Var((*jsonFlag)(&o.Text), "log-json", "log JSON lines (default true; false: text)")
}

// Level is the slog level the verbosity lets through.
func (o Options) Level() slog.Level {
	if o.Verbosity <= 0 {
		return slog.LevelInfo
	}
	// klog's V(n) lines arrive at slog level -n (logr's convention).
	return min(slog.LevelDebug, slog.Level(-o.Verbosity))
}

// New returns a logger writing to w.
func (o Options) New(w io.Writer) *slog.Logger {
	ho := &slog.HandlerOptions{Level: o.Level()}
	if o.Text {
		return slog.New(slog.NewTextHandler(w, ho))
	}
	return slog.New(slog.NewJSONHandler(w, ho))
}

// Setup makes the process's logger (stderr) and sets it as slog's default.
// Call it once, from a component's Run.
func (o Options) Setup() *slog.Logger {
	log := o.New(os.Stderr)
	slog.SetDefault(log)
	return log
}

// Verbosity is the -v flag: a level, or -v alone for 4 (every Debug line).
type Verbosity int

func (v *Verbosity) String() string { return strconv.Itoa(int(*v)) }

// IsBoolFlag lets -v be given without a value, as the sweeper always took it.
func (v *Verbosity) IsBoolFlag() bool { return true }

func (v *Verbosity) Set(s string) error {
	switch s {
	case "true":
		*v = 4
		return nil
	case "false":
		*v = 0
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want a level of 0 or more, got %q", s)
	}
	*v = Verbosity(n)
	return nil
}

// jsonFlag is --log-json, stored inverted so that the zero Options log JSON.
type jsonFlag bool

func (j *jsonFlag) String() string { return strconv.FormatBool(!bool(*j)) }

func (j *jsonFlag) IsBoolFlag() bool { return true }

func (j *jsonFlag) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*j = jsonFlag(!b)
	return nil
}
