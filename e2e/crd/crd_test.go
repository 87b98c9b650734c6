//go:build cluster

// Package crd checks the generated CRD and clients against a real API
// server: what the schema accepts, defaults and rejects, and that the
// generated typed client, informer and lister work with it.
package crd

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/generated/clientset/versioned"
	"spawner.dev/generated/informers/externalversions"
)

// demoTemplate is the pod template of the test objects: the demo app.
func demoTemplate() spawnerv1.BackendPodTemplate {
	return spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: clustertest.DemoImage}}}
}

func backend(name string) *spawnerv1.SessionLivedBackend {
	return &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       spawnerv1.SessionLivedBackendSpec{Template: demoTemplate()},
	}
}

func TestSlabRoundTripsThroughTypedClientInformerAndStatus(t *testing.T) {
	cfg := clustertest.Config(t)
	clustertest.EnsureCRD(t, cfg)
	ns := clustertest.Namespace(t, cfg)
	client := versioned.NewForConfigOrDie(cfg)
	ctx := context.Background()

	created, err := client.SpawnerV1().SessionLivedBackends(ns).Create(ctx, backend("round-trip"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if created.Spec.HTTPPort != 8080 || created.Spec.GracePeriodSeconds == nil || *created.Spec.GracePeriodSeconds != 300 {
		t.Errorf("defaults not applied by the schema: httpPort %d, gracePeriodSeconds %v", created.Spec.HTTPPort, created.Spec.GracePeriodSeconds)
	}

	factory := externalversions.NewSharedInformerFactoryWithOptions(client, 0, externalversions.WithNamespace(ns))
	lister := factory.Spawner().V1().SessionLivedBackends().Lister()
	stop := make(chan struct{})
	defer close(stop)
	factory.Start(stop)
	for typ, ok := range factory.WaitForCacheSync(stop) {
		if !ok {
			t.Fatalf("informer for %v never synced", typ)
		}
	}
	fromCache, err := lister.SessionLivedBackends(ns).Get("round-trip")
	if err != nil {
		t.Fatalf("lister after sync: %v", err)
	}
	if fromCache.UID != created.UID {
		t.Fatalf("lister returned uid %s, want %s", fromCache.UID, created.UID)
	}

	update := fromCache.DeepCopy()
	lifecycle.Record(&update.Status, lifecycle.ConditionScheduled, lifecycle.ReasonScheduled, "on node x", update.Generation)
	update.Status.NodeName = "node-x"
	update.Status.URL = "http://example.test/p/round-trip/"
	if _, err := client.SpawnerV1().SessionLivedBackends(ns).UpdateStatus(ctx, update, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("UpdateStatus: %v", err)
	}
	clustertest.Eventually(t, 10*time.Second, "status update seen by the informer", func() (bool, error) {
		got, err := lister.SessionLivedBackends(ns).Get("round-trip")
		return err == nil && got.Status.Phase == lifecycle.Scheduled && got.Status.NodeName == "node-x", err
	})

	// A status write through the main resource is ignored: status has its own subresource.
	got, _ := client.SpawnerV1().SessionLivedBackends(ns).Get(ctx, "round-trip", metav1.GetOptions{})
	got.Status.Phase = lifecycle.Failed
	got.Spec.Key = "changed"
	updated, err := client.SpawnerV1().SessionLivedBackends(ns).Update(ctx, got, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if updated.Status.Phase != lifecycle.Scheduled || updated.Spec.Key != "changed" {
		t.Errorf("after Update: phase %s key %q; want the status untouched and the spec changed", updated.Status.Phase, updated.Spec.Key)
	}

	all, err := lister.List(labels.Everything())
	if err != nil || len(all) != 1 {
		t.Errorf("lister List = %d items, %v", len(all), err)
	}
}

func TestOriginalSpawnerManifestIsAcceptedUnchanged(t *testing.T) {
	cfg := clustertest.Config(t)
	clustertest.EnsureCRD(t, cfg)
	ns := clustertest.Namespace(t, cfg)
	original := []byte(`{"apiVersion":"spawner.dev/v1","kind":"SessionLivedBackend","metadata":{"name":"original"},
		"spec":{"template":{"containers":[{"name":"app","image":"ghcr.io/example/app:1"}]},"gracePeriodSeconds":300,"httpPort":8080}}`)
	result := kubernetes.NewForConfigOrDie(cfg).CoreV1().RESTClient().Post().
		AbsPath("/apis/spawner.dev/v1/namespaces", ns, "sessionlivedbackends").
		Body(original).SetHeader("Content-Type", "application/json").Do(context.Background())
	if err := result.Error(); err != nil {
		t.Fatalf("creating the original Spawner manifest: %v", err)
	}
	var got spawnerv1.SessionLivedBackend
	raw, _ := result.Raw()
	json.Unmarshal(raw, &got)
	if got.Spec.HTTPPort != 8080 || *got.Spec.GracePeriodSeconds != 300 || got.Spec.Template.Containers[0].Image != "ghcr.io/example/app:1" {
		t.Errorf("stored spec differs from what was sent: %+v", got.Spec)
	}
}

func TestSchemaRejectsInvalidBackendsNamingTheField(t *testing.T) {
	cfg := clustertest.Config(t)
	clustertest.EnsureCRD(t, cfg)
	ns := clustertest.Namespace(t, cfg)
	client := versioned.NewForConfigOrDie(cfg).SpawnerV1().SessionLivedBackends(ns)
	negative := int64(-5)
	cases := map[string]struct {
		mutate    func(*spawnerv1.SessionLivedBackend)
		wantField string
	}{
		"port above 65535":      {func(b *spawnerv1.SessionLivedBackend) { b.Spec.HTTPPort = 70000 }, "spec.httpPort"},
		"negative grace period": {func(b *spawnerv1.SessionLivedBackend) { b.Spec.GracePeriodSeconds = &negative }, "spec.gracePeriodSeconds"},
		"negative max lifetime": {func(b *spawnerv1.SessionLivedBackend) { b.Spec.MaxLifetimeSeconds = &negative }, "spec.maxLifetimeSeconds"},
		"no containers":         {func(b *spawnerv1.SessionLivedBackend) { b.Spec.Template.Containers = []corev1.Container{} }, "spec.template.containers"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := backend("invalid")
			tc.mutate(b)
			_, err := client.Create(context.Background(), b, metav1.CreateOptions{})
			if err == nil {
				client.Delete(context.Background(), "invalid", metav1.DeleteOptions{})
				t.Fatal("the API server accepted an invalid backend")
			}
			if !strings.Contains(err.Error(), tc.wantField) {
				t.Errorf("error %q does not name %s", err, tc.wantField)
			}
		})
	}

	t.Run("unknown phase in status", func(t *testing.T) {
		created, err := client.Create(context.Background(), backend("phase"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Phase = "Exploded"
		_, err = client.UpdateStatus(context.Background(), created, metav1.UpdateOptions{})
		if err == nil || !strings.Contains(err.Error(), "status.phase") {
			t.Errorf("UpdateStatus with an unknown phase: err %v, want a rejection naming status.phase", err)
		}
	})
}

func TestPrinterColumnsShowPhaseNodeURLAndAge(t *testing.T) {
	cfg := clustertest.Config(t)
	clustertest.EnsureCRD(t, cfg)
	ns := clustertest.Namespace(t, cfg)
	client := versioned.NewForConfigOrDie(cfg).SpawnerV1().SessionLivedBackends(ns)
	created, err := client.Create(context.Background(), backend("columns"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lifecycle.Record(&created.Status, lifecycle.ConditionRunning, lifecycle.ReasonContainersStarted, "", created.Generation)
	created.Status.NodeName, created.Status.URL = "node-y", "http://example.test/p/columns/"
	if _, err := client.UpdateStatus(context.Background(), created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// What `kubectl get slab` prints.
	names, rows := clustertest.Table(t, kubernetes.NewForConfigOrDie(cfg), ns, "sessionlivedbackends", "")
	// Connections and Idle come from status.activity (#17).
	const want = "Name,Phase,Connections,Idle,Node,URL,Age"
	if got := strings.Join(names, ","); got != want {
		t.Fatalf("columns %s, want %s", got, want)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rows))
	}
	cells := rows[0]
	if cells[1] != "Running" || cells[4] != "node-y" || cells[5] != "http://example.test/p/columns/" {
		t.Errorf("row %v, want phase Running, node node-y and the URL", cells)
	}
}

func TestExplainShowsSpawnersFieldDocs(t *testing.T) {
	cfg := clustertest.Config(t)
	clustertest.EnsureCRD(t, cfg)
	rest := kubernetes.NewForConfigOrDie(cfg).CoreV1().RESTClient()
	// `kubectl explain slab.spec` reads the group version's OpenAPI v3
	// document, which the API server publishes shortly after the CRD changes.
	var schema map[string]any
	clustertest.Eventually(t, 60*time.Second, "the CRD's schema published with descriptions", func() (bool, error) {
		raw, err := rest.Get().AbsPath("/openapi/v3/apis/spawner.dev/v1").DoRaw(context.Background())
		if err != nil {
			return false, nil // not published yet
		}
		var doc struct {
			Components struct {
				Schemas map[string]map[string]any `json:"schemas"`
			} `json:"components"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return false, err
		}
		schema = doc.Components.Schemas["dev.spawner.v1.SessionLivedBackend"]
		return fieldDescription(schema, "spec", "gracePeriodSeconds") != "", nil
	})
	for _, c := range []struct {
		path []string
		want string
	}{
		{[]string{"spec", "gracePeriodSeconds"}, "resets the countdown"},
		{[]string{"spec", "template"}, "first container is the application"},
		{[]string{"spec", "template", "automountServiceAccountToken"}, "defaults to false"},
		{[]string{"status", "phase"}, "Ready"},
	} {
		if got := fieldDescription(schema, c.path...); !strings.Contains(got, c.want) {
			t.Errorf("description of %s = %q, want it to mention %q", strings.Join(c.path, "."), got, c.want)
		}
	}
	// The core types under spec.template are documented by `kubectl explain
	// pod`; their descriptions are trimmed to keep the manifest small.
	if got := fieldDescription(schema, "spec", "template", "affinity", "nodeAffinity"); got != "" {
		t.Errorf("spec.template.affinity.nodeAffinity has a description (%q); the CRD should not carry the Pod's docs", got)
	}
}

// fieldDescription follows properties (and a single allOf reference wrapper)
// down path and returns the description found there, "" when absent.
func fieldDescription(schema map[string]any, path ...string) string {
	node := schema
	for _, name := range path {
		if all, ok := node["allOf"].([]any); ok && len(all) == 1 {
			node, _ = all[0].(map[string]any)
		}
		props, _ := node["properties"].(map[string]any)
		node, _ = props[name].(map[string]any)
		if node == nil {
			return ""
		}
	}
	d, _ := node["description"].(string)
	return d
}
