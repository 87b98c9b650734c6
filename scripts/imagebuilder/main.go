// Command imagebuilder packs one static binary into a docker-archive image tar without Docker:
// a single layer holding /<binary>, /etc/passwd and /etc/group (root and nonroot=65532) and /tmp,
// running as the non-root user by default, with OCI labels. Load the result with
// `ctr -n k8s.io images import <tar>` or `kind load image-archive <tar>`.
//
//	imagebuilder -binary _output/bin/spawner-controller -tag localhost/spawner-controller:dev \
//	    -out _output/images/spawner-controller.tar -label org.opencontainers.image.title=spawner-controller
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var s Spec
	var out string
	var labels, env, args multi
	flag.StringVar(&s.Binary, "binary", "", "static binary to pack (required)")
	flag.StringVar(&s.Name, "name", "", "file name of the binary inside the image (default: base name of -binary)")
	flag.StringVar(&s.Tag, "tag", "", "image reference repository:tag, e.g. localhost/spawner-pause:dev (required)")
	flag.StringVar(&out, "out", "", "output docker-archive tar (required)")
	flag.IntVar(&s.UID, "uid", NonRootUID, "uid and gid the entrypoint runs as")
	flag.StringVar(&s.Arch, "arch", runtime.GOARCH, "image architecture")
	flag.Var(&labels, "label", "image label key=value (repeatable)")
	flag.Var(&env, "env", "environment variable KEY=VALUE (repeatable)")
	flag.Var(&args, "arg", "default argument appended to the entrypoint (repeatable)")
	flag.Parse()
	if s.Binary == "" || s.Tag == "" || out == "" {
		fmt.Fprintln(os.Stderr, "imagebuilder: -binary, -tag and -out are required")
		flag.Usage()
		os.Exit(2)
	}
	s.Labels = map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			fail("label %q is not key=value", l)
		}
		s.Labels[k] = v
	}
	s.Env, s.Args = env, args

	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		fail("%v", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".imagebuilder-*")
	if err != nil {
		fail("%v", err)
	}
	defer os.Remove(tmp.Name())
	res, err := Build(s, tmp)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Close()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), out)
	}
	if err != nil {
		fail("building %s from %s: %v", out, s.Binary, err)
	}
	fmt.Printf("%s %s %s\n", out, s.Tag, res.ConfigDigest)
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "imagebuilder: "+format+"\n", a...)
	os.Exit(1)
}
