// Package clustertest holds what every real-cluster test of spawner needs:
// the cluster's config, the CRD installed, a namespace of its own, and
// spawner components run as real processes that a test can kill.
//
// Tests that use it carry the build tag `cluster` and run with KUBECONFIG
// pointing at a real cluster (`make test-cluster` sets it up).
package clustertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"spawner.dev/common/env"
)

// Config is the rest.Config of the cluster under test, from $KUBECONFIG. A
// test that needs a cluster fails (it does not skip) when there is none:
// `go test -tags cluster` is a request to test against one.
func Config(t testing.TB) *rest.Config {
	t.Helper()
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		t.Fatal("KUBECONFIG is not set: cluster tests need a real cluster (run `make test-cluster`, or scripts/cluster-up.sh and export KUBECONFIG)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("reading KUBECONFIG %s: %v", path, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	return cfg
}

// RepoRoot is the root of the spawner checkout the test runs in.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the clustertest package source")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Images scripts/build-images.sh loads into the cluster, for tests that start
// backends; SPAWNER_TEST_DEMO_IMAGE, SPAWNER_TEST_DEMO_ROOT_IMAGE and
// SPAWNER_TEST_SIDECAR_IMAGE override them (on kind, for images pushed
// elsewhere). DemoRootImage is the demo whose image runs as uid 0.
var (
	DemoImage     = env.Or("SPAWNER_TEST_DEMO_IMAGE", "localhost/spawner-demo:dev")
	DemoRootImage = env.Or("SPAWNER_TEST_DEMO_ROOT_IMAGE", "localhost/spawner-demo-root:dev")
	SidecarImage  = env.Or("SPAWNER_TEST_SIDECAR_IMAGE", "localhost/spawner-sidecar:dev")
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// CRDFiles are the generated CRD manifests under deploy/crd, one per kind.
var CRDFiles = []string{"spawner.dev_sessionlivedbackends.yaml", "spawner.dev_backendpools.yaml"}

// EnsureCRD server-side applies the generated CRDs from deploy/crd and waits
// until the API server serves them.
func EnsureCRD(t testing.TB, cfg *rest.Config) {
	t.Helper()
	for _, f := range CRDFiles {
		ensureCRD(t, cfg, f)
	}
}

func ensureCRD(t testing.TB, cfg *rest.Config, file string) {
	t.Helper()
	manifest, err := os.ReadFile(filepath.Join(RepoRoot(t), "deploy", "crd", file))
	if err != nil {
		t.Fatal(err)
	}
	var crd unstructured.Unstructured
	if err := yaml.Unmarshal(manifest, &crd.Object); err != nil {
		t.Fatalf("parsing the CRD %s: %v", file, err)
	}
	client := dynamic.NewForConfigOrDie(cfg).Resource(crdGVR)
	body, err := crd.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	force := true
	if _, err := client.Patch(ctx, crd.GetName(), types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: "spawner-tests", Force: &force}); err != nil {
		t.Fatalf("applying the CRD %s: %v", file, err)
	}
	Eventually(t, 30*time.Second, "CRD "+crd.GetName()+" established", func() (bool, error) {
		got, err := client.Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conditions, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conditions {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
}

// Namespace creates a namespace named after the test (plus a random suffix)
// and deletes it, with everything in it, when the test ends.
func Namespace(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	client := kubernetes.NewForConfigOrDie(cfg)
	suffix := make([]byte, 3)
	rand.Read(suffix)
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, name)
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.Trim(name, "-") + "-" + hex.EncodeToString(suffix)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"spawner.dev/test": "true"}}}
	if _, err := client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	// Pods must wait for the namespace's default ServiceAccount.
	Eventually(t, 30*time.Second, "default ServiceAccount in "+name, func() (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(name).Get(context.Background(), "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	t.Cleanup(func() {
		err := client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	return name
}

// Eventually polls check every 50 ms until it reports true, and fails the
// test with what it last returned when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, check func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := check()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// Binary builds a spawner command (a package directory relative to the repo
// root, such as "controller") once per test binary and returns its path.
func Binary(t testing.TB, pkgDir string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if path, ok := built[pkgDir]; ok {
		return path
	}
	dir, err := os.MkdirTemp("", "spawner-bin-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, filepath.Base(pkgDir))
	cmd := exec.Command("go", "build", "-o", path, "./"+pkgDir)
	cmd.Dir = RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkgDir, err, out)
	}
	built[pkgDir] = path
	return path
}

// Process is a spawner component running as a separate OS process.
type Process struct {
	Name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

// Start runs a built component with args; its output goes to a log file named
// in failures. The process is killed when the test ends, if still running.
func Start(t testing.TB, binary string, args ...string) *Process {
	t.Helper()
	log, err := os.CreateTemp("", filepath.Base(binary)+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", binary, err)
	}
	p := &Process{Name: filepath.Base(binary), cmd: cmd, log: log, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			out, _ := os.ReadFile(log.Name())
			if len(out) > 8000 {
				out = out[len(out)-8000:]
			}
			t.Logf("last output of %s (%s):\n%s", p.Name, log.Name(), out)
		}
	})
	return p
}

// Kill ends the process with SIGKILL — no chance to clean up, like a node
// failure or an OOM kill — and waits for it to be gone.
func (p *Process) Kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to end with SIGTERM and waits up to 10 s for it.
func (p *Process) Stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		p.Kill()
		return fmt.Errorf("%s did not stop within 10s of SIGTERM", p.Name)
	}
}

// LogPath is the file the process writes its output to.
func (p *Process) LogPath() string { return p.log.Name() }
