package logs

import (
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"strings"
	"testing"
)

func parse(t *testing.T, args ...string) Options {
	t.Helper()
	var o Options
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestDefaultsLogJSONAtInfo(t *testing.T) {
	o := parse(t)
	var b bytes.Buffer
	log := o.New(&b)
	log.Debug("hidden")
	log.Info("shown", "k", 1)
	var line map[string]any
	if err := json.Unmarshal(b.Bytes(), &line); err != nil {
		t.Fatalf("not one JSON line: %q: %v", b.String(), err)
	}
	if line["msg"] != "shown" || line["k"] != float64(1) {
		t.Errorf("line %v", line)
	}
}

func TestFlagsChooseTextAndVerbosity(t *testing.T) {
	cases := []struct {
		args  []string
		level slog.Level
	}{
		{[]string{"-v"}, slog.LevelDebug},
		{[]string{"-v=1"}, slog.LevelDebug},
		{[]string{"-v=6"}, slog.Level(-6)},
		{[]string{"-v=0"}, slog.LevelInfo},
	}
	for _, tc := range cases {
		if got := parse(t, tc.args...).Level(); got != tc.level {
			t.Errorf("%v: level %v, want %v", tc.args, got, tc.level)
		}
	}
	o := parse(t, "--log-json=false", "-v=2")
	var b bytes.Buffer
	o.New(&b).Debug("debug line")
	if !strings.HasPrefix(b.String(), "time=") || !strings.Contains(b.String(), "debug line") {
		t.Errorf("want a text debug line, got %q", b.String())
	}
	var bad Options
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	bad.AddFlags(fs)
	if err := fs.Parse([]string{"-v=loud"}); err == nil {
		t.Error("-v=loud accepted")
	}
}
