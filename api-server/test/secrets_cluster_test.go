//go:build cluster

package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"spawner.dev/common/clustertest"
)

// apiImage is the api-server image scripts/build-images.sh loads.
var apiImage = func() string {
	if v := os.Getenv("SPAWNER_TEST_API_IMAGE"); v != "" {
		return v
	}
	return "localhost/spawner-api:dev"
}()

// manifestPod is the api-server's pod exactly as deploy/api-server/deployment.yaml
// writes it, moved into ns with the locally built image, as one pod that is
// not restarted (so that its exit can be read).
func manifestPod(t *testing.T, ns string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(clustertest.RepoRoot(t), "deploy/api-server/deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(data, &d); err != nil {
		t.Fatalf("deploy/api-server/deployment.yaml: %v", err)
	}
	spec := d.Spec.Template.Spec
	spec.ServiceAccountName = "" // the test namespace's default: refusing needs no RBAC
	spec.Affinity = nil
	spec.RestartPolicy = corev1.RestartPolicyNever
	spec.Containers[0].Image = apiImage
	spec.Containers[0].ImagePullPolicy = corev1.PullIfNotPresent
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "spawner-api", Namespace: ns}, Spec: spec}
}

// refusal runs the manifest's pod and returns its exit code and log once it ended.
func refusal(t *testing.T, kube kubernetes.Interface, ns string) (int32, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, manifestPod(t, ns), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var (
		code  int32
		ready bool
	)
	clustertest.Eventually(t, 90*time.Second, "the api-server pod to exit", func() (bool, error) {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, "spawner-api", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Terminated != nil {
				code = cs.State.Terminated.ExitCode
				return true, nil
			}
		}
		return false, nil
	})
	if ready {
		t.Error("the api-server was ready at some point")
	}
	logs, err := kube.CoreV1().Pods(ns).GetLogs("spawner-api", &corev1.PodLogOptions{Container: "api-server"}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return code, string(logs)
}

// TestManifestWithoutSecret: deploy/api-server as shipped, without the
// Secret nobody ships any more: the api-server says what to do and exits 1.
func TestManifestWithoutSecret(t *testing.T) {
	cfg := clustertest.Config(t)
	kube := kubernetes.NewForConfigOrDie(cfg)
	ns := clustertest.Namespace(t, cfg)
	code, logs := refusal(t, kube, ns)
	if code != 1 || !strings.Contains(logs, "does not exist") || !strings.Contains(logs, "openssl rand -base64 32") {
		t.Fatalf("exit %d, log:\n%s\nwant exit 1 and a line saying the token file is missing and how to create the Secret", code, logs)
	}
	t.Logf("exit %d: %s", code, strings.TrimSpace(logs))
}

// TestManifestWithCommittedSecret: the values deploy/api-server/secret.yaml
// used to publish are refused, naming why, without printing them.
func TestManifestWithCommittedSecret(t *testing.T) {
	cfg := clustertest.Config(t)
	kube := kubernetes.NewForConfigOrDie(cfg)
	ns := clustertest.Namespace(t, cfg)
	oldToken := "dev-HKeG6aGYOrJJ" + "WHD9kOW-oNV1ZUvgMt1Z" // split: see TestCredentialsRefused
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "spawner-api-tokens"},
		StringData: map[string]string{"token": oldToken, "access-token-key": strings.Repeat("k", 40)}}
	if _, err := kube.CoreV1().Secrets(ns).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	code, logs := refusal(t, kube, ns)
	if code != 1 || !strings.Contains(logs, "published in spawner's repository") || strings.Contains(logs, oldToken) {
		t.Fatalf("exit %d, log:\n%s\nwant exit 1 and a line naming the published token (not repeating it)", code, logs)
	}
	t.Logf("exit %d: %s", code, strings.TrimSpace(logs))
}
