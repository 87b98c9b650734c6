//go:build cluster

package lifecycle

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"spawner.dev/e2e/framework"
	"spawner.dev/generated/clientset/versioned"
)

// TestMain runs the suite, then checks that it leaked nothing: every test
// terminates what it spawned, so once the controller has caught up no slab
// and no backend pod may remain.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkNothingLeft(2 * time.Minute); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: leak check:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func checkNothingLeft(timeout time.Duration) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		return err
	}
	kube, spawner := kubernetes.NewForConfigOrDie(cfg), versioned.NewForConfigOrDie(cfg)
	ctx := context.Background()
	var slabs, pods int
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		slabList, err := spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		podList, err := kube.CoreV1().Pods(framework.BackendNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		slabs, pods = len(slabList.Items), len(podList.Items)
		if slabs == 0 && pods == 0 {
			return nil
		}
	}
	return fmt.Errorf("%d slabs and %d pods still in %s %v after the suite", slabs, pods, framework.BackendNamespace, timeout)
}
