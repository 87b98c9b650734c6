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

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/e2e/framework"
	"spawner.dev/generated/clientset/versioned"
)

// TestMain runs the suite, then checks that it leaked nothing: every test
// terminates what it spawned, so once the controller has caught up no slab
// and no backend pod may remain.
//
// Backends that were there before the suite started are not its own (the
// demo backend `make up` spawns, say) and are left out, and so are the warm
// pods of a pool (make up's demo pool).
func TestMain(m *testing.M) {
	before, err := backendNames()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: listing the backends before the suite:", err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := checkNothingLeft(before, 2*time.Minute); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: leak check:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func clients() (kubernetes.Interface, versioned.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		return nil, nil, err
	}
	return kubernetes.NewForConfigOrDie(cfg), versioned.NewForConfigOrDie(cfg), nil
}

// backendNames lists the slabs in the backend namespace.
func backendNames() (map[string]bool, error) {
	_, spawner, err := clients()
	if err != nil {
		return nil, err
	}
	list, err := spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, s := range list.Items {
		names[s.Name] = true
	}
	return names, nil
}

func checkNothingLeft(before map[string]bool, timeout time.Duration) error {
	kube, spawner, err := clients()
	if err != nil {
		return err
	}
	ctx := context.Background()
	var slabs, pods []string
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		slabList, err := spawner.SpawnerV1().SessionLivedBackends(framework.BackendNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		podList, err := kube.CoreV1().Pods(framework.BackendNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		slabs, pods = nil, nil
		for _, s := range slabList.Items {
			if !before[s.Name] {
				slabs = append(slabs, s.Name)
			}
		}
		for _, p := range podList.Items {
			// A pool's warm pods (make up's demo pool, say) come and go
			// with the pool: only one bound to a backend of the suite's
			// own is a leak.
			own := p.Labels[spawnerv1.LabelBackend]
			if p.Labels[spawnerv1.LabelPool] != "" && (own == "" || before[own]) {
				continue
			}
			if !before[p.Name] && !before[own] {
				pods = append(pods, p.Name)
			}
		}
		if len(slabs) == 0 && len(pods) == 0 {
			return nil
		}
	}
	return fmt.Errorf("slabs %v and pods %v still in %s %v after the suite", slabs, pods, framework.BackendNamespace, timeout)
}
